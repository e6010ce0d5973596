"""Choices planning and preprocessing make that a user would notice: ties between slice
spacings, unusable target spacings in a hand-edited plan, CT statistics identical on every
planning, the median shape in the network's axis order, uint8 label maps, and nnU-Net's image
interpolation orders recorded in the plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from MaskSAMCore.data import planning
from MaskSAMCore.data.dataset import load_raw_dataset
from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.image_writing import write_image, write_label
from MaskSAMCore.data.planning import plan_experiment, plan_problems, target_spacing
from MaskSAMCore.model.config import preset

IDENTITY = tuple(np.eye(3).ravel())


def _dataset(root: Path, cases, channel="CT") -> Path:
    """Cases: list of (image (z, y, x), labels, spacing xyz)."""
    for index, (image, labels, spacing) in enumerate(cases):
        geometry = ImageGeometry(image.shape[::-1], spacing, (0.0, 0.0, 0.0), IDENTITY)
        write_image(image, geometry, root / "imagesTr" / f"c{index}_0000.nrrd")
        write_label(labels, geometry, root / "labelsTr" / f"c{index}.nrrd")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel}, "labels": {"background": 0, "organ": 1},
        "numTraining": len(cases), "file_ending": ".nrrd"}))
    return root


def test_spacings_within_a_tenth_of_a_percent_count_as_a_tie_that_goes_to_z():
    """Z 2.999 mm vs x 3.0 mm is rounding, not a thicker x axis:
    the slice axis stays z, as for exact ties."""
    _, axis, _ = target_spacing(np.array([[2.999, 1.0, 3.0]]))   # z, y, x
    assert axis == 0
    _, axis, _ = target_spacing(np.array([[2.99, 1.0, 3.0]]))    # 0.33 % apart: x is coarser
    assert axis == 2


@pytest.mark.parametrize("spacing", [[0.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
def test_a_plan_with_a_zero_or_negative_target_spacing_is_called_unusable(spacing):
    """A hand-edited model.json with target_spacing 0 would divide by zero."""
    plan = {"transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "target_spacing": spacing,
            "normalization": [{"scheme": "zscore"}], "anisotropic": False}
    assert any("target_spacing" in p for p in plan_problems(plan, 1))
    plan["target_spacing"] = [1.0, 1.0, 1.0]
    assert plan_problems(plan, 1) == []


def test_ct_statistics_subsampled_from_large_organs_are_the_same_on_every_planning(tmp_path, monkeypatch):
    """When an organ has more voxels than are sampled, planning twice gives the
    same plan (same clip bounds, so the same preprocessed data and the same model)."""
    monkeypatch.setattr(planning._subsample, "__defaults__", (50,))   # sample 50 voxels, not 100 000
    rng = np.random.default_rng(1)
    image = rng.normal(100.0, 30.0, (6, 10, 12)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[1:5, 2:8, 2:10] = 1          # 192 voxels > 50 sampled
    dataset = load_raw_dataset(_dataset(tmp_path / "Dataset002_X", [(image, labels, (1.0, 1.0, 2.0))]))
    config = preset("tiny", num_classes=2)
    first = plan_experiment(dataset, config, progress=False)["normalization"][0]
    second = plan_experiment(dataset, config, progress=False)["normalization"][0]
    assert first == second


def test_median_shape_is_given_in_the_transposed_order_like_the_target_spacing(tmp_path):
    """Thick sagittal slices: x becomes the slice axis, and median_shape, like
    target_spacing and patch_size, lists the slice axis first."""
    rng = np.random.default_rng(2)
    image = rng.normal(0.0, 1.0, (20, 16, 6)).astype(np.float32)   # z, y, x; x spacing 5 mm
    labels = np.zeros(image.shape, np.uint8)
    labels[5:15, 4:12, 1:5] = 1
    dataset = load_raw_dataset(_dataset(tmp_path / "Dataset003_X", [(image, labels, (5.0, 1.0, 1.0))], "MR"))
    plan = plan_experiment(dataset, preset("tiny", num_classes=2), progress=False)
    assert plan["transpose_forward"][0] == 2
    assert plan["median_shape"][0] == 6   # x: 6 voxels at 5 mm, target 5 mm (anisotropic, 10th pct)
    assert sorted(plan["median_shape"][1:]) == [16, 20]


def test_restored_label_map_with_value_255_is_uint8():
    """Restore_label_map documents uint8 whenever the values fit (0..255)."""
    from MaskSAMCore.data.preprocessing import preprocess_case, restore_label_map
    geometry = ImageGeometry((8, 6, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    plan = {"target_spacing": [1.0, 1.0, 1.0], "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "anisotropic": False, "normalization": [{"channel": "MR", "scheme": "zscore", "use_nonzero_mask": False}],
            "reorient_to_lps": True}
    image = np.ones((1, 4, 6, 8), np.float32)
    data, _, properties = preprocess_case(image, geometry, plan)
    labels = np.zeros(data.shape[1:], np.int16)
    labels[1, 2, 3] = 255
    restored = restore_label_map(labels, properties, plan)
    assert restored.dtype == np.uint8 and restored[1, 2, 3] == 255


def test_plans_resample_images_cubically_in_plane_and_linearly_along_thick_slices(tmp_path):
    """The plan records nnU-Net's image interpolation, which preprocessing reads:
    cubic (order 3) in-plane, linear (order_z 1) along thick slices."""
    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 1.0, (6, 10, 12)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[2:4, 3:7, 3:9] = 1
    dataset = load_raw_dataset(_dataset(tmp_path / "Dataset004_X", [(image, labels, (1.0, 1.0, 4.0))], "MR"))
    plan = plan_experiment(dataset, preset("tiny", num_classes=2), progress=False)
    assert plan["image_resampling"]["order"] == 3 and plan["image_resampling"]["order_z"] == 1
