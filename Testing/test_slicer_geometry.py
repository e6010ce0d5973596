"""Geometry contract of the Slicer module on a real MRML scene: volume node -> file -> SimpleITK
keeps every voxel in the same world place, and a label map file on an oblique grid -> segmentation
node -> exported labelmap gives back the same array voxel for voxel. Also for left-handed volumes
(IJKToRAS determinant -1: a NRRD with a negative axis, some DICOM-to-NIfTI conversions), where a
dropped flip would mirror every segment while the grid still looked right."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_support import (add_scalar_volume, chain_of_transforms, distinct_voxel_values, new_scene,
                            oblique_direction, oblique_grid, scene_node_ids)

from MaskSAMCore.errors import InputError
from MaskSAMSegmentLib.geometry import LpsGrid, grid_from_ijk_to_ras
from MaskSAMSegmentLib.image_files import read_array_image, write_array_image
from MaskSAMSegmentLib.models import read_model_info
from MaskSAMSegmentLib.segmentations import (MODEL_NAME_ATTRIBUTE, export_label_values_on_volume,
                                             export_segments_on_volume, import_label_map, segment_label_values,
                                             show_in_3d)
from MaskSAMSegmentLib.volume_nodes import volume_grid, volume_to_array


def ras_of_voxel(node, ijk) -> np.ndarray:
    """World RAS position of voxel `ijk` as Slicer computes it (IJKToRAS of the node)."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])


def left_handed_grid() -> LpsGrid:
    """The oblique grid with its slice axis reversed (k runs towards the feet): determinant -1."""
    grid = oblique_grid()
    return dataclasses.replace(grid, direction=tuple((grid.direction_matrix @ np.diag([1.0, 1.0, -1.0])).ravel()))


GRIDS = pytest.mark.parametrize("grid", [oblique_grid(), left_handed_grid()], ids=["right_handed", "left_handed"])


@GRIDS
def test_grid_round_trips_through_ijk_to_ras_and_matches_itk_physical_points(grid):
    again = grid_from_ijk_to_ras(grid.ijk_to_ras(), grid.size)
    assert again.same_as(grid, tolerance=1e-9)
    image = sitk.Image(list(grid.size), sitk.sitkUInt8)
    image.SetSpacing(grid.spacing), image.SetOrigin(grid.origin), image.SetDirection(grid.direction)
    for ijk in [(0, 0, 0), (12, 0, 0), (3, 10, 6), (12, 10, 6)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = grid.ijk_to_ras() @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


@GRIDS
def test_volume_node_to_file_keeps_world_geometry_and_voxels(tmp_path, grid):
    scene = new_scene()
    voxels = distinct_voxel_values()
    node = add_scalar_volume(scene, voxels, grid)
    ijk_to_ras = np.array([ras_of_voxel(node, ijk) for ijk in np.eye(3)]) - ras_of_voxel(node, (0, 0, 0))
    assert np.sign(np.linalg.det(ijk_to_ras)) == np.sign(np.linalg.det(grid.direction_matrix))

    array, node_grid = volume_to_array(node)
    assert node_grid.same_as(grid)
    np.testing.assert_array_equal(array, voxels)

    for ending in (".nrrd", ".nii.gz"):
        path = write_array_image(array, node_grid, tmp_path / f"input{ending}")
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == grid.size
        np.testing.assert_allclose(image.GetSpacing(), grid.spacing, atol=1e-5)
        np.testing.assert_allclose(image.GetOrigin(), grid.origin, atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), grid.direction, atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels)
        # The same voxel is at the same place: Slicer's RAS = ITK's LPS with x and y negated.
        for ijk in [(0, 0, 0), (12, 3, 6), (5, 10, 1)]:
            lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
            np.testing.assert_allclose(ras_of_voxel(node, ijk), lps * [-1, -1, 1], atol=1e-3)


def test_image_data_whose_extent_does_not_start_at_zero_keeps_every_voxel_in_place():
    from vtk.util import numpy_support

    scene = new_scene()
    grid = oblique_grid()
    voxels = distinct_voxel_values()
    node = add_scalar_volume(scene, voxels, grid)
    image = node.GetImageData()
    nz, ny, nx = voxels.shape
    image.SetExtent(3, 3 + nx - 1, 5, 5 + ny - 1, 2, 2 + nz - 1)  # what vtkImageReslice may leave
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(voxels.ravel(), deep=True))

    array, node_grid = volume_to_array(node)
    np.testing.assert_array_equal(array, voxels)
    for index in [(0, 0, 0), (nx - 1, 2, nz - 1), (4, ny - 1, 1)]:
        at = node_grid.ijk_to_ras() @ np.array([*index, 1.0])
        shifted = (index[0] + 3, index[1] + 5, index[2] + 2)
        np.testing.assert_allclose(at[:3], ras_of_voxel(node, shifted), atol=1e-9)


