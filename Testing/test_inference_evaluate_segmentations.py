"""`masksam evaluate` of two 3D Slicer segmentations (two raters' ``.seg.nrrd`` files of one scan),
each saved as Slicer saves it: cropped to its own segments, perhaps with the slice axis reversed.
They are scored as the label maps they were cut from, on the union of their extents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from MaskSAMCore.cli import main
from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.image_writing import write_label
from MaskSAMCore.data.slicer_reference import reference_geometry
from MaskSAMCore.data.slicer_segmentation import write_segmentation

LABELS = {"background": 0, "liver": 1, "spleen": 2}
STRUCTURES = [("liver", (1,)), ("spleen", (2,))]
SCAN = ImageGeometry((40, 40, 20), (1.0, 1.0, 2.0), (-12.5, 30.0, 7.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _rater(liver_zyx, spleen_zyx) -> np.ndarray:
    """A label map of the scan (z, y, x) with a liver and a spleen box, each given as slices."""
    labels = np.zeros(SCAN.shape_zyx, np.uint8)
    labels[liver_zyx] = 1
    labels[spleen_zyx] = 2
    return labels


RATER_1 = _rater(np.s_[5:12, 10:25, 10:25], np.s_[6:9, 28:33, 4:9])
RATER_2 = _rater(np.s_[6:13, 11:26, 12:27], np.s_[7:10, 27:32, 5:10])


def _steps(geometry: ImageGeometry) -> np.ndarray:
    return geometry.direction_matrix * np.asarray(geometry.spacing)


def slicer_conversion_parameters(scan: ImageGeometry) -> str:
    """Slicer's ``Segmentation_ConversionParameters`` for a segmentation drawn on `scan`: entries
    ``name|value|description&``, the reference image geometry as the IJK-to-RAS matrix's 16 numbers
    and the extent's 6, each followed by ``;``."""
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ _steps(scan)
    ijk_to_ras[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(scan.origin)
    geometry = "".join(f"{v:.17g};" for v in ijk_to_ras.ravel()) + "".join(f"0;{n - 1};" for n in scan.size)
    return ("Collapse labelmaps|1|Merge the labelmaps into as few shared labelmaps as possible 1 = created "
            "labelmaps will be shared if possible without overwriting each other.&Decimation factor|0.0|Desired "
            "reduction in the total number of polygons. Value of 0.8 typically reduces data set size by 80%.&"
            f"Reference image geometry|{geometry}|Image geometry description string determining the geometry of "
            "the labelmap that is created in course of conversion. Can be copied from a volume, using the button.&"
            "Smoothing factor|-0.5|Smoothing factor. Range: 0.0 (no smoothing) to 1.0 (strong smoothing).&")


def save_as_slicer(labels: np.ndarray, path: Path, reverse_slices: bool = False, reference: bool = False) -> Path:
    """`labels` as Slicer saves a segmentation: cropped to its segments' extent (its origin the
    first kept voxel), with `reverse_slices` its slice axis reversed (last slice first); with
    `reference` the scan's grid recorded among its conversion parameters, as Slicer does."""
    box = ndimage.find_objects((labels > 0).astype(np.uint8))[0]
    start_xyz = np.array([box[2].start, box[1].start, box[0].start], float)
    cropped = labels[box]
    origin = np.asarray(SCAN.origin) + _steps(SCAN) @ start_xyz
    direction = SCAN.direction_matrix
    if reverse_slices:
        origin = origin + _steps(SCAN)[:, 2] * (cropped.shape[0] - 1)
        cropped, direction = cropped[::-1], direction @ np.diag([1.0, 1.0, -1.0])
    geometry = ImageGeometry(cropped.shape[::-1], SCAN.spacing, origin, direction.ravel())
    write_segmentation(np.ascontiguousarray(cropped), geometry, STRUCTURES, path)
    # write_segmentation records the file's own grid as the scan's; Slicer's cropped file records
    # the scan's, or (older files) none
    image = sitk.ReadImage(str(path))
    if reference:
        image.SetMetaData("Segmentation_ConversionParameters", slicer_conversion_parameters(SCAN))
    else:
        image.EraseMetaData("Segmentation_ConversionParameters")
    sitk.WriteImage(image, str(path), True)
    return path


def _evaluate(capsys, prediction: Path, truth: Path, dataset_json: Path) -> dict:
    assert main(["evaluate", str(prediction), str(truth), "--dataset-json", str(dataset_json)]) == 0
    report = json.loads(capsys.readouterr().out)
    return {f"{name} {metric}": entry[metric] for name, entry in report["per_class"].items()
            for metric in ("dice", "hd95_mm")}


def _world_surface(mask: np.ndarray) -> np.ndarray:
    """The scan's surface voxels of `mask` (z, y, x) as points in mm."""
    surface = mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))
    return np.asarray(SCAN.origin) + np.argwhere(surface)[:, ::-1] @ _steps(SCAN).T


