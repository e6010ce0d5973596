"""What 3D Slicer itself makes of the files `masksam predict` writes, read with Slicer's own storage
nodes (slicer-core): label maps open on the scan's grid, a prediction written as a Slicer
segmentation (``.seg.nrrd``) opens as named, coloured segments in the scan's voxels, and a
ground truth drawn and saved in Slicer (cropped, segments in any order) is scored by
`masksam evaluate` as the label map it was drawn from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_support import new_scene, oblique_grid

from MaskSAMCore.cli import main
from MaskSAMCore.data.image_io import ImageGeometry, read_label
from MaskSAMCore.data.image_writing import write_label
from MaskSAMCore.terminology import AnatomyTerminology

PHANTOM_NAMES = ["Liver", "Spleen", "Left kidney", "Right kidney", "Aorta"]   # Slicer's names of the phantom labels


def left_handed_oblique(geometry: ImageGeometry) -> ImageGeometry:
    """`geometry`'s size and spacing, turned obliquely, with the slice axis reversed (det -1)."""
    grid = oblique_grid()
    return dataclasses.replace(geometry, origin=grid.origin,
                               direction=tuple((grid.direction_matrix @ np.diag([1.0, 1.0, -1.0])).ravel()))


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def node_array(node) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    data = node.GetImageData()
    return vtk_to_numpy(data.GetPointData().GetScalars()).reshape(data.GetDimensions()[::-1]).copy()


def slicer_reads(scene, path: Path, node_class: str = "vtkMRMLScalarVolumeNode"):
    """A volume node read by Slicer's archetype storage node (what File > Add Data uses)."""
    import slicer

    node = scene.AddNewNodeByClass(node_class)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, path
    return node


def slicer_reads_segmentation(scene, path: Path):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, path
    return node


def segment_mask(scene, segmentation, segment_id: str, reference) -> np.ndarray:
    """A segment exported by Slicer onto the reference volume's voxels."""
    import slicer
    import vtk

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, reference)
    assert np.allclose(ijk_to_ras(labelmap), ijk_to_ras(reference))
    return node_array(labelmap) > 0


def phantom_scan(trained_phantom_model, tmp_path: Path) -> Path:
    """A held-out phantom moved to a left-handed oblique grid (same voxels and spacing)."""
    image = sitk.ReadImage(str(trained_phantom_model.dataset / "imagesTs" / "phantom_test_000_0000.nii.gz"))
    moved = left_handed_oblique(ImageGeometry.from_sitk(image))
    image.SetOrigin(moved.origin)
    image.SetDirection(moved.direction)
    scans = tmp_path / "scans"
    scans.mkdir()
    sitk.WriteImage(image, str(scans / "scan.nrrd"))
    return scans / "scan.nrrd"


def test_label_maps_open_in_slicer_on_the_scans_own_grid(trained_phantom_model, tmp_path):
    """NIfTI, NRRD and MetaImage label maps of a left-handed oblique scan: Slicer's reader gives
    each the scan's IJKToRAS and size, so the labels lie over the organs."""
    scan = phantom_scan(trained_phantom_model, tmp_path)
    scene = new_scene()
    for ending in (".nii.gz", ".nrrd", ".mha"):
        sitk.WriteImage(sitk.ReadImage(str(scan)), str(tmp_path / f"scan{ending}"))
        output = tmp_path / "out" / f"scan{ending}"
        assert main(["predict", str(trained_phantom_model.model_dir), str(tmp_path / f"scan{ending}"), str(output),
                     "--fast", "--device", "cpu"]) == 0
        volume = slicer_reads(scene, tmp_path / f"scan{ending}")
        labels = slicer_reads(scene, output, "vtkMRMLLabelMapVolumeNode")
        assert labels.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions(), ending
        assert np.allclose(ijk_to_ras(labels), ijk_to_ras(volume), atol=1e-4), ending
        assert set(np.unique(node_array(labels))) >= {0, 1, 5}, ending   # liver and aorta found


@pytest.mark.usefixtures("dicom_locale_kept")
def test_the_label_map_of_a_tilted_ct_opens_in_slicer_with_every_slice_at_its_position(dicom_model_dir, tmp_path):
    """A gantry tilt's sheared grid, as NRRD (the default for such a series): Slicer's reader keeps
    the shear, so slice k's first voxel lies at that slice's Image Position (Patient)."""
    import pydicom
    from dicom_support import oblique_volume, tilted, write_series

    image = oblique_volume()
    folder = write_series(tmp_path / "ct", image, edit=tilted(image, 15.0))
    assert main(["predict", str(dicom_model_dir), str(folder), f"{tmp_path / 'out'}/", "--fast",
                 "--device", "cpu"]) == 0
    scene = new_scene()
    matrix = ijk_to_ras(slicer_reads(scene, tmp_path / "out" / "ct.nrrd", "vtkMRMLLabelMapVolumeNode"))
    for k, path in enumerate(sorted(folder.iterdir())):   # IM0000.dcm, IM0001.dcm, ...: slice k
        lps = np.asarray(pydicom.dcmread(str(path), stop_before_pixels=True).ImagePositionPatient, float)
        assert matrix @ (0, 0, k, 1) == pytest.approx((-lps[0], -lps[1], lps[2], 1.0), abs=1e-4), k