def test_linear_parent_transform_is_folded_into_the_grid_and_nonlinear_is_refused():
    import slicer
    import vtk

    scene = new_scene()
    grid = oblique_grid()
    node = add_scalar_volume(scene, distinct_voxel_values(), grid)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)  # 10 mm towards Right (RAS x) = -10 mm in LPS x
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = volume_grid(node)
    np.testing.assert_allclose(np.array(moved.origin) - grid.origin, [-10.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(moved.spacing, grid.spacing)

    grid_transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    grid_transform.SetAndObserveTransformToParent(vtk.vtkGridTransform())
    node.SetAndObserveTransformNodeID(grid_transform.GetID())
    with pytest.raises(InputError, match="non-linear transform"):
        volume_grid(node)
    assert slicer  # imported for the node classes registered on the scene


def test_colour_volume_is_refused_with_its_name():
    import vtk

    scene = new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "Photo")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 3, 2)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(image)
    with pytest.raises(InputError, match="volume 'Photo' has 3 components"):
        volume_to_array(node)


@pytest.mark.parametrize("size", [(0, 0, 0), (13, 11, 0)])
def test_a_volume_without_voxels_is_refused_with_its_name_before_anything_is_written(tmp_path, size):
    """Image data with an empty extent (a failed load or filter) must not reach the file writer,
    which fails with a page of ITK text."""
    import vtk

    from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest, segment_problems
    from test_slicer_jobs import fake_model_folder

    scene = new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty CT")
    image = vtk.vtkImageData()
    image.SetDimensions(*size)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(image)
    with pytest.raises(InputError, match="volume 'Empty CT' has no voxels"):
        volume_to_array(node)
    request = SegmentRequest([node], read_model_info(fake_model_folder(tmp_path / "model")))
    assert segment_problems(request) == ["Volume 'Empty CT' has no image data."]
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError, match="'Empty CT' has no image data"):
        SegmentJob(scene, request, work_dir=str(work)).start()
    assert list(work.iterdir()) == []


def phantom_labels(shape_zyx) -> np.ndarray:
    """Three blobs touching different faces, plus one isolated voxel, labels 1, 2, 4 (3 absent)."""
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    labels[1:4, 2:7, 3:9] = 1
    labels[4:7, 6:11, 0:5] = 2
    labels[0, 10, 12] = 4
    return labels


def test_oblique_label_file_becomes_segments_that_export_back_voxel_for_voxel(tmp_path):
    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid)
    labels = phantom_labels(grid.shape_zyx)
    path = write_array_image(labels, grid, tmp_path / "labels.nii.gz")
    read_labels, read_grid = read_array_image(path)
    assert read_grid.same_as(grid)

    names = {0: "background", 1: "liver", 2: "kidney_left", 3: "spleen", 4: "blob_4"}
    node = import_label_map(scene, read_labels, read_grid, names, reference_volume=volume,
                            attributes={MODEL_NAME_ATTRIBUTE: "Phantom model"})
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
        "Liver", "Left kidney", "Spleen", "Blob 4"]
    assert node.GetAttribute(MODEL_NAME_ATTRIBUTE) == "Phantom model"
    # Liver and kidney colours are those of Slicer's GenericAnatomyColors.
    np.testing.assert_allclose(segmentation.GetNthSegment(0).GetColor(), np.array([221, 130, 101]) / 255)
    np.testing.assert_allclose(segmentation.GetNthSegment(1).GetColor(), np.array([185, 102, 83]) / 255)

    np.testing.assert_array_equal(export_label_values_on_volume(node, volume), labels)
    # Exported with the logic's own numbering (segment order): spleen is empty, blob is 4th.
    exported = export_segments_on_volume(node, volume)
    np.testing.assert_array_equal(exported, np.select([labels == 1, labels == 2, labels == 4], [1, 2, 4], 0))
    assert show_in_3d(node)
    assert segmentation.ContainsRepresentation("Closed surface")