def _hd95_by_brute_force(a: np.ndarray, b: np.ndarray) -> float:
    distances = cdist(_world_surface(a), _world_surface(b))
    return float(max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95)))


@pytest.fixture()
def dataset_json(tmp_path) -> Path:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "CT"}, "file_ending": ".nrrd"}))
    return path


@pytest.mark.parametrize("reverse_slices", [False, True], ids=["as drawn", "slice axis reversed"])
def test_two_raters_segmentations_cropped_to_their_own_segments_score_as_their_label_maps(
        tmp_path, capsys, dataset_json, reverse_slices):
    first = save_as_slicer(RATER_1, tmp_path / "rater1.seg.nrrd")
    second = save_as_slicer(RATER_2, tmp_path / "rater2.seg.nrrd", reverse_slices)
    write_label(RATER_1, SCAN, tmp_path / "rater1.nii.gz")
    write_label(RATER_2, SCAN, tmp_path / "rater2.nii.gz")
    expected = _evaluate(capsys, tmp_path / "rater2.nii.gz", tmp_path / "rater1.nii.gz", dataset_json)
    liver_1, liver_2 = RATER_1 == 1, RATER_2 == 1
    assert expected["liver dice"] == pytest.approx(0.6933, abs=1e-4)   # 2 |A & B| / (|A| + |B|) on the scan
    assert expected["liver dice"] == pytest.approx(2 * (liver_1 & liver_2).sum() / (liver_1.sum() + liver_2.sum()))
    assert expected["liver hd95_mm"] == pytest.approx(_hd95_by_brute_force(liver_1, liver_2), rel=1e-9)
    assert 0 < expected["spleen dice"] < 1

    assert _evaluate(capsys, second, first, dataset_json) == pytest.approx(expected, rel=1e-12)
    assert _evaluate(capsys, first, second, dataset_json) == pytest.approx(expected, rel=1e-12)
    # Against a whole label map, either way round, as before.
    assert _evaluate(capsys, second, tmp_path / "rater1.nii.gz", dataset_json) == pytest.approx(expected, rel=1e-12)
    assert _evaluate(capsys, tmp_path / "rater2.nii.gz", first, dataset_json) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("change, problem", [
    ("half a voxel", "origin (-7 x 41 x 19) is not whole voxels away from (-8.5 x 40 x 17)"),
    ("finer slices", "spacing 1 x 1 x 1.5 mm vs 1 x 1 x 2 mm"),
])
def test_two_segmentations_of_different_grids_are_refused_in_one_line(tmp_path, capsys, dataset_json,
                                                                      change, problem):
    first = save_as_slicer(RATER_1, tmp_path / "rater1.seg.nrrd")
    second = save_as_slicer(RATER_2, tmp_path / "rater2.seg.nrrd")
    moved = sitk.ReadImage(str(second))
    if change == "half a voxel":
        moved.SetOrigin((moved.GetOrigin()[0] + 0.5, *moved.GetOrigin()[1:]))
    else:
        moved.SetSpacing((1.0, 1.0, 1.5))
    sitk.WriteImage(moved, str(second))
    assert main(["evaluate", str(second), str(first), "--dataset-json", str(dataset_json)]) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert said[-1] == (f"masksam: error: {second}: two Slicer segmentations are compared voxel by voxel, but its "
                        f"voxels are not those of {first} ({problem}); compare segmentations of one scan"), said