def test_a_prediction_saved_as_a_slicer_segmentation_opens_as_named_coloured_segments(trained_phantom_model,
                                                                                        tmp_path):
    """``--output-ending .seg.nrrd``: Slicer reads one segment per class, named, coloured and coded
    as the module shows them, each exactly the voxels of its class in the scan's place; the same
    file is a plain label map for other programs. A .seg.nrrd beside the scans is no case."""
    scan = phantom_scan(trained_phantom_model, tmp_path)
    (scan.parent / "scan.seg.nrrd").write_bytes(b"a segmentation drawn earlier")   # not an image: left alone
    out = tmp_path / "out"
    assert main(["predict", str(trained_phantom_model.model_dir), str(scan.parent), str(out), "--fast",
                 "--output-ending", ".seg.nrrd", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["scan.seg.nrrd"]
    labels, geometry = read_label(out / "scan.seg.nrrd")
    assert geometry.same_grid(ImageGeometry.from_sitk(sitk.ReadImage(str(scan))))

    scene = new_scene()
    volume = slicer_reads(scene, scan)
    as_volume = slicer_reads(scene, out / "scan.seg.nrrd", "vtkMRMLLabelMapVolumeNode")
    node = slicer_reads_segmentation(scene, out / "scan.seg.nrrd")
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert ids == ["liver", "spleen", "kidney_left", "kidney_right", "aorta"]
    terminology = AnatomyTerminology()
    for value, segment_id in enumerate(ids, start=1):
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == PHANTOM_NAMES[value - 1]
        assert segment.GetColor() == pytest.approx(terminology.style(segment_id, value).color, abs=1e-5)
        assert segment.GetTerminology() == terminology.style(segment_id, value).terminology != ""
        # Slicer reverses the slice axis of a left-handed file: both read alike, so compare in Slicer.
        assert np.array_equal(segment_mask(scene, node, segment_id, volume), node_array(as_volume) == value), segment_id
    assert "SCT^10200004^Liver" in segmentation.GetSegment("liver").GetTerminology()
    assert (labels == 1).sum() > 1000 and (labels == 5).sum() > 100   # a real liver and aorta, not empty masks


# -- ground truths drawn in Slicer ---------------------------------------------------------------

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3}


def drawn_truth(tmp_path: Path):
    """A ground truth and a prediction (label maps) on a left-handed oblique grid, and the truth
    as Slicer saves it after drawing: segments in another order than the label values
    (spleen, left kidney, liver), named as Slicer names them, cropped to their extent."""
    import slicer

    geometry = left_handed_oblique(ImageGeometry((16, 14, 9), (0.8, 1.1, 3.0), (0, 0, 0), np.eye(3).ravel()))
    truth = np.zeros(geometry.shape_zyx, np.uint8)
    truth[2:7, 3:10, 4:12] = 1
    truth[3:6, 10:13, 5:9] = 2
    truth[1:3, 4:7, 12:15] = 3
    prediction = np.roll(truth, 1, axis=2)
    prediction[prediction == 2] = 0
    write_label(truth, geometry, tmp_path / "truth.nii.gz")
    write_label(prediction, geometry, tmp_path / "prediction.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": LABELS}))

    order = {2: ("Spleen", 1), 3: ("Left kidney", 2), 1: ("Liver", 3)}   # value -> (Slicer name, drawn as)
    drawn = np.zeros_like(truth)
    for value, (_, new_value) in order.items():
        drawn[truth == value] = new_value
    write_label(drawn, geometry, tmp_path / "drawn.nrrd")
    scene = new_scene()
    labelmap = slicer_reads(scene, tmp_path / "drawn.nrrd", "vtkMRMLLabelMapVolumeNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    segmentation = node.GetSegmentation()
    for index, (name, _) in enumerate(sorted(order.values(), key=lambda item: item[1])):
        segmentation.GetNthSegment(index).SetName(name)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "truth.seg.nrrd"))
    assert storage.WriteData(node) == 1
    return geometry, scene, node, storage


def evaluation(capsys, *arguments) -> dict:
    assert main(["evaluate", *map(str, arguments)]) == 0
    report = json.loads("\n".join(line for line in capsys.readouterr().out.splitlines()
                                  if not line.startswith("@masksam ")))
    return {f"{name} {metric}": entry[metric] for name, entry in report["per_class"].items()
            for metric in ("dice", "hd95_mm")}


