"""Planning follows nnU-Net's rules: target spacing, slice axis, normalisation, patch size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from MaskSAMCore.data.dataset import load_raw_dataset
from MaskSAMCore.data.image_io import ImageGeometry, read_case, read_label
from MaskSAMCore.data.image_writing import write_image, write_label
from MaskSAMCore.data.planning import plan_experiment, target_spacing
from MaskSAMCore.errors import DatasetError
from MaskSAMCore.model.config import preset

IDENTITY = tuple(np.eye(3).ravel())


def test_target_spacing_is_the_median_when_isotropic_enough():
    spacings = np.array([[2.0, 0.8, 0.8], [2.5, 0.9, 0.9], [3.0, 1.0, 1.0]])  # z, y, x
    target, axis, anisotropic = target_spacing(spacings)
    np.testing.assert_allclose(target, [2.5, 0.9, 0.9])
    assert axis == 0 and not anisotropic


def test_anisotropic_axis_takes_its_10th_percentile():
    spacings = np.array([[5.0, 0.7, 0.7]] * 6 + [[1.5, 0.8, 0.8]] * 3 + [[5.0, 0.75, 0.75]])
    target, axis, anisotropic = target_spacing(spacings)
    assert anisotropic and axis == 0
    assert target[0] == pytest.approx(np.percentile(spacings[:, 0], 10))  # 1.5, not the median 5.0
    np.testing.assert_allclose(target[1:], [0.7, 0.7])


def test_anisotropic_target_is_never_finer_than_the_in_plane_axes():
    spacings = np.array([[6.0, 1.0, 1.0]] * 8 + [[0.5, 1.0, 1.0]] * 2)
    target, _, anisotropic = target_spacing(spacings)
    assert anisotropic and target[0] == pytest.approx(1.0)


def test_slices_exactly_three_times_thicker_are_not_anisotropic():
    """nnU-Net's rule is strictly more than 3x: common 3 mm / 1 mm scans keep one plain 3D resampling
    (cubic along z, median target) instead of "separate z"."""
    target, axis, anisotropic = target_spacing(np.array([[3.0, 1.0, 1.0]] * 4 + [[1.0, 1.0, 1.0]]))
    assert axis == 0 and not anisotropic
    np.testing.assert_allclose(target, [3.0, 1.0, 1.0])
    _, _, anisotropic = target_spacing(np.array([[3.05, 1.0, 1.0]]))
    assert anisotropic


def test_slice_axis_is_the_coarsest_and_ties_go_to_z():
    _, axis, _ = target_spacing(np.array([[1.0, 1.0, 4.0]]))
    assert axis == 2
    _, axis, _ = target_spacing(np.array([[1.0, 1.0, 1.0]]))
    assert axis == 0
    _, axis, _ = target_spacing(np.array([[2.0, 2.0, 1.0]]))
    assert axis == 0


def write_case(root: Path, name: str, image: np.ndarray, labels: np.ndarray, spacing_xyz, channels=1):
    geometry = ImageGeometry(image.shape[::-1], spacing_xyz, (10.0, -20.0, 30.0), IDENTITY)
    for c in range(channels):
        write_image(image * (c + 1), geometry, root / "imagesTr" / f"{name}_{c:04d}.nrrd")
    write_label(labels, geometry, root / "labelsTr" / f"{name}.nrrd")


def write_dataset_json(root: Path, channel_names, cases: int) -> None:
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": channel_names, "labels": {"background": 0, "tumour": 1},
        "numTraining": cases, "file_ending": ".nrrd"}))


def test_plan_of_a_sagittal_ct_dataset(tmp_path):
    """Thick sagittal slices: x is the slice axis and goes first; CT statistics come from the
    foreground voxels of all cases."""
    rng = np.random.default_rng(1)
    spacings = [(4.0, 0.9, 1.0), (5.0, 0.8, 1.0), (4.5, 1.0, 1.1)]  # x, y, z
    foreground = []
    for index, spacing in enumerate(spacings):
        image = rng.normal(-500, 200, size=(14, 16, 10)).astype(np.float32)   # z, y, x
        labels = np.zeros(image.shape, np.uint8)
        labels[3:9, 4:12, 2:7] = 1
        image[labels == 1] = rng.normal(80, 20, size=int(labels.sum()))
        foreground.append(image[labels == 1])
        write_case(tmp_path, f"case{index}", image, labels, spacing)
    write_dataset_json(tmp_path, {"0": "ct"}, len(spacings))

    plan = plan_experiment(load_raw_dataset(tmp_path, progress=False), preset("tiny", num_classes=2), progress=False)
    json.dumps(plan)  # JSON-able
    assert plan["transpose_forward"] == [2, 0, 1] and plan["transpose_backward"] == [1, 2, 0]
    assert plan["anisotropic"] is True
    # (z, y, x) medians are (1.0, 0.9, 4.5); x (anisotropic) takes its 10th percentile instead.
    expected_x = np.percentile([4.0, 5.0, 4.5], 10)
    np.testing.assert_allclose(plan["target_spacing_zyx"], [1.0, 0.9, expected_x], rtol=1e-6)
    np.testing.assert_allclose(plan["target_spacing"], [expected_x, 1.0, 0.9], rtol=1e-6)
    assert plan["patch_size"] == [4, 64, 64]
    assert plan["label_resampling"]["order_z"] == 0 and plan["image_resampling"]["separate_z"] is True

    (scheme,) = plan["normalization"]
    pooled = np.concatenate(foreground).astype(np.float64)
    assert scheme["scheme"] == "ct"
    assert scheme["clip_low"] == pytest.approx(np.percentile(pooled, 0.5), rel=1e-5)
    assert scheme["clip_high"] == pytest.approx(np.percentile(pooled, 99.5), rel=1e-5)
    assert scheme["mean"] == pytest.approx(pooled.mean(), rel=1e-5)
    assert scheme["std"] == pytest.approx(pooled.std(), rel=1e-5)


def test_a_ct_dataset_whose_labelled_voxels_share_one_value_is_refused_when_planned(tmp_path):
    """Such a plan (std 0, clip_low == clip_high) would be refused when the trained model is
    loaded (model.json's check): planning says so before hours of training."""
    rng = np.random.default_rng(3)
    for index in range(2):
        image = rng.normal(-500, 200, size=(10, 12, 12)).astype(np.float32)
        labels = np.zeros(image.shape, np.uint8)
        labels[3:7, 4:8, 4:8] = 1
        image[labels == 1] = 40.0
        write_case(tmp_path, f"case{index}", image, labels, (1.0, 1.0, 1.0))
    write_dataset_json(tmp_path, {"0": "CT"}, 2)
    with pytest.raises(DatasetError, match=r"every labelled voxel of channel 0 \('CT'\) has the value 40"):
        plan_experiment(load_raw_dataset(tmp_path, progress=False), preset("tiny", num_classes=2), progress=False)


@pytest.mark.parametrize("zero_background", [True, False])
def test_mr_channels_are_z_scored_over_the_body_when_the_background_is_zero(tmp_path, zero_background):
    rng = np.random.default_rng(2)
    for index in range(2):
        image = rng.uniform(50, 500, size=(12, 20, 20)).astype(np.float32)
        if zero_background:
            image[:, :6, :] = 0  # cropping to non-zero keeps 14/20 x 14/20 = 49 % of the voxels
            image[:, :, :6] = 0
        labels = np.zeros(image.shape, np.uint8)
        labels[4:8, 10:15, 10:15] = 1
        write_case(tmp_path, f"mr{index}", image, labels, (1.0, 1.0, 1.0), channels=2)
    write_dataset_json(tmp_path, {"0": "T2", "1": "ADC"}, 2)
    dataset = load_raw_dataset(tmp_path, progress=False)
    plan = plan_experiment(dataset, preset("tiny", num_classes=2, in_channels=2), progress=False)
    assert [s["scheme"] for s in plan["normalization"]] == ["zscore", "zscore"]
    assert [s["use_nonzero_mask"] for s in plan["normalization"]] == [zero_background] * 2
    assert dataset.modality == "T2+ADC"
    expected_shape = [12, 14, 14] if zero_background else [12, 20, 20]
    assert plan["median_shape"] == expected_shape  # after cropping to the non-zero region


def test_plan_of_the_phantoms_is_consistent_with_the_cases(phantom_dataset):
    dataset = load_raw_dataset(phantom_dataset, progress=False)
    plan = plan_experiment(dataset, preset("tiny", num_classes=6), progress=False)
    spacings = np.array([read_case(c.image_files)[1].spacing_zyx for c in dataset.training_cases])
    np.testing.assert_allclose(plan["original_spacing_median"], np.median(spacings, axis=0))
    assert plan["labels"] == dataset.labels and plan["channel_names"] == {"0": "CT"}
    labels = np.concatenate([read_label(c.label_file)[0].ravel() for c in dataset.training_cases])
    images = np.concatenate([read_case(c.image_files)[0].ravel() for c in dataset.training_cases])
    assert plan["normalization"][0]["mean"] == pytest.approx(images[labels > 0].mean(), rel=1e-4)


def test_the_patch_of_a_network_with_a_non_square_input_is_its_height_and_width(phantom_dataset):
    dataset = load_raw_dataset(phantom_dataset, progress=False)
    config = preset("tiny", num_classes=6, image_size=(64, 96))
    plan = plan_experiment(dataset, config, progress=False)
    assert plan["patch_size"] == [4, 64, 96]
