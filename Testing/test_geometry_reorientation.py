"""Scans stored with their voxel axes in another order (an MRI stored sagittally or coronally, a
volume with x and y swapped) reach the network as their axially stored twins do, and their labels
and probabilities come back on their own grid.

The network works in voxel order: a sagittally stored twin of an axial scan, handed over as
stored, would show it the body turned by 90 degrees. Each test builds such twins - the same
voxels in the same places in the world, stored in another axis order (the array transposed, the
size, spacing and direction columns permuted with it) - and requires the network input, the plan,
the left-right axis and the written results to follow the physical image, not the storage.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from test_geometry_left_handed import (OBLIQUE, ORIGIN, BrightnessThreshold, assert_preprocessing_sees_the_twin_alike,
                                       bright_box_case, stored_reversed, threshold_plan, use_threshold_model)

from MaskSAMCore.data.image_io import ImageGeometry, read_label
from MaskSAMCore.data.image_writing import write_image, write_label

# Odd sizes, a different spacing on each axis (thick axial slices); an exact and an oblique grid.
AXIAL = {
    "exact": ImageGeometry((23, 19, 9), (0.9, 1.3, 3.7), ORIGIN, tuple(np.eye(3).ravel())),
    "oblique": ImageGeometry((23, 19, 9), (0.9, 1.3, 3.7), ORIGIN, tuple(OBLIQUE.ravel())),
}
# name: (new ITK axis j = old ITK axis order[j], new ITK axes then reversed)
TWINS = {
    "sagittal": ((1, 2, 0), (1,)),          # array (x, z reversed, y): slices along left-right, rows head down
    "coronal": ((0, 2, 1), (1,)),           # array (y, z reversed, x): slices along anterior-posterior
    "x_and_y_swapped": ((1, 0, 2), ()),     # left-handed as well
}


def stored_permuted(array: np.ndarray, geometry: ImageGeometry, itk_order) -> tuple:
    """The same image stored with its voxel axes in another order, every voxel in its place: new
    ITK axis j is old ITK axis ``itk_order[j]`` (its size, spacing and direction column go with
    it; voxel (0, 0, 0), the origin, stays)."""
    order = list(itk_order)
    moved = np.transpose(array, [2 - order[2 - k] for k in range(3)])   # array axis k is ITK axis 2 - k
    direction = geometry.direction_matrix[:, order]
    return np.ascontiguousarray(moved), ImageGeometry([geometry.size[a] for a in order],
                                                      [geometry.spacing[a] for a in order], geometry.origin,
                                                      tuple(direction.ravel()))


def twin_of(array: np.ndarray, geometry: ImageGeometry, twin: str) -> tuple:
    """(array, geometry) of the `twin` (a name of TWINS) of an image stored axially."""
    order, reversed_axes = TWINS[twin]
    moved, moved_geometry = stored_permuted(array, geometry, order)
    return stored_reversed(moved, moved_geometry, reversed_axes) if reversed_axes else (moved, moved_geometry)


def world(geometry: ImageGeometry, ijk) -> np.ndarray:
    """LPS millimetres of voxel index (i, j, k) = ITK (x, y, z)."""
    return np.add(geometry.origin, geometry.direction_matrix @ np.multiply(geometry.spacing, ijk))


def test_twins_are_the_same_image_stored_otherwise():
    axial = AXIAL["oblique"]
    index = np.arange(np.prod(axial.shape_zyx)).reshape(axial.shape_zyx)
    for twin in TWINS:
        values, geometry = twin_of(index, axial, twin)
        assert sorted(geometry.size) == sorted(axial.size) and geometry.size != axial.size
        for voxel in [(0, 0, 0), (8, 18, 22), (3, 11, 5)]:     # (k, j, i) of the axial array
            k, j, i = (int(v) for v in np.argwhere(values == index[voxel])[0])
            np.testing.assert_allclose(world(geometry, (i, j, k)), world(axial, voxel[::-1]), atol=1e-9)


# -- the reorientation itself ------------------------------------------------------------------------

def reoriented_direction(direction: np.ndarray) -> np.ndarray:
    """The direction matrix of arrays reoriented by `lps_reorientation`: columns moved and negated."""
    from MaskSAMCore.data.orientation import lps_reorientation

    r = lps_reorientation(ImageGeometry((5, 6, 7), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), tuple(direction.ravel())))
    # Reoriented ITK axis j is reoriented array axis 2 - j, which is original array axis axes[2 - j].
    columns = [direction[:, 2 - r.axes[2 - j]] * (-1.0 if 2 - j in r.flipped else 1.0) for j in range(3)]
    return np.stack(columns, axis=1)


def signed_permutations():
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            matrix[list(order), [0, 1, 2]] = signs
            yield matrix


@pytest.mark.parametrize("tilt", [np.eye(3), OBLIQUE], ids=["exact", "oblique"])
def test_every_storage_order_is_brought_to_the_lps_one(tilt):
    """All 48 ways of storing a grid (6 axis orders x 8 reversals), exact or tilted by 10-20
    degrees, end up with voxel x, y, z closest to L, P, S: the direction becomes the tilt."""
    for storage in signed_permutations():
        np.testing.assert_allclose(reoriented_direction(tilt @ storage), tilt, atol=1e-12)


def rotated_about_s(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])


def test_near_45_degrees_the_nearest_order_wins_and_exact_ties_keep_the_stored_one():
    from MaskSAMCore.data.orientation import Reorientation, lps_reorientation

    def of(direction):
        return lps_reorientation(ImageGeometry((5, 6, 7), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(direction.ravel())))

    assert of(rotated_about_s(44.0)) == of(rotated_about_s(45.0)) == Reorientation()
    # Turned 46 degrees: voxel y is closer to the patient's right than voxel x is to the left.
    assert of(rotated_about_s(46.0)) == Reorientation((0, 2, 1), (2,))
    # Sheared, both in-plane axes nearest to L: still one voxel axis per patient axis.
    sheared = np.array([[0.75, 0.72, 0.0], [0.66, 0.69, 0.0], [0.0, 0.0, 1.0]])
    assert of(sheared) == Reorientation()


# -- the network's view ------------------------------------------------------------------------------

@pytest.mark.parametrize("twin", list(TWINS))
@pytest.mark.parametrize("grid", list(AXIAL))
def test_preprocessing_shows_the_network_a_twin_stored_in_another_order_as_the_axial_case(grid, twin):
    """Also: a slab of air that cropping removes lies along another array axis in each twin."""
    assert_preprocessing_sees_the_twin_alike(AXIAL[grid], lambda array, axial: twin_of(array, axial, twin))


def test_a_plan_made_before_reorientation_keeps_the_stored_order():
    """Models trained before the rule saw every case as stored; they must go on seeing them so."""
    from MaskSAMCore.data.preprocessing import plan_hash, preprocess_case

    plan = threshold_plan((2.5, 1.2, 1.2))
    before = {key: value for key, value in plan.items() if key != "reorient_to_lps"}
    image, sagittal = twin_of(bright_box_case(AXIAL["oblique"])[0], AXIAL["oblique"], "sagittal")
    as_stored = ImageGeometry(sagittal.size, sagittal.spacing, sagittal.origin, tuple(np.eye(3).ravel()))
    old_data, _, old = preprocess_case(image[None], sagittal, before)
    np.testing.assert_array_equal(old_data, preprocess_case(image[None], as_stored, plan)[0])  # direction unused
    assert old["reorientation"] == {"axes": [0, 1, 2], "flipped": []}
    assert plan_hash(before) == plan_hash(dict(before, reorient_to_lps=False)) != plan_hash(plan)   # caches


def test_the_memory_check_sees_the_image_in_the_order_preprocessing_gives_it():
    from MaskSAMCore.data.resampling import resampled_shape
    from MaskSAMCore.errors import InputError
    from MaskSAMCore.inference.input_checks import HOST_COPIES_OF_RESAMPLED, check_fits_host_memory

    axial = AXIAL["oblique"]
    plan = threshold_plan((2.5, 1.2, 1.2))
    needed = HOST_COPIES_OF_RESAMPLED * 4 * int(np.prod(resampled_shape(axial.shape_zyx, axial.spacing_zyx,
                                                                        (2.5, 1.2, 1.2))))
    for twin in TWINS:
        geometry = twin_of(np.zeros(axial.shape_zyx), axial, twin)[1]
        check_fits_host_memory(geometry, plan, 1, twin, needed)
        with pytest.raises(InputError, match=twin):
            check_fits_host_memory(geometry, plan, 1, twin, needed - 1)


# -- masksam predict ---------------------------------------------------------------------------------

class RightAndFeetFaces(BrightnessThreshold):
    """A network that tells every direction apart: class 1 on the bright voxels whose neighbour on
    the low-W side is dark (the face towards the patient's right) or whose voxel two steps lower
    along T is (a two-voxel face towards the feet). Any turn or mirror of its input (a swap of T
    and W too: the faces differ in depth) changes which voxels it marks."""

    def segment(self, patches: torch.Tensor) -> torch.Tensor:
        bright = (patches[:, :1] > 0.6).float()
        right = bright * (1.0 - torch.nn.functional.pad(bright, (1, 0))[..., :-1])
        feet = bright * (1.0 - torch.nn.functional.pad(bright, (0, 0, 0, 0, 2, 0))[:, :, :-2])
        face = torch.clamp(right + feet, max=1.0)
        return torch.cat([1.0 - face, face], dim=1)


@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "probabilities"])
def test_masksam_predict_segments_every_twin_as_the_axial_case(tmp_path, monkeypatch, probabilities):
    """Labels resampled back slab by slab (`restore_sink`) or from all scores with the
    probabilities: each twin's come back on its own grid, voxel for voxel the axial case's."""
    from MaskSAMCore.cli import main

    axial = AXIAL["oblique"]
    use_threshold_model(monkeypatch, threshold_plan((2.5, 1.2, 1.2)), network=RightAndFeetFaces)
    image, box = bright_box_case(axial)
    write_image(image, axial, tmp_path / "in" / "axial_0000.nii.gz")
    for twin in TWINS:
        write_image(*twin_of(image, axial, twin), tmp_path / "in" / f"{twin}_0000.nii.gz")
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "in"), str(tmp_path / "out"), "--fast",
                 "--device", "cpu"] + (["--probabilities"] if probabilities else [])) == 0

    labels, _ = read_label(tmp_path / "out" / "axial.nii.gz")
    assert 0 < labels.sum() < box.sum() and not labels[~box].any()     # faces of the box only
    for twin in TWINS:
        twin_labels, grid = read_label(tmp_path / "out" / f"{twin}.nii.gz")
        assert grid.same_grid(twin_of(image, axial, twin)[1], tol=1e-5)
        np.testing.assert_array_equal(twin_labels, twin_of(labels, axial, twin)[0], err_msg=twin)
    if probabilities:
        with np.load(tmp_path / "out" / "axial_probabilities.npz") as saved:
            scores = saved["probabilities"]
        for twin in TWINS:
            with np.load(tmp_path / "out" / f"{twin}_probabilities.npz") as saved:
                expected = np.stack([twin_of(scores[k], axial, twin)[0] for k in range(scores.shape[0])])
                np.testing.assert_array_equal(saved["probabilities"], expected, err_msg=twin)
                np.testing.assert_array_equal(saved["size"], twin_of(image, axial, twin)[1].size)


# -- planning and the left-right axis ------------------------------------------------------------------

# Thick axial slices of different thickness (x, y, z mm), repeated for more cases; lateral labels.
SPACINGS = [(0.9, 0.9, 3.5), (1.0, 1.0, 4.0), (0.8, 0.8, 3.0)]
LATERAL_LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2}


def lateral_case(geometry: ImageGeometry, seed: int) -> tuple:
    """(image (z, y, x) HU, labels) of an axially stored case: a larger bright box on the
    patient's left (high x index), a smaller one on the right, soft tissue around."""
    image = np.random.default_rng(seed).normal(-100.0, 5.0, geometry.shape_zyx).astype(np.float32)
    image[0] = 0.0                      # a slab of air that cropping removes
    labels = np.zeros(geometry.shape_zyx, np.uint8)
    nz, ny, nx = geometry.shape_zyx
    labels[nz // 3:nz - 1, ny // 4:ny // 2 + 2, nx - nx // 3:nx - 1] = 1
    labels[nz // 3:nz // 3 + 3, ny // 3:ny // 2, 1:nx // 4] = 2
    image[labels > 0] += 400.0
    return image, labels


def write_lateral_dataset(root, twins) -> None:
    """The cases of SPACINGS, case i stored as ``twins[i]`` (None: axially)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for number, (spacing, twin) in enumerate(zip(SPACINGS * 2, twins)):
        axial = ImageGeometry((21 + 2 * number, 17, 9 + number), spacing, ORIGIN, tuple(OBLIQUE.ravel()))
        image, labels = lateral_case(axial, number)
        if twin is not None:
            (image, geometry), (labels, _) = twin_of(image, axial, twin), twin_of(labels, axial, twin)
        else:
            geometry = axial
        write_image(image, geometry, root / "imagesTr" / f"case_{number:03d}_0000.nii.gz")
        write_label(labels, geometry, root / "labelsTr" / f"case_{number:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": LATERAL_LABELS, "numTraining": len(twins),
        "file_ending": ".nii.gz"}))


def planned(root, twins) -> tuple:
    """(dataset, its plan) of `write_lateral_dataset(root, twins)`."""
    from MaskSAMCore.data.dataset import load_raw_dataset
    from MaskSAMCore.data.planning import plan_experiment
    from MaskSAMCore.model.config import preset

    write_lateral_dataset(root, twins)
    dataset = load_raw_dataset(root, progress=False)
    return dataset, plan_experiment(dataset, preset("tiny", num_classes=3), progress=False)


def test_planning_a_dataset_stored_in_mixed_orders_gives_the_plan_of_the_axial_one(tmp_path):
    _, axial = planned(tmp_path / "axial", [None, None, None])
    _, mixed = planned(tmp_path / "mixed", [None, "sagittal", "coronal"])
    assert axial["transpose_forward"] == [0, 1, 2] and axial["anisotropic"]   # thick axial slices first
    for key in ("target_spacing", "target_spacing_zyx", "transpose_forward", "transpose_backward", "anisotropic",
                "patch_size", "median_shape", "original_spacing_median", "original_median_shape"):
        assert mixed[key] == axial[key], key
    for mine, theirs in zip(mixed["normalization"], axial["normalization"]):   # the same voxels, read otherwise
        assert mine == pytest.approx(theirs)


def test_lateral_labels_keep_the_left_right_axis_unmirrored_whatever_the_storage_order(tmp_path):
    """Most cases sagittal: left-right is their slice axis as stored, yet after reorientation it is
    the patch's W for every case, and that is the axis training and prediction must not mirror."""
    from MaskSAMCore.data.image_io import read_case
    from MaskSAMCore.data.preprocessing import preprocess_case
    from MaskSAMCore.training.mirroring import training_mirror_axes

    dataset, plan = planned(tmp_path / "raw", ["sagittal", None, "sagittal", "x_and_y_swapped", "sagittal"])
    mirror_axes = training_mirror_axes(dataset.labels, dataset.geometries, plan)
    assert mirror_axes == [0, 1]
    for case in dataset.training_cases:
        image, geometry = read_case(case.image_files)
        _, seg, _ = preprocess_case(image, geometry, plan, read_label(case.label_file)[0])
        left, right = (np.argwhere(seg == value).mean(axis=0) for value in (1, 2))
        # The patient's left lies at higher W than the right, and W separates them most.
        assert int(np.argmax(np.abs(left - right))) == 2 and left[2] > right[2], case.name