def segment_mask_on(ijk_to_ras: np.ndarray, shape_zyx, segmentation_node, label_value: int) -> np.ndarray:
    """(z, y, x) mask of the voxels, placed by `ijk_to_ras`, where the segment holding `label_value`
    has its voxels, matched by world position from the segmentation's own binary labelmap (not
    through an export, which could undo a mistake of the import)."""
    import slicer
    from vtk.util import numpy_support

    segment_id = {value: key for key, value in segment_label_values(segmentation_node).items()}[label_value]
    image = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    nx, ny, nz = image.GetDimensions()
    k, j, i = np.nonzero(numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx))
    first = np.eye(4)
    first[:3, 3] = image.GetExtent()[0::2]
    to_grid = np.linalg.inv(ijk_to_ras) @ vtk_matrix_to_numpy(image.GetImageToWorldMatrix) @ first
    ijk = (to_grid @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[:3]
    nearest = np.round(ijk).astype(int)
    np.testing.assert_allclose(ijk, nearest, atol=1e-3, err_msg="segment voxels lie between the grid's voxels")
    assert (nearest >= 0).all() and (nearest.T < tuple(reversed(shape_zyx))).all(), "segment voxels off the grid"
    mask = np.zeros(shape_zyx, bool)
    mask[nearest[2], nearest[1], nearest[0]] = True
    return mask


def ijk_to_ras_of_file(path) -> np.ndarray:
    """IJKToRAS of an image file as SimpleITK places its voxels (LPS with x and y negated)."""
    image = sitk.ReadImage(str(path))
    points = [np.array(image.TransformIndexToPhysicalPoint(ijk)) * [-1, -1, 1]
              for ijk in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]]
    matrix = np.eye(4)
    matrix[:3, :3] = np.stack(points[1:], axis=1) - points[0][:, None]
    matrix[:3, 3] = points[0]
    return matrix


def vtk_matrix_to_numpy(getter) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def reversed_slice_order(grid: LpsGrid) -> LpsGrid:
    """The same voxel positions indexed the other way along k: left-handed <-> right-handed."""
    last = grid.ijk_to_lps() @ np.array([0.0, 0.0, grid.size[2] - 1, 1.0])
    direction = grid.direction_matrix @ np.diag([1.0, 1.0, -1.0])
    return dataclasses.replace(grid, origin=tuple(last[:3]), direction=tuple(direction.ravel()))


def test_left_handed_label_file_becomes_segments_at_each_voxels_world_position(tmp_path):
    scene = new_scene()
    grid = left_handed_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid)
    labels = phantom_labels(grid.shape_zyx)
    label_file = write_array_image(labels, grid, tmp_path / "labels.nii.gz")    # what the core writes
    assert np.linalg.det(ijk_to_ras_of_file(label_file)[:3, :3]) < 0
    read_labels, read_grid = read_array_image(label_file)
    node = import_label_map(scene, read_labels, read_grid, {1: "liver", 2: "spleen", 4: "aorta"},
                            reference_volume=volume)
    for value in (1, 2, 4):   # each voxel where the file puts it
        np.testing.assert_array_equal(segment_mask_on(ijk_to_ras_of_file(label_file), labels.shape, node, value),
                                      labels == value, err_msg=f"label {value}")
    np.testing.assert_array_equal(export_label_values_on_volume(node, volume), labels)


@pytest.mark.parametrize("volume_handedness", ["left", "right"])
def test_label_map_indexed_with_the_opposite_handedness_lands_voxel_for_voxel(volume_handedness):
    """The same world voxels, k reversed (what a tool that reorients writes): Slicer resamples
    by world position, so each label keeps its place on the volume."""
    scene = new_scene()
    grid = left_handed_grid() if volume_handedness == "left" else oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid)
    labels = phantom_labels(grid.shape_zyx)
    node = import_label_map(scene, labels[::-1], reversed_slice_order(grid), {1: "liver", 2: "spleen"},
                            reference_volume=volume)
    np.testing.assert_array_equal(export_label_values_on_volume(node, volume), labels)


def test_left_handed_volume_through_masksam_predict_gets_segments_on_its_bright_box(tmp_path, monkeypatch):
    """Volume node -> input file (as the Segment tab writes it) -> `masksam predict` (a thresholding
    stand-in network) -> label file -> segmentation node: the segment is where the box is."""
    from MaskSAMCore.cli import main
    from test_geometry_left_handed import bright_box_case, threshold_plan, use_threshold_model

    scene = new_scene()
    grid = left_handed_grid()
    image, box = bright_box_case(grid)
    volume = add_scalar_volume(scene, image.astype(np.int16), grid)
    array, node_grid = volume_to_array(volume)
    source = write_array_image(array, node_grid, tmp_path / "input.nrrd", compress=False)
    use_threshold_model(monkeypatch, threshold_plan(tuple(reversed(grid.spacing))))
    output = tmp_path / "labels.nrrd"
    assert main(["predict", str(tmp_path / "model"), str(source), str(output), "--fast", "--device", "cpu"]) == 0
    labels, label_grid = read_array_image(output)
    assert label_grid.same_as(node_grid)
    node = import_label_map(scene, labels, label_grid, {1: "box"}, reference_volume=volume)
    np.testing.assert_array_equal(segment_mask_on(vtk_matrix_to_numpy(volume.GetIJKToRASMatrix), box.shape, node, 1),
                                  box)      # where the volume shows the box