def test_a_ground_truth_drawn_in_slicer_is_scored_as_the_label_map_it_shows(tmp_path, capsys):
    """Segments matched by name, not by the order they were drawn in; Slicer's cropping and its
    reversed slice axis undone; a prediction written as a .seg.nrrd scores as its label map."""
    from MaskSAMCore.data.slicer_segmentation import write_segmentation

    geometry, *_ = drawn_truth(tmp_path)
    saved = sitk.ReadImage(str(tmp_path / "truth.seg.nrrd"))
    assert saved.GetSize() != geometry.size   # Slicer saved only the segments' extent
    dataset_json = tmp_path / "dataset.json"
    expected = evaluation(capsys, tmp_path / "prediction.nii.gz", tmp_path / "truth.nii.gz",
                          "--dataset-json", dataset_json)
    assert 0 < expected["liver dice"] < 1 and expected["spleen dice"] == 0   # a real comparison
    assert evaluation(capsys, tmp_path / "prediction.nii.gz", tmp_path / "truth.seg.nrrd",
                      "--dataset-json", dataset_json) == pytest.approx(expected)
    # saved under a plain NRRD name: still read by its segments' names, not its drawing order
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "truth.nrrd").write_bytes((tmp_path / "truth.seg.nrrd").read_bytes())
    assert evaluation(capsys, tmp_path / "prediction.nii.gz", tmp_path / "renamed" / "truth.nrrd",
                      "--dataset-json", dataset_json) == pytest.approx(expected)

    prediction = read_label(tmp_path / "prediction.nii.gz")[0]
    structures = [(name, (value,)) for name, value in LABELS.items() if value]
    write_segmentation(prediction, geometry, structures, tmp_path / "prediction.seg.nrrd")
    assert evaluation(capsys, tmp_path / "prediction.seg.nrrd", tmp_path / "truth.seg.nrrd",
                      "--dataset-json", dataset_json) == pytest.approx(expected)
    assert evaluation(capsys, tmp_path / "prediction.seg.nrrd", tmp_path / "truth.nii.gz",
                      "--dataset-json", dataset_json) == pytest.approx(expected)


@pytest.mark.parametrize("change, message", [
    ("rename", "truth.seg.nrrd: segment 'Tumour' matches none of the labels (liver, spleen, kidney_left); "
               "rename it to one of them"),
    ("twice", "truth.seg.nrrd: segments 'liver' and 'Liver' both stand for label liver; keep one"),
    ("no dataset.json", "truth.seg.nrrd: a Slicer segmentation names its segments, not label values; give "
                        "--dataset-json (the model folder's dataset.json) to match them to the labels"),
])
def test_segments_that_name_no_label_or_one_label_twice_are_refused_in_one_line(tmp_path, capsys, change, message):
    _, scene, node, storage = drawn_truth(tmp_path)
    segmentation = node.GetSegmentation()
    if change == "rename":
        segmentation.GetNthSegment(1).SetName("Tumour")
    if change == "twice":
        segmentation.GetNthSegment(0).SetName("liver")
    storage.WriteData(node)
    arguments = ["--dataset-json", str(tmp_path / "dataset.json")]
    if change == "no dataset.json":
        (tmp_path / "dataset.json").unlink()   # nor one beside the truth
        arguments = []
    assert main(["evaluate", str(tmp_path / "prediction.nii.gz"), str(tmp_path / "truth.seg.nrrd"), *arguments]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].endswith(message)


