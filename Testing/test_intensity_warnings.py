"""A CT model warns about an image that cannot be in Hounsfield units (a lost rescale
intercept, an MR or an 8-bit picture given to it): such images are segmented as nonsense without
any error, so the user is told, and the segmentation is still written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MaskSAMCore.cli import main
from MaskSAMCore.inference.input_checks import intensity_warnings
from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.config import preset
from MaskSAMCore.progress import MACHINE_PREFIX, enable_machine_lines

# A trained abdominal CT model's window: the darkest 0.5 % of its organs' voxels are -100 HU.
ABDOMEN = {"channel": "CT", "scheme": "ct", "clip_low": -100.0, "clip_high": 250.0, "mean": 80.0, "std": 50.0}


def body_ct(shape=(6, 20, 24)) -> np.ndarray:
    """(1, z, y, x) HU: air around a soft-tissue body, as every body CT is."""
    image = np.full((1, *shape), -1000.0, dtype=np.float32)
    image[:, :, 4:-4, 4:-4] = 40.0
    return image


def test_an_image_in_hounsfield_units_gets_no_warning():
    assert intensity_warnings(body_ct(), {"normalization": [ABDOMEN]}, "ct.nii.gz") == []


@pytest.mark.parametrize("what, image", [
    ("a lost rescale intercept", body_ct() + 1024.0),
    ("an 8-bit picture", np.clip(body_ct() / 8 + 128, 0, 255)),
    ("an MR image", np.abs(np.random.default_rng(0).normal(300, 100, (1, 6, 20, 24))).astype(np.float32)),
])
def test_an_image_not_in_hounsfield_units_is_named_with_its_darkest_value(what, image):
    warnings = intensity_warnings(image, {"normalization": [ABDOMEN]}, "scan.nii.gz")
    assert len(warnings) == 1, what
    assert warnings[0].startswith(f"scan.nii.gz: its darkest voxel is {float(image.min()):g}, ")
    assert "may not be in Hounsfield units" in warnings[0] and "down to -100" in warnings[0]


def test_a_model_whose_structures_include_lung_still_accepts_a_chest_ct_and_warns_without_air():
    lung = dict(ABDOMEN, clip_low=-950.0)
    chest = body_ct()
    chest[:, 2:4, 8:12, 8:12] = -850.0          # lung parenchyma; air around the body
    assert intensity_warnings(chest, {"normalization": [lung]}, "chest.nrrd") == []
    no_air = np.maximum(chest, -450.0)          # nothing darker than -450 HU: no air at all
    assert len(intensity_warnings(no_air, {"normalization": [lung]}, "chest.nrrd")) == 1


def test_only_ct_channels_are_checked_and_the_channel_file_is_named():
    plan = {"normalization": [{"channel": "T2", "scheme": "zscore", "use_nonzero_mask": False}, ABDOMEN]}
    image = np.concatenate([np.full_like(body_ct(), 200.0), body_ct() + 1024.0])
    image[0, 0, 0, 0] = 0.0
    warnings = intensity_warnings(image, plan, "case p1", channel_files=["p1_0000.nii.gz", "p1_0001.nii.gz"])
    assert len(warnings) == 1
    assert warnings[0].startswith("p1_0001.nii.gz: the darkest voxel of channel 1 (CT) is 24, ")


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory) -> Path:
    config = preset("tiny", num_classes=3)
    plan = synthetic_plan(config, (3.0, 1.5, 1.5), ct_window=(-100.0, 250.0))
    return write_random_model_folder(tmp_path_factory.mktemp("models") / "ct", config, plan)


def test_predict_warns_once_about_a_scan_without_its_rescale_intercept_and_still_writes_it(
        phantom_dataset, ct_model, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    source = phantom_dataset / "imagesTs" / "phantom_test_000_0000.nii.gz"
    shutil.copy(source, images / "right_0000.nii.gz")
    shifted = sitk.ReadImage(str(source)) + 1024          # the phantom's air (-1024 HU) becomes 0
    sitk.WriteImage(shifted, str(images / "shifted_0000.nii.gz"))
    output = tmp_path / "labels"
    try:
        status = main(["--machine-progress", "predict", str(ct_model), str(images), str(output), "--fast",
                       "--device", "cpu"])
    finally:
        enable_machine_lines(False)
    captured = capsys.readouterr()
    assert status == 0
    assert sorted(p.name for p in output.iterdir()) == ["right.nii.gz", "shifted.nii.gz"]
    warnings = [line for line in captured.err.splitlines() if line.startswith("masksam: warning: ")]
    assert len(warnings) == 1
    assert "shifted_0000.nii.gz: its darkest voxel is 0, " in warnings[0]
    assert "Hounsfield units" in warnings[0]
    events = [json.loads(line[len(MACHINE_PREFIX):]) for line in captured.out.splitlines()
              if line.startswith(MACHINE_PREFIX)]
    assert [e["message"] for e in events if e["event"] == "warning"] == [warnings[0][len("masksam: warning: "):]]


def test_the_dataset_check_names_the_training_cases_that_are_not_in_hounsfield_units(phantom_dataset, tmp_path,
                                                                                     capsys):
    from MaskSAMCore.data.dataset import load_raw_dataset

    dataset = tmp_path / "dataset"
    shutil.copytree(phantom_dataset, dataset)
    image = dataset / "imagesTr" / "phantom_001_0000.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(image)) + 1024, str(image))   # exported without its rescale intercept
    load_raw_dataset(dataset, check_images=True, progress=False, warn=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam: warning: ")]
    assert len(warnings) == 1
    assert "the CT image of 1 case(s) (phantom_001: 0) has no voxel darker than -500 HU" in warnings[0]
    assert "phantom_000" not in warnings[0] and "phantom_002" not in warnings[0]