def test_label_map_on_a_grid_other_than_the_volume_is_resampled_by_world_position(tmp_path):
    """A label map on a coarser, differently rotated grid still lands where it is in the world."""
    scene = new_scene()
    fine = LpsGrid(size=(20, 20, 20), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                   direction=oblique_direction((0, 0, 0)))
    volume = add_scalar_volume(scene, np.zeros((20, 20, 20), np.int16), fine)
    coarse = LpsGrid(size=(10, 10, 10), spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.5),
                     direction=oblique_direction((0, 0, 0)))
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5, 3:6, 4:8] = 1
    node = import_label_map(scene, labels, coarse, {1: "liver"}, reference_volume=volume)
    exported = export_label_values_on_volume(node, volume)
    expected = np.zeros((20, 20, 20), np.uint8)
    expected[4:10, 6:12, 8:16] = 1  # each coarse voxel covers 2x2x2 fine voxels
    np.testing.assert_array_equal(exported, expected)


def test_replacing_an_existing_segmentation_keeps_the_node_and_swaps_its_segments():
    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid)
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "My segmentation")
    existing.CreateDefaultDisplayNodes()
    existing.GetSegmentation().AddEmptySegment("old", "Old segment")
    before = scene_node_ids(scene)

    labels = phantom_labels(grid.shape_zyx)
    result = import_label_map(scene, labels, grid, {1: "liver", 2: "spleen", 4: "aorta"},
                              segmentation_node=existing, reference_volume=volume)
    assert result is existing
    assert scene_node_ids(scene) == before  # no node added, none left behind
    names = [existing.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(existing.GetSegmentation().GetNumberOfSegments())]
    assert names == ["Liver", "Spleen", "Aorta"]
    np.testing.assert_array_equal(export_label_values_on_volume(existing, volume), labels)


def test_replacing_a_segmentation_under_a_transform_keeps_every_voxel_in_place():
    import vtk

    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moved = vtk.vtkTransform()
    moved.Translate(15.0, -4.0, 7.5)
    moved.RotateWXYZ(30.0, 0.2, 1.0, 0.4)   # e.g. a registration the user applied
    transform.SetMatrixTransformToParent(moved.GetMatrix())
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Registered segmentation")
    existing.SetAndObserveTransformNodeID(transform.GetID())

    labels = phantom_labels(grid.shape_zyx)
    import_label_map(scene, labels, grid, {1: "liver", 2: "spleen", 4: "aorta"},
                     segmentation_node=existing, reference_volume=volume)
    np.testing.assert_array_equal(export_label_values_on_volume(existing, volume), labels)


def test_unreadable_label_file_names_the_file(tmp_path):
    broken = tmp_path / "labels.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"labels\.nii\.gz: cannot read image"):
        read_array_image(broken)
    with pytest.raises(InputError, match="file not found"):
        read_array_image(tmp_path / "missing.nrrd")


@pytest.mark.parametrize("volume_transforms", [0, 2], ids=["plain_volume", "volume_under_two"])
def test_segments_under_nested_transforms_export_voxel_for_voxel(volume_transforms):
    """Slicer's own export loses segments under two nested transforms (nothing at all on this
    grid); each label must land on the volume where it lies in the world."""
    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid)
    chain_of_transforms(scene, volume, *[((-5.0, 3.0, 12.0), (1.0, 0.0, 0.0), 90.0),
                                         ((0.0, 8.0, 0.0), (0.3, 1.0, 0.2), 25.0)][:volume_transforms])
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Registered segmentation")
    chain_of_transforms(scene, segmentation, ((10.0, 0.0, 0.0), (0.0, 0.0, 1.0), 90.0),
                        ((0.0, 20.0, 0.0), (1.0, 0.0, 0.0), 90.0))
    labels = phantom_labels(grid.shape_zyx)
    import_label_map(scene, labels, volume_grid(volume), {1: "liver", 2: "spleen", 4: "aorta"},
                     segmentation_node=segmentation, reference_volume=volume)
    import slicer

    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)   # Slicer's scene always has it
    nodes_before = scene_node_ids(scene)
    np.testing.assert_array_equal(export_label_values_on_volume(segmentation, volume), labels)
    liver = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    np.testing.assert_array_equal(export_segments_on_volume(segmentation, volume, [liver]), labels == 1)
    assert scene_node_ids(scene) == nodes_before   # the staged copies are gone