@pytest.mark.parametrize("recorded", [(True, True), (True, False), (False, True)], ids=["both", "truth", "prediction"])
def test_a_structure_in_one_of_two_segmentations_costs_the_diagonal_of_the_scan_they_record(
        tmp_path, capsys, dataset_json, recorded):
    """Rater 2 drew no spleen: its HD95 is the scan's diagonal, as for the label maps, not that of
    the box the two files' crops span; Slicer records the scan's grid in each file it saves."""
    without_spleen = np.where(RATER_2 == 2, 0, RATER_2)
    first = save_as_slicer(RATER_1, tmp_path / "rater1.seg.nrrd", reference=recorded[0])
    second = save_as_slicer(without_spleen, tmp_path / "rater2.seg.nrrd", reverse_slices=True, reference=recorded[1])
    write_label(RATER_1, SCAN, tmp_path / "rater1.nii.gz")
    write_label(without_spleen, SCAN, tmp_path / "rater2.nii.gz")
    expected = _evaluate(capsys, tmp_path / "rater2.nii.gz", tmp_path / "rater1.nii.gz", dataset_json)
    assert expected["spleen hd95_mm"] == pytest.approx(np.sqrt(40.0 ** 2 + 40 ** 2 + 40 ** 2))
    assert _evaluate(capsys, second, first, dataset_json) == pytest.approx(expected, rel=1e-12)


def test_without_a_recorded_scan_two_segmentations_penalise_with_the_diagonal_of_their_extents(
        tmp_path, capsys, dataset_json):
    """Files that do not record the scan's grid (written by other programs): the union of the two
    crops is all that is known of the image, and the report's conventions say so."""
    without_spleen = np.where(RATER_2 == 2, 0, RATER_2)
    first = save_as_slicer(RATER_1, tmp_path / "rater1.seg.nrrd")
    second = save_as_slicer(without_spleen, tmp_path / "rater2.seg.nrrd")
    union = ndimage.find_objects(((RATER_1 > 0) | (without_spleen > 0)).astype(np.uint8))[0]
    extent_mm = [(box.stop - box.start) * step for box, step in zip(union, SCAN.spacing_zyx)]
    assert _evaluate(capsys, second, first, dataset_json)["spleen hd95_mm"] == pytest.approx(np.linalg.norm(extent_mm))
    assert main(["evaluate", str(second), str(first), "--dataset-json", str(dataset_json)]) == 0
    assert "union of their extents" in json.loads(capsys.readouterr().out)["conventions"]["hd95_mm"]


def test_the_recorded_scan_is_read_from_slicer_s_conversion_parameters():
    recorded = reference_geometry({"Segmentation_ConversionParameters": slicer_conversion_parameters(SCAN)})
    assert recorded is not None and recorded.same_grid(SCAN, tol=1e-9)
    for broken in ("", "Reference image geometry|1;0;0;|", "Reference image geometry|a;b|x&",
                   "Reference image geometry|1;0;0;0;0;1;0;0;0;0;1;0;0;0;0;1;0;9;0;9;5;4;|"):   # an empty extent
        assert reference_geometry({"Segmentation_ConversionParameters": broken}) is None
    assert reference_geometry({}) is None


def test_a_segmentation_masksam_writes_records_its_scan_as_slicer_does(tmp_path):
    """So Slicer sees the scan's grid in MaskSAM's files as in its own, and evaluate reads it back
    (an oblique, anisotropic grid)."""
    c, s = np.cos(0.4), np.sin(0.4)
    oblique = ImageGeometry((12, 10, 6), (0.7, 0.9, 3.3), (12.5, -40.0, 7.0), (c, -s, 0, s, c, 0, 0, 0, 1))
    labels = np.zeros(oblique.shape_zyx, np.uint8)
    labels[1:3, 2:5, 2:6] = 1
    path = tmp_path / "labels.seg.nrrd"
    write_segmentation(labels, oblique, STRUCTURES, path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    recorded = reference_geometry({key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()})
    assert recorded is not None and recorded.same_grid(oblique, tol=1e-9)