def test_a_segmentation_is_no_image_to_segment(dicom_model_dir, tmp_path, capsys):
    drawn_truth(tmp_path)
    assert main(["predict", str(dicom_model_dir), str(tmp_path / "truth.seg.nrrd"), str(tmp_path / "out.nii.gz"),
                 "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "truth.seg.nrrd: is a 3D Slicer segmentation, not an image; give the image it segments")


def test_a_region_model_writes_overlapping_segments_slicer_reads_as_its_regions(phantom_dataset, tmp_path, capsys):
    """Regions overlap, so each is a layer of its own; each Slicer segment is the voxels of the
    painted label map in its region, and the file scores as that label map."""
    from test_training_regions import ORDER, REGIONS

    from MaskSAMCore.data.regions import region_scheme
    from MaskSAMCore.inference.dicom_seg import seg_structures
    from MaskSAMCore.data.slicer_segmentation import write_segmentation

    scheme = region_scheme(REGIONS, ORDER)
    truth = phantom_dataset / "labelsTs" / "phantom_test_000.nii.gz"
    labels, geometry = read_label(truth)
    painted = scheme.to_output(scheme.to_classes(labels))   # as a region model writes its prediction
    painted[:, :, 24:] = 0   # and misses a part
    write_label(painted, geometry, tmp_path / "painted.nii.gz")
    structures = [(s.name, s.values) for s in seg_structures(list(scheme.class_labels), scheme)]
    write_segmentation(painted, geometry, structures, tmp_path / "regions.seg.nrrd")

    scene = new_scene()
    volume = slicer_reads(scene, phantom_dataset / "imagesTs" / "phantom_test_000_0000.nii.gz")
    node = slicer_reads_segmentation(scene, tmp_path / "regions.seg.nrrd")
    painted_in_slicer = node_array(slicer_reads(scene, tmp_path / "painted.nii.gz", "vtkMRMLLabelMapVolumeNode"))
    assert node.GetSegmentation().GetNumberOfSegments() == 3
    for region, values in (("solid organs", [1, 3]), ("kidneys", [3]), ("aorta", [5])):
        mask = segment_mask(scene, node, region, volume)
        assert mask.any() and np.array_equal(mask, np.isin(painted_in_slicer, values)), region

    dataset = tmp_path / "Dataset"
    (dataset / "labelsTs").mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({"labels": REGIONS, "regions_class_order": ORDER}))
    (dataset / "labelsTs" / truth.name).write_bytes(truth.read_bytes())
    expected = evaluation(capsys, tmp_path / "painted.nii.gz", dataset / "labelsTs" / truth.name)
    assert 0 < expected["solid organs dice"] < 1
    scored = evaluation(capsys, tmp_path / "regions.seg.nrrd", dataset / "labelsTs" / truth.name)
    assert scored == pytest.approx(expected)


# -- a dataset whose label maps Slicer saved as segmentations ------------------------------------

@pytest.mark.parametrize("order, message", [
    (["Spleen", "Liver", "Left kidney", "Right kidney", "Aorta"], None),
    (["Spleen", "Liver", "Left kidney", "Right kidney", "Tumour"],
     "labelsTr/phantom_001.seg.nrrd: segment 'Tumour' matches none of the labels (background, liver, spleen, "
     "kidney_left, kidney_right, aorta); rename it to one of them"),
])
def test_a_case_labelled_in_slicer_trains_the_classes_its_segments_name(tmp_path, capsys, order, message):
    """An NRRD dataset may hold a case's labels as the segmentation Slicer saved for it
    (``labelsTr/CASE.seg.nrrd``). Slicer numbers segments in the order they were added (here the
    spleen first, as 1): the case is renumbered by its segments' names to dataset.json's values,
    instead of teaching the network spleen for liver; a segment naming no label is refused."""
    import slicer

    from MaskSAMCore.data.image_io import read_image
    from MaskSAMCore.data.phantoms import make_phantoms
    from MaskSAMCore.data.preprocessing import preprocess_case
    from MaskSAMCore.data.store import load_case

    dataset = make_phantoms(tmp_path / "Dataset009_Drawn", cases=3, seed=7, size=(40, 36, 12), file_ending=".nrrd",
                            progress=False)
    label_file = dataset / "labelsTr" / "phantom_001.nrrd"
    labels, geometry = read_label(label_file)
    drawn = np.zeros_like(labels)
    for new_value, name in enumerate(order, start=1):   # the value each organ was drawn as
        drawn[labels == (PHANTOM_NAMES.index(name) + 1 if name in PHANTOM_NAMES else 5)] = new_value
    write_label(drawn, geometry, tmp_path / "drawn.nrrd")
    scene = new_scene()
    labelmap = slicer_reads(scene, tmp_path / "drawn.nrrd", "vtkMRMLLabelMapVolumeNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetReferenceImageGeometryParameterFromVolumeNode(slicer_reads(scene, dataset / "imagesTr" /
                                                                        "phantom_001_0000.nrrd"))
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    for index, name in enumerate(order):
        node.GetSegmentation().GetNthSegment(index).SetName(name)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(dataset / "labelsTr" / "phantom_001.seg.nrrd"))
    assert storage.WriteData(node) == 1
    label_file.unlink()

    model = tmp_path / "model"
    status = main(["train", str(dataset), str(model), "--preset", "tiny", "--random-init", "--epochs", "1",
                   "--iters-per-epoch", "1", "--fold", "all", "--num-workers", "0", "--device", "cpu"])
    if message is not None:
        assert status == 1 and not model.exists()
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
        return
    assert status == 0
    plan = json.loads((model / "plans.json").read_text())
    image, image_geometry = read_image(dataset / "imagesTr" / "phantom_001_0000.nrrd")
    expected = preprocess_case(image[np.newaxis], image_geometry, plan, labels)[1]
    assert np.array_equal(load_case(model / "preprocessed", "phantom_001").seg, expected)   # liver is 1 again
