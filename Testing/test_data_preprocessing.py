"""Preprocessing and its inverse: a label map survives the trip to the network's grid and back on
exactly the original grid (exactly when nothing is resampled, Dice > 0.95 per class otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MaskSAMCore.data.dataset import load_raw_dataset
from MaskSAMCore.data.image_io import ImageGeometry, read_label
from MaskSAMCore.data.image_writing import write_label
from MaskSAMCore.data.planning import plan_experiment
from MaskSAMCore.data.preprocess_runner import preprocess_dataset
from MaskSAMCore.data.preprocessing import preprocess_case, restore_label_map, restore_scores_argmax
from MaskSAMCore.data.store import load_case, read_properties
from MaskSAMCore.errors import InputError
from MaskSAMCore.model.config import preset

CT = {"channel": "CT", "scheme": "ct", "clip_low": -200.0, "clip_high": 300.0, "mean": 50.0, "std": 80.0}


def rotation(degrees: float, axis) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def oblique(shape_zyx, spacing_zyx) -> ImageGeometry:
    return ImageGeometry(shape_zyx[::-1], spacing_zyx[::-1], (-101.25, 33.5, 412.75),
                         tuple(rotation(9.0, (2.0, -1.0, 3.0)).ravel()))


def make_plan(target_zyx, forward=(0, 1, 2), anisotropic=False, normalization=(CT,), patch=(4, 64, 64)):
    forward = list(forward)
    return {
        "target_spacing": [float(target_zyx[a]) for a in forward], "transpose_forward": forward,
        "transpose_backward": [int(i) for i in np.argsort(forward)], "anisotropic": anisotropic,
        "crop_to_nonzero": True, "patch_size": list(patch), "normalization": list(normalization),
        "image_resampling": {"order": 3, "order_z": 1, "separate_z": anisotropic},
        "label_resampling": {"method": "one_hot_linear", "order": 1, "order_z": 0 if anisotropic else 1,
                             "separate_z": anisotropic},
    }


def anatomy(shape_zyx, spacing_zyx):
    """(image (1, z, y, x) HU, labels (z, y, x)): three structures a few voxels thick, in mm."""
    z, y, x = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape_zyx, spacing_zyx)]
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    extent = [n * s / 2 for n, s in zip(shape_zyx, spacing_zyx)]
    labels = np.zeros(shape_zyx, np.uint8)
    labels[(z / extent[0]) ** 2 + ((y + 0.2 * extent[1]) / (0.55 * extent[1])) ** 2
           + ((x + 0.25 * extent[2]) / (0.5 * extent[2])) ** 2 <= 1] = 1
    labels[(((y - 0.35 * extent[1]) / (0.3 * extent[1])) ** 2 + ((x - 0.4 * extent[2]) / (0.3 * extent[2])) ** 2 <= 1)
           & (np.abs(z) < 0.7 * extent[0])] = 2
    labels[(z / extent[0]) ** 2 + ((y + 0.4 * extent[1]) / (0.3 * extent[1])) ** 2
           + ((x - 0.45 * extent[2]) / (0.3 * extent[2])) ** 2 <= 1] = 3
    image = np.where(labels > 0, 40.0 + 30 * labels, -80.0).astype(np.float32)[None]
    return image, labels


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    a, b = a == value, b == value
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def round_trip_via_file(labels, geometry, plan, path, image=None):
    """preprocess -> restore -> write: returns (restored array, written SimpleITK image)."""
    if image is None:
        image = np.where(labels > 0, 100.0, -50.0).astype(np.float32)[None]
    _, seg, properties = preprocess_case(image, geometry, plan, labels)
    properties = json.loads(json.dumps(properties))  # what a worker stores and a predictor reads
    restored = restore_label_map(seg, properties, plan)
    write_label(restored, ImageGeometry.from_dict(properties["original_geometry"]), path)
    return restored, sitk.ReadImage(str(path))


def assert_written_on_grid(written: sitk.Image, geometry: ImageGeometry, path: Path) -> None:
    reference_path = path.with_name("reference" + "".join(path.suffixes))
    write_label(np.zeros(geometry.shape_zyx, np.uint8), geometry, reference_path)
    reference = sitk.ReadImage(str(reference_path))
    assert written.GetSize() == reference.GetSize() == geometry.size
    assert written.GetSpacing() == reference.GetSpacing()
    assert written.GetOrigin() == reference.GetOrigin()
    assert written.GetDirection() == reference.GetDirection()


def test_nifti_oblique_anisotropic_without_resampling_is_exact(tmp_path):
    shape, spacing = (11, 37, 29), (4.0, 0.9, 1.1)
    image, labels = anatomy(shape, spacing)
    plan = make_plan(spacing)
    geometry = oblique(shape, spacing)
    path = tmp_path / "restored.nii.gz"
    restored, written = round_trip_via_file(labels, geometry, plan, path, image)
    assert restored.shape == labels.shape
    np.testing.assert_array_equal(restored, labels)
    assert_written_on_grid(written, geometry, path)


@pytest.mark.parametrize("ending", [".nrrd", ".nii.gz"])
def test_oblique_anisotropic_with_resampling_keeps_each_class(tmp_path, ending):
    shape, spacing = (13, 41, 35), (3.7, 0.9, 1.1)     # odd sizes, thick slices
    image, labels = anatomy(shape, spacing)
    plan = make_plan((3.0, 1.0, 1.0), anisotropic=True)
    geometry = oblique(shape, spacing)
    data, seg, properties = preprocess_case(image, geometry, plan, labels)
    assert data.shape == (1, 16, 37, 38) and seg.shape == (16, 37, 38)  # 13*3.7/3 = 16.0, 41*0.9 = 36.9 ...
    assert data.dtype == np.float32 and seg.dtype == np.int16
    path = tmp_path / f"restored{ending}"
    restored, written = round_trip_via_file(labels, geometry, plan, path, image)
    assert restored.shape == labels.shape
    for value in (1, 2, 3):
        assert dice(restored, labels, value) > 0.95, value
    assert_written_on_grid(written, geometry, path)


def test_volume_smaller_than_the_patch(tmp_path):
    shape, spacing = (3, 21, 25), (2.5, 1.5, 1.5)
    image, labels = anatomy(shape, spacing)
    plan = make_plan(spacing, patch=(4, 64, 64))
    data, seg, _ = preprocess_case(image, oblique(shape, spacing), plan, labels)
    assert data.shape == (1, 3, 21, 25)  # the loader and the predictor pad; preprocessing does not
    restored, written = round_trip_via_file(labels, oblique(shape, spacing), plan, tmp_path / "small.mha", image)
    np.testing.assert_array_equal(restored, labels)
    assert written.GetSize() == (25, 21, 3)


def test_slice_axis_other_than_z_is_transposed_first_and_back(tmp_path):
    shape, spacing = (30, 26, 9), (1.0, 1.2, 4.5)       # thick sagittal slices: x is the slice axis
    image, labels = anatomy(shape, spacing)
    plan = make_plan(spacing, forward=(2, 0, 1), anisotropic=True)
    data, seg, properties = preprocess_case(image, oblique(shape, spacing), plan, labels)
    assert data.shape == (1, 9, 30, 26)
    np.testing.assert_array_equal(seg, np.transpose(labels, (2, 0, 1)))
    restored, _ = round_trip_via_file(labels, oblique(shape, spacing), plan, tmp_path / "sag.nrrd", image)
    np.testing.assert_array_equal(restored, labels)


def test_a_structure_on_a_slice_that_downsampling_skips_vanishes_instead_of_failing():
    """A thin-slice case (1.5 mm) in a thick-slice plan (3 mm, nearest along z keeps the odd
    slices): a lesion drawn on slice 8 alone falls between the kept slices."""
    shape, spacing = (20, 32, 32), (1.5, 0.7, 0.7)
    labels = np.zeros(shape, np.uint8)
    labels[5:15, 5:20, 5:20] = 1
    labels[8, 22:26, 22:26] = 2
    image = np.where(labels > 0, 100.0, -50.0).astype(np.float32)[None]
    plan = make_plan((3.0, 0.7, 0.7), anisotropic=True)
    data, seg, properties = preprocess_case(image, oblique(shape, spacing), plan, labels)
    assert data.shape == (1, 10, 32, 32)
    np.testing.assert_array_equal(seg, labels[1::2])       # the kept slices, lesion gone
    assert properties["classes_present"] == [0, 1]
    # and back: the network grid's slices are upsampled, every one of them is read
    restored = restore_label_map(seg, properties, plan)
    np.testing.assert_array_equal(restored[1::2], labels[1::2])


def test_cropping_to_non_zero_and_pasting_back():
    shape, spacing = (10, 30, 30), (2.0, 1.0, 1.0)
    image = np.zeros((2,) + shape, np.float32)
    image[0, 2:8, 5:25, 3:20] = 7.0
    image[1, 1:3, 10:12, 10:12] = 3.0                   # the second channel widens the box along z
    labels = np.zeros(shape, np.uint8)
    labels[3:6, 8:20, 6:15] = 1
    plan = make_plan(spacing, normalization=({"channel": "T1", "scheme": "zscore", "use_nonzero_mask": True},) * 2)
    data, seg, properties = preprocess_case(image, oblique(shape, spacing), plan, labels)
    assert properties["bbox"] == [[1, 8], [5, 25], [3, 20]]
    assert properties["shape_after_cropping"] == [7, 20, 17] and data.shape == (2, 7, 20, 17)
    body = np.any(image[:, 1:8, 5:25, 3:20] != 0, axis=0)  # nnU-Net: non-zero in any channel
    for channel in data:
        assert channel[body].mean() == pytest.approx(0.0, abs=1e-5)
        assert channel[body].std() == pytest.approx(1.0, abs=1e-4)
        assert np.all(channel[~body] == 0.0)
    np.testing.assert_array_equal(restore_label_map(seg, properties, plan), labels)


def test_ct_normalisation_clips_then_uses_the_dataset_statistics():
    shape, spacing = (4, 6, 8), (2.0, 1.0, 1.0)
    values = np.linspace(-1000, 1000, int(np.prod(shape)), dtype=np.float32).reshape((1,) + shape)
    data, _, _ = preprocess_case(values, oblique(shape, spacing), make_plan(spacing))
    expected = (np.clip(values, CT["clip_low"], CT["clip_high"]) - CT["mean"]) / CT["std"]
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-5)


def test_thick_slices_are_interpolated_linearly_and_in_plane_cubically():
    """nnU-Net's "separate z" for an anisotropic plan: between two 5 mm slices an upsampled image
    is a straight line (cubic would undershoot next to a step), while in-plane stays cubic."""
    shape, spacing = (4, 6, 6), (5.0, 1.0, 1.0)
    along_z = np.array([100.0, 100.0, 200.0, 200.0])
    along_x = np.where(np.arange(6) < 3, 0.0, 50.0)
    image = (along_z[:, None, None] + along_x[None, None, :] + np.zeros(shape)).astype(np.float32)[None]
    data, _, properties = preprocess_case(image, oblique(shape, spacing), make_plan((2.5, 0.5, 0.5), anisotropic=True))
    assert data.shape == (1, 8, 12, 12) and properties["separate_z"]
    hu = data[0] * CT["std"] + CT["mean"]
    # Output slice i reads the input at (i + 0.5) * 4 / 8 - 0.5, edge slices repeated.
    linear = np.interp((np.arange(8) + 0.5) * 0.5 - 0.5, np.arange(4), along_z)
    for y, x in ((0, 0), (5, 0), (11, 0)):              # x = 0: far from the in-plane step
        np.testing.assert_allclose(hu[:, y, x], linear, atol=1e-3)
    in_plane = hu[0, 6] - linear[0]
    assert in_plane.min() < -1.0 and in_plane.max() > 51.0  # cubic over- and undershoots the step


def test_restore_scores_argmax_matches_the_label_map_and_accepts_torch():
    shape, spacing = (12, 33, 27), (2.0, 1.3, 1.1)
    image, labels = anatomy(shape, spacing)
    plan = make_plan((1.6, 1.0, 1.0))
    _, seg, properties = preprocess_case(image, oblique(shape, spacing), plan, labels)
    scores = np.stack([(seg == k).astype(np.float32) for k in range(4)])
    from_scores = restore_scores_argmax(torch.from_numpy(scores), properties, plan)
    from_labels = restore_label_map(seg, properties, plan)
    assert from_scores.shape == labels.shape
    np.testing.assert_array_equal(from_scores, from_labels)  # both: one-hot, linear, argmax
    for value in (1, 2, 3):
        assert dice(from_scores, labels, value) > 0.95


def test_restore_refuses_a_prediction_of_the_wrong_shape():
    shape, spacing = (5, 9, 9), (2.0, 1.0, 1.0)
    image, labels = anatomy(shape, spacing)
    plan = make_plan(spacing)
    _, seg, properties = preprocess_case(image, oblique(shape, spacing), plan, labels)
    with pytest.raises(ValueError, match="does not match the preprocessed shape"):
        restore_label_map(seg[:-1], properties, plan)


def test_preprocess_dataset_writes_resumably_and_in_parallel(phantom_dataset, tmp_path):
    dataset = load_raw_dataset(phantom_dataset, progress=False)
    plan = plan_experiment(dataset, preset("tiny", num_classes=6), progress=False)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    parallel.mkdir()
    stale = parallel / ".phantom_000.partial-dead.npy"
    stale.write_bytes(b"left by a killed run")

    first = preprocess_dataset(dataset, plan, serial, num_workers=0, progress=False)
    assert first["preprocessed"] == ["phantom_000", "phantom_001", "phantom_002"]
    both = preprocess_dataset(dataset, plan, parallel, num_workers=2, progress=False)
    assert sorted(both["preprocessed"]) == first["preprocessed"] and not stale.exists()
    for name in first["preprocessed"]:
        a, b = load_case(serial, name), load_case(parallel, name)
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.seg, b.seg)
        np.testing.assert_array_equal(a.locations, b.locations)
        assert a.data.dtype == np.float32 and a.seg.dtype == np.int16
        assert set(np.unique(a.locations[:, 0])) == set(np.unique(a.seg)) - {0}
        assert np.all(a.seg[tuple(a.locations[:, 1:].T)] == a.locations[:, 0])

    again = preprocess_dataset(dataset, plan, serial, num_workers=0, progress=False)
    assert again["preprocessed"] == [] and len(again["up_to_date"]) == 3

    label_file = dataset.case("phantom_001").label_file
    os.utime(label_file, ns=(time.time_ns(), time.time_ns() + 10**9))  # the raw label changed
    assert preprocess_dataset(dataset, plan, serial, num_workers=0, progress=False)["preprocessed"] == ["phantom_001"]

    plan["normalization"][0]["clip_high"] += 1.0
    assert len(preprocess_dataset(dataset, plan, serial, num_workers=0, progress=False)["preprocessed"]) == 3

    # The stored properties are all a predictor needs to go back to the raw grid.
    case = load_case(serial, "phantom_002", mmap=False)
    restored = restore_label_map(case.seg, read_properties(serial, "phantom_002"), plan)
    original, _ = read_label(dataset.case("phantom_002").label_file)
    for value in range(1, 6):
        if (original == value).sum() > 50:
            assert dice(restored, original, value) > 0.9


def test_a_rewrite_stopped_half_way_is_not_taken_for_the_old_plans_case(phantom_dataset, tmp_path, monkeypatch):
    """Plan A, then plan B killed after rewriting a case's image but before its JSON, then plan
    A again: the case must be redone, not taken as plan A's because A's JSON was still there."""
    from MaskSAMCore.data import store

    dataset = load_raw_dataset(phantom_dataset, progress=False)
    plan_a = plan_experiment(dataset, preset("tiny", num_classes=6), progress=False)
    plan_b = json.loads(json.dumps(plan_a))
    plan_b["normalization"][0]["clip_high"] += 500.0
    out = tmp_path / "preprocessed"
    preprocess_dataset(dataset, plan_a, out, num_workers=0, progress=False)
    expected = load_case(out, "phantom_000", mmap=False).data

    real_save = store._save_npy

    def killed_after_the_image(path, array):
        if array.dtype == np.int16:   # the labels come second
            raise KeyboardInterrupt
        real_save(path, array)

    with monkeypatch.context() as patch:
        patch.setattr(store, "_save_npy", killed_after_the_image)
        with pytest.raises(KeyboardInterrupt):
            preprocess_dataset(dataset, plan_b, out, num_workers=0, progress=False)
    assert not np.array_equal(np.load(out / "phantom_000.npy"), expected)   # B's image is there

    again = preprocess_dataset(dataset, plan_a, out, num_workers=0, progress=False)
    assert again["preprocessed"] == ["phantom_000"]
    np.testing.assert_array_equal(load_case(out, "phantom_000", mmap=False).data, expected)


def test_a_case_broken_after_validation_stops_the_parallel_run_with_its_file_named(phantom_dataset, tmp_path):
    root = Path(shutil.copytree(phantom_dataset, tmp_path / "raw"))
    dataset = load_raw_dataset(root, progress=False)
    plan = plan_experiment(dataset, preset("tiny", num_classes=6), progress=False)
    broken = dataset.case("phantom_001").image_files[0]
    broken.write_bytes(b"overwritten by a careless copy")
    out = tmp_path / "pre"
    with pytest.raises(InputError, match=r"phantom_001_0000\.nii\.gz: cannot read it as an image"):
        preprocess_dataset(dataset, plan, out, num_workers=2, progress=False)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]         # no temporaries left
    assert not (out / "phantom_001.json").exists()

    shutil.copy(phantom_dataset / "imagesTr" / "phantom_001_0000.nii.gz", broken)
    summary = preprocess_dataset(dataset, plan, out, num_workers=0, progress=False)
    assert "phantom_001" in summary["preprocessed"]
    assert len(summary["preprocessed"]) + len(summary["up_to_date"]) == 3


def test_a_worker_killed_from_outside_is_one_line_naming_the_unfinished_cases(phantom_dataset, tmp_path,
                                                                              monkeypatch):
    """The out-of-memory killer takes a worker (SIGKILL, no Python error to pass on)."""
    import signal
    from concurrent.futures import ProcessPoolExecutor

    import MaskSAMCore.data.preprocess_runner as runner
    from MaskSAMCore.errors import MaskSAMError

    class KilledPool(ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            future = super().submit(*args, **kwargs)
            if not getattr(self, "killed", False):   # the first worker, as soon as it exists
                self.killed = True
                os.kill(next(iter(self._processes)), signal.SIGKILL)
            return future

    dataset = load_raw_dataset(phantom_dataset, progress=False)
    plan = plan_experiment(dataset, preset("tiny", num_classes=6), progress=False)
    monkeypatch.setattr(runner, "ProcessPoolExecutor", KilledPool)
    out = tmp_path / "pre"
    with pytest.raises(MaskSAMError) as caught:
        preprocess_dataset(dataset, plan, out, num_workers=2, progress=False)
    message = str(caught.value)
    assert message.startswith(f"{out}: a preprocessing worker process was killed (out of memory?) with case(s) ")
    assert "phantom_000" in message and message.endswith("--num-workers 1)")
    assert "\n" not in message


def test_z_score_statistics_come_from_the_original_voxels_not_the_resampled_ones():
    """A model's intensities must not shift with the target spacing: the per-image mean and
    standard deviation are those of the cropped input, before cubic resampling smooths it."""
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 40.0, (1, 6, 20, 20)).astype(np.float32)
    image[0, :, :, :3] = 0.0     # a zero border that cropping removes
    geometry = ImageGeometry((20, 20, 6), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    mr = {"channel": "T1", "scheme": "zscore", "use_nonzero_mask": False}
    plan = {"target_spacing": [2.0, 1.7, 1.7], "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "anisotropic": False, "crop_to_nonzero": True, "normalization": [mr]}
    data, _, properties = preprocess_case(image, geometry, plan)
    assert data.shape[1:] != (6, 20, 17)   # resampled
    cropped = image[0, :, :, 3:].astype(np.float64)
    assert properties["normalization_stats"][0]["mean"] == pytest.approx(cropped.mean(), rel=1e-6)
    assert properties["normalization_stats"][0]["std"] == pytest.approx(cropped.std(), rel=1e-6)
