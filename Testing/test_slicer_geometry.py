"""Geometry contract of the Slicer module on a real MRML scene: volume node -> file -> SimpleITK
keeps every voxel in the same world place, and a label map file on an oblique grid -> segmentation
node -> exported labelmap gives back the same array voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_support import (add_scalar_volume, distinct_voxel_values, new_scene, oblique_grid,
                            scene_node_ids)

from MaskSAMCore.errors import InputError
from MaskSAMSegmentLib.geometry import LpsGrid, grid_from_ijk_to_ras, oblique_direction
from MaskSAMSegmentLib.image_files import read_array_image, write_array_image
from MaskSAMSegmentLib.models import read_model_info
from MaskSAMSegmentLib.segmentations import (MODEL_NAME_ATTRIBUTE, export_label_values_on_volume,
                                             export_segments_on_volume, import_label_map, show_in_3d)
from MaskSAMSegmentLib.volume_nodes import volume_grid, volume_to_array


def ras_of_voxel(node, ijk) -> np.ndarray:
    """World RAS position of voxel `ijk` as Slicer computes it (IJKToRAS of the node)."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])


def test_grid_round_trips_through_ijk_to_ras_and_matches_itk_physical_points():
    grid = oblique_grid()
    again = grid_from_ijk_to_ras(grid.ijk_to_ras(), grid.size)
    assert again.same_as(grid, tolerance=1e-9)
    image = sitk.Image(list(grid.size), sitk.sitkUInt8)
    image.SetSpacing(grid.spacing), image.SetOrigin(grid.origin), image.SetDirection(grid.direction)
    for ijk in [(0, 0, 0), (12, 0, 0), (3, 10, 6), (12, 10, 6)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = grid.ijk_to_ras() @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


def test_volume_node_to_file_keeps_world_geometry_and_voxels(tmp_path):
    scene = new_scene()
    grid = oblique_grid()
    voxels = distinct_voxel_values()
    node = add_scalar_volume(scene, voxels, grid)

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
