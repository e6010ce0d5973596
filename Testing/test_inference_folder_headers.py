"""`masksam predict` on a folder refuses, from the headers alone and before segmenting any case,
every case whose channels lie on different grids or whose spacing the model cannot use, all
named in one line (README: "reads every header before any work")."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MaskSAMCore.cli import main
from MaskSAMCore.inference import devices
from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.config import preset

NIFTI1_XYZT_UNITS_OFFSET = 123   # the byte of a NIfTI-1 header naming the spatial unit
NIFTI_UNITS_MICRON = 3


def _volume(spacing=(1.5, 1.5, 3.0), origin=(0.0, 0.0, 0.0), shape=(12, 24, 24)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 100, shape).astype(np.float32) - 500)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _predict_folder(model, inputs, outputs, capsys) -> str:
    """Run predict on a folder; the one error line it printed (exactly one)."""
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("masksam: error:")]
    assert len(errors) == 1, lines
    return errors[0]


@pytest.fixture()
def no_memory_surprises(monkeypatch):
    """A 16 GiB machine, whatever this one has free, so a too-large image is judged alike everywhere."""
    monkeypatch.setattr(devices, "available_host_bytes", lambda: 2 ** 34)


def test_channels_on_different_grids_are_refused_before_any_case_is_segmented(tmp_path, capsys):
    config = preset("tiny", num_classes=3, in_channels=2)
    model = write_random_model_folder(tmp_path / "model", config, synthetic_plan(config, (3.0, 1.5, 1.5)))
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    channel_1 = {"a1": _volume(), "z1": _volume(origin=(5.0, 0.0, 0.0)), "z2": _volume(shape=(12, 24, 20))}
    for case, other in channel_1.items():
        sitk.WriteImage(_volume(), str(inputs / f"{case}_0000.nii.gz"))
        sitk.WriteImage(other, str(inputs / f"{case}_0001.nii.gz"))

    said = _predict_folder(model, inputs, outputs, capsys)
    assert said.startswith("masksam: error: 2 of 3 cases cannot be segmented: (1) "), said
    assert f"{inputs / 'z1_0001.nii.gz'}: its origin differ(s) from channel 0 ({inputs / 'z1_0000.nii.gz'})" in said
    assert f"{inputs / 'z2_0001.nii.gz'}: its size differ(s) from channel 0" in said
    assert "all channels must share one voxel grid" in said
    assert not outputs.exists() or not any(outputs.iterdir())   # a1 was not segmented first


def _micrometres_as_nifti_unit(path) -> None:
    """Spacing 1.5 x 1.5 x 3 in a NIfTI whose header says micrometres: 0.0015 mm voxels."""
    sitk.WriteImage(_volume(), str(path))
    data = bytearray(path.read_bytes())
    data[NIFTI1_XYZT_UNITS_OFFSET] = NIFTI_UNITS_MICRON
    path.write_bytes(bytes(data))


def _micrometres_in_nrrd(path) -> None:
    """Spacing given in micrometres with NRRD's `space units: "um"`, which ITK reads as millimetres."""
    sitk.WriteImage(_volume(spacing=(1500.0, 1500.0, 3000.0)), str(path))
    header, voxels = path.read_bytes().split(b"\n\n", 1)
    path.write_bytes(header + b'\nspace units: "um" "um" "um"\n\n' + voxels)


def test_spacings_in_the_wrong_unit_are_refused_before_any_case_is_segmented(tmp_path, capsys, no_memory_surprises):
    config = preset("tiny", num_classes=3)
    model = write_random_model_folder(tmp_path / "model", config, synthetic_plan(config, (3.0, 1.5, 1.5)))
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    sitk.WriteImage(_volume(), str(inputs / "a.nii"))
    sitk.WriteImage(_volume(spacing=(1500.0, 1500.0, 3000.0)), str(inputs / "x.nrrd"))   # micrometres, unsaid
    _micrometres_in_nrrd(inputs / "y.nrrd")
    _micrometres_as_nifti_unit(inputs / "z.nii")

    said = _predict_folder(model, inputs, outputs, capsys)
    assert said.startswith("masksam: error: 3 of 4 cases cannot be segmented: (1) "), said
    huge, rest = said.split("; (2) ")
    units, tiny = rest.split("; (3) ")
    assert units.startswith(f"{inputs / 'y.nrrd'}: its header gives the voxel sizes in um (NRRD space units)")
    assert f"(1) {inputs / 'x.nrrd'}: at the model's spacing (3 x 1.5 x 1.5 mm)" in huge
    assert "of spacing 3000 x 1500 x 1500 mm becomes" in huge and "GiB of memory (16.0 GiB available)" in huge
    assert tiny.startswith(f"{inputs / 'z.nii'}: at the model's spacing (3 x 1.5 x 1.5 mm) this 12 x 24 x 24-voxel "
                           "image of spacing 0.003 x 0.0015 x 0.0015 mm becomes 1 x 1 x 1 voxels, too few to segment")
    assert not outputs.exists() or not any(outputs.iterdir())   # a was not segmented first


def test_a_wrong_unit_in_a_multichannel_case_names_the_case(tmp_path, capsys):
    config = preset("tiny", num_classes=3, in_channels=2)
    model = write_random_model_folder(tmp_path / "model", config, synthetic_plan(config, (3.0, 1.5, 1.5)))
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("a1", "z1"):
        for channel in ("0000", "0001"):
            sitk.WriteImage(_volume(), str(inputs / f"{case}_{channel}.nii"))
    for channel in ("0000", "0001"):
        _micrometres_as_nifti_unit(inputs / f"z1_{channel}.nii")

    said = _predict_folder(model, inputs, outputs, capsys)
    assert said.startswith("masksam: error: case z1: at the model's spacing (3 x 1.5 x 1.5 mm)"), said
    assert "too few to segment" in said
    assert not outputs.exists() or not any(outputs.iterdir())
