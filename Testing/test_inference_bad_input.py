"""Bad input to `masksam predict`: one clear line naming the file or folder and the problem, exit
status 1, and no output file left behind."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MaskSAMCore.cli import main
from MaskSAMCore.data.image_io import read_geometry
from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset
from MaskSAMCore.model_folder import save_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = preset("tiny", num_classes=3)
    return write_random_model_folder(tmp_path_factory.mktemp("models") / "tiny", config,
                                     synthetic_plan(config, (2.5, 1.2, 1.2)))


def _image(array: np.ndarray, spacing=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=False)
    if spacing:
        image.SetSpacing(spacing)
    return image


def _write(path, array, spacing=None):
    sitk.WriteImage(_image(array, spacing), str(path))
    return path


def _bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _four_d(path):
    image = sitk.JoinSeries([_image(np.random.rand(5, 6, 7).astype(np.float32)) for _ in range(3)])
    sitk.WriteImage(image, str(path))
    return path


BAD_IMAGES = {
    "2D image": (lambda p: _write(p / "slice.nii.gz", np.random.rand(20, 30).astype(np.float32)), "2D image"),
    "4D image": (lambda p: _four_d(p / "series.nii.gz"), "4D image"),
    "NaN voxels": (lambda p: _write(p / "nan.nrrd", np.where(np.eye(8)[None].repeat(6, 0) > 0, np.nan, 1.0)
                                    .astype(np.float32)), "NaN/Inf"),
    "Inf voxels": (lambda p: _write(p / "inf.mha", np.full((6, 8, 8), np.inf, np.float32)), "NaN/Inf"),
    "NaN voxels in NIfTI": (lambda p: _write(p / "holes.nii.gz", np.where(np.eye(8)[None].repeat(6, 0) > 0, np.nan,
                                                                          1.0).astype(np.float32)), "NaN/Inf"),
    "constant image": (lambda p: _write(p / "flat.nii.gz", np.full((6, 8, 8), -1000, np.int16)), "constant"),
    "one voxel": (lambda p: _write(p / "dot.nii.gz", np.ones((1, 1, 1), np.float32)), "single voxel"),
    "corrupt file": (lambda p: _bytes(p / "broken.nii.gz", b"\x1f\x8b" + bytes(range(256)) * 4), "cannot read"),
    "text file": (lambda p: _bytes(p / "notes.nrrd", b"this is not an image\n"), "cannot read"),
    "empty file": (lambda p: _bytes(p / "empty.nii.gz", b""), "the file is empty (0 bytes); copy or write it again"),
    "unknown ending": (lambda p: _bytes(p / "scan.txt", b"1 2 3"), "not an image file"),
}


# -- headers ITK reads without complaint but that would misplace or misread the voxels ----------

def _nifti_patched(path, array, patches):
    """An uncompressed NIfTI-1 file of `array`, then `patches` {byte offset: (struct format, value)}."""
    _write(path, array)
    data = bytearray(path.read_bytes())
    for offset, (fmt, value) in patches.items():
        struct.pack_into(fmt, data, offset, value)
    return _bytes(path, bytes(data))


def _header_file(path, header: str, array: np.ndarray):
    return _bytes(path, header.encode() + np.ascontiguousarray(array, "<i2").tobytes())


_VOXELS = (np.arange(6 * 8 * 8) % 50).reshape(6, 8, 8)
_METAIMAGE = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "DimSize = 8 8 6\nElementSpacing = {spacing}\nTransformMatrix = {matrix}\nOffset = 0 0 0\n"
              "ElementType = MET_SHORT\nElementDataFile = LOCAL\n")
HEADER_PROBLEMS = {
    "negative spacing (NRRD)": (lambda p: _header_file(
        p / "neg.nrrd", "NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 6\nendian: little\n"
                        "spacings: -1.2 1.2 2.5\nencoding: raw\n\n", _VOXELS),
        "negative voxel spacing (-1.2 mm along x)"),
    "negative pixdim (NIfTI)": (lambda p: _nifti_patched(p / "neg.nii", _VOXELS.astype(np.int16),
                                                         {80: ("<f", -1.2)}), "negative voxel spacing"),
    "zero spacing (MetaImage)": (lambda p: _header_file(
        p / "zero.mha", _METAIMAGE.format(spacing="0 1.2 2.5", matrix="1 0 0 0 1 0 0 0 1"), _VOXELS),
        "voxel spacing along x as 0"),
    "scaling direction (MetaImage)": (lambda p: _header_file(
        p / "scaled.mha", _METAIMAGE.format(spacing="1.2 1.2 2.5", matrix="2 0 0 0 2 0 0 0 2"), _VOXELS),
        "column lengths 2, 2, 2, not 1"),
    "parallel axes (MetaImage)": (lambda p: _header_file(
        p / "parallel.mha", _METAIMAGE.format(spacing="1.2 1.2 2.5", matrix="1 0 0 1 0 0 0 0 1"), _VOXELS),
        "direction matrix has (nearly) parallel axes (determinant 0), so its voxels cannot be placed in space"),
    "parallel axes (NRRD)": (lambda p: _header_file(
        p / "parallel.nrrd", "NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 6\nendian: little\nspace: "
                             "left-posterior-superior\nspace directions: (0.8,0,0) (1.4,0,0) (0,0,3.1)\n"
                             "encoding: raw\n\n", _VOXELS), "(nearly) parallel axes"),
    "complex voxels": (lambda p: _write(p / "complex.nii.gz", (_VOXELS + 1j * _VOXELS).astype(np.complex64)),
                       "complex voxel values"),
    "NIfTI-2": (lambda p: _bytes(p / "n2.nii", struct.pack("<i", 540) + b"n+2\0\r\n\x1a\n" + bytes(532)),
                "NIfTI-2 file"),
    "upper-case MetaImage ending": (lambda p: _write(p / "scan.mha", _VOXELS.astype(np.float32)).rename(p / "SCAN.MHA")
                                    or p / "SCAN.MHA",
                                    "lower-case file ending; rename it to end in .mha"),
    "spacing in micrometres": (lambda p: _write(p / "tiny.nrrd", _VOXELS.astype(np.float32), (1e-3, 1e-3, 2e-3)),
                               "too few to segment; check the voxel spacing (and its unit)"),
}


def _assert_one_line_error(capsys, *fragments):
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("masksam: error:")]
    assert len(errors) == 1, lines
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("kind", [*BAD_IMAGES, *HEADER_PROBLEMS])
def test_bad_image_gives_one_line_naming_the_file(model_dir, tmp_path, capsys, kind):
    make, problem = {**BAD_IMAGES, **HEADER_PROBLEMS}[kind]
    source = make(tmp_path)
    output = tmp_path / "out" / "labels.nii.gz"
    assert main(["predict", str(model_dir), str(source), str(output), "--fast", "--device", "cpu"]) == 1
    said = _assert_one_line_error(capsys, source.name, problem)
    assert "WARNING" not in said and "ITK ERROR" not in said
    assert not output.exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_a_spacing_that_would_resample_beyond_memory_is_refused(model_dir, tmp_path, capsys, monkeypatch):
    """A header with 400 mm slices (a typo for 4) resamples 6 slices to the model's 2.5 mm as 960."""
    from MaskSAMCore.inference import devices

    source = _write(tmp_path / "typo.nrrd", np.random.rand(6, 8, 8).astype(np.float32), spacing=(1.2, 1.2, 400.0))
    monkeypatch.setattr(devices, "available_host_bytes", lambda: 2 ** 20)  # a 1 MiB machine
    output = tmp_path / "labels.nrrd"
    assert main(["predict", str(model_dir), str(source), str(output), "--fast", "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, "typo.nrrd", "400 x 1.2 x 1.2 mm becomes 960 x 8 x 8 voxels",
                           "check the voxel spacing in its header")
    assert not output.exists()


@pytest.mark.parametrize("slice_mm", [1e16, 1e30])
def test_an_absurd_spacing_is_refused_in_one_line_not_overflowed(model_dir, tmp_path, capsys, monkeypatch, slice_mm):
    from MaskSAMCore.inference import devices

    monkeypatch.setattr(devices, "available_host_bytes", lambda: 2 ** 34)   # a 16 GiB machine
    source = _write(tmp_path / "absurd.nrrd", np.random.rand(6, 8, 8).astype(np.float32), spacing=(1.2, 1.2, slice_mm))
    output = tmp_path / "labels.nrrd"
    assert main(["predict", str(model_dir), str(source), str(output), "--fast", "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, "absurd.nrrd", "GiB of memory", "check the voxel spacing in its header")
    assert not output.exists()


def test_probabilities_beyond_memory_are_refused_before_any_work_naming_the_option(model_dir, tmp_path, capsys,
                                                                                     monkeypatch):
    """A CT that segments fine on this machine, but whose --probabilities (K float16 scores per voxel
    held for the npz) would not fit: refused before any work, saying so; not killed after minutes."""
    from MaskSAMCore.inference import devices
    from MaskSAMCore.inference.input_checks import HOST_COPIES_OF_RESAMPLED

    shape = (10, 16, 16)   # at the model's spacing: not resampled
    source = _write(tmp_path / "ct.nrrd", np.random.rand(*shape).astype(np.float32), spacing=(1.2, 1.2, 2.5))
    fits_labels_only = HOST_COPIES_OF_RESAMPLED * 4 * int(np.prod(shape))
    monkeypatch.setattr(devices, "available_host_bytes", lambda: fits_labels_only)
    output = tmp_path / "labels.nrrd"
    command = ["predict", str(model_dir), str(source), str(output), "--fast", "--device", "cpu"]
    assert main([*command, "--probabilities"]) == 1
    said = _assert_one_line_error(capsys, "ct.nrrd", "--probabilities", "leave out --probabilities")
    assert "check the voxel spacing" not in said
    assert list(tmp_path.iterdir()) == [source]
    assert main(command) == 0 and output.exists()


@pytest.mark.parametrize("probabilities", [False, True])
def test_a_plausible_ct_too_large_for_this_machine_is_not_blamed_on_its_header(model_dir, tmp_path, capsys,
                                                                                 monkeypatch, probabilities):
    """Spacing right, machine small: the line says to free memory or use a larger machine (and that
    --fast does not help), not to check a header that is fine."""
    from MaskSAMCore.inference import devices

    monkeypatch.setattr(devices, "available_host_bytes", lambda: 2 ** 10)   # a 1 KiB machine
    source = _write(tmp_path / "ct.nrrd", np.random.rand(10, 16, 16).astype(np.float32), spacing=(1.2, 1.2, 2.5))
    command = ["predict", str(model_dir), str(source), str(tmp_path / "labels.nrrd"), "--fast", "--device", "cpu"]
    assert main([*command, *(["--probabilities"] if probabilities else [])]) == 1
    said = _assert_one_line_error(capsys, "ct.nrrd: segmenting this 10 x 16 x 16-voxel image needs about ",
                                  "(0.0 GiB available)", "free memory or use a machine with more",
                                  "--fast does not help")
    assert "check the voxel spacing" not in said
    assert ("GiB without --probabilities)" in said) == probabilities
    assert list(tmp_path.iterdir()) == [source]


def test_bad_case_in_a_folder_is_found_before_any_prediction(model_dir, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write(inputs / "good_0000.nii.gz", np.random.rand(6, 16, 16).astype(np.float32) * 100)
    (inputs / "zz_broken_0000.nii.gz").write_bytes(b"not gzip at all")
    outputs = tmp_path / "out"
    assert main(["predict", str(model_dir), str(inputs), str(outputs), "--fast", "--device", "cpu"]) == 1
    said = _assert_one_line_error(capsys, "zz_broken_0000.nii.gz")
    assert "of 2 cases" not in said   # one bad case: its own message, as for a single file
    assert not outputs.exists() or not any(outputs.iterdir())

    # Every bad case of the folder is named in the same line, so all are fixed before the next run.
    (inputs / "mm_flat_0000.nii.gz").write_bytes(b"\x1f\x8b truncated")
    _write(inputs / "nn_2d_0000.nii.gz", np.random.rand(16, 16).astype(np.float32))
    assert main(["predict", str(model_dir), str(inputs), str(outputs), "--fast", "--device", "cpu"]) == 1
    said = _assert_one_line_error(capsys, "masksam: error: 3 of 4 cases cannot be segmented: (1) ",
                                  "mm_flat_0000.nii.gz", "nn_2d_0000.nii.gz", "zz_broken_0000.nii.gz")
    assert said.index("mm_flat") < said.index("(2)") < said.index("nn_2d") < said.index("(3)") < said.index("zz_broken")
    assert not outputs.exists() or not any(outputs.iterdir())


def test_an_unusable_case_in_a_folder_is_skipped_and_the_others_are_segmented(model_dir, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write(inputs / "a_flat_0000.nii.gz", np.full((6, 16, 16), -1000, np.int16))  # first, so read first
    _write(inputs / "b_good_0000.nii.gz", np.random.rand(6, 16, 16).astype(np.float32) * 100)
    outputs = tmp_path / "out"
    assert main(["predict", str(model_dir), str(inputs), str(outputs), "--fast", "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, "a_flat_0000.nii.gz", "constant")
    assert sorted(p.name for p in outputs.iterdir()) == ["b_good.nii.gz"]


def test_missing_channel_names_the_case(tmp_path, capsys):
    config = preset("tiny", num_classes=3, in_channels=2)
    model = write_random_model_folder(tmp_path / "m2", config, synthetic_plan(config))
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write(inputs / "pat7_0000.nii.gz", np.random.rand(6, 16, 16).astype(np.float32))
    assert main(["predict", str(model), str(inputs), str(tmp_path / "out"), "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, "pat7", "_0000", "needs 2")
    single = inputs / "pat7_0000.nii.gz"
    assert main(["predict", str(model), str(single), str(tmp_path / "x.nii.gz"), "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, "pat7_0000.nii.gz", "2 channels")


def _good_image(tmp_path):
    return _write(tmp_path / "ct.nii.gz", (np.random.rand(6, 16, 16) * 2000 - 1000).astype(np.float32))  # HU


def test_output_under_a_file_is_refused_before_any_prediction(model_dir, tmp_path, capsys):
    source = _good_image(tmp_path)
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    assert main(["predict", str(model_dir), str(source), str(blocker / "labels.nii.gz"), "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "not a folder"


def test_an_output_format_that_cannot_keep_the_grid_fails_before_any_prediction(model_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    from MaskSAMCore.inference.predictor import Predictor

    monkeypatch.setattr(Predictor, "predict_prepared", lambda *a, **k: pytest.fail("predicted anyway"))
    source = tmp_path / "oblique.nrrd"
    image = _image(np.random.rand(6, 16, 16).astype(np.float32) * 100, spacing=(0.8, 0.8, 2.5))
    image.SetOrigin((-40.0, 12.5, 300.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(image, str(source))
    assert main(["predict", str(model_dir), str(source), str(tmp_path / "labels.tif"), "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, "labels.tif", "cannot store the grid's", "choose .nrrd or .mha")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oblique.nrrd"]


def test_an_output_that_is_the_input_is_refused_and_the_scan_kept(model_dir, tmp_path, capsys):
    source = _good_image(tmp_path)
    before = source.read_bytes()
    assert main(["predict", str(model_dir), str(source), str(source), "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, "ct.nii.gz", "would overwrite an input file")
    assert source.read_bytes() == before


@pytest.mark.parametrize("ending, shown", [(".txt", ".txt"), ("", "''")])   # an empty one: not ". is not"
def test_an_unknown_output_ending_is_refused_as_given_before_any_prediction(model_dir, tmp_path, capsys,
                                                                             ending, shown):
    source = tmp_path / "scans"
    source.mkdir()
    _good_image(source)
    assert main(["predict", str(model_dir), str(source), str(tmp_path / "out"), "--output-ending", ending,
                 "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, f"--output-ending {shown} is not an image file ending")
    assert not (tmp_path / "out").exists()


def test_unknown_or_invalid_model_folder(tmp_path, capsys):
    source = _good_image(tmp_path)
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    assert main(["predict", str(empty), str(source), str(tmp_path / "l.nii.gz")]) == 1
    _assert_one_line_error(capsys, "not_a_model", "model.json")
    assert main(["predict", str(tmp_path / "nowhere"), str(source), str(tmp_path / "l.nii.gz")]) == 1
    _assert_one_line_error(capsys, "nowhere", "does not exist")
    (empty / "model.json").write_text("{ this is not json")
    assert main(["predict", str(empty), str(source), str(tmp_path / "l.nii.gz")]) == 1
    _assert_one_line_error(capsys, "model.json", "not valid JSON")
    (empty / "model.json").write_text(json.dumps({"format": "masksam-model", "format_version": 1}))
    assert main(["predict", str(empty), str(source), str(tmp_path / "l.nii.gz")]) == 1
    _assert_one_line_error(capsys, "model.json", "lacks")
    assert not (tmp_path / "l.nii.gz").exists()


def test_checkpoint_for_another_class_count(model_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "mismatch"
    shutil.copytree(model_dir, folder)
    other = build_masksam(preset("tiny", num_classes=5))
    save_checkpoint(folder / "checkpoint_final.pt", {"weights": other.state_dict(), "weights_scope": "all"})
    source = _good_image(tmp_path)
    assert main(["predict", str(folder), str(source), str(tmp_path / "l.nii.gz"), "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, "checkpoint_final.pt", "3 classes")
    assert not (tmp_path / "l.nii.gz").exists()
    torch.save({"weights": "x"}, folder / "checkpoint_final.pt")
    assert main(["predict", str(folder), str(source), str(tmp_path / "l.nii.gz"), "--device", "cpu"]) == 1
    _assert_one_line_error(capsys, "checkpoint_final.pt")


def test_upper_case_endings_give_lower_case_label_maps_and_an_upper_case_output_is_refused(model_dir, tmp_path,
                                                                                          capsys):
    """ITK reads NIfTI under .NII.GZ but writes it only under .nii.gz."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write(inputs / "case1.nii.gz", np.random.rand(6, 8, 8).astype(np.float32)).rename(inputs / "CASE1_0000.NII.GZ")
    _write(inputs / "case2_0000.nii.gz", np.random.rand(6, 8, 8).astype(np.float32))
    assert main(["predict", str(model_dir), str(inputs), str(tmp_path / "out"), "--fast", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["CASE1.nii.gz", "case2.nii.gz"]
    capsys.readouterr()
    output = tmp_path / "LABELS.NII.GZ"
    assert main(["predict", str(model_dir), str(inputs / "case2_0000.nii.gz"), str(output), "--fast"]) == 1
    _assert_one_line_error(capsys, "LABELS.NII.GZ", "name the output LABELS.nii.gz")
    assert not output.exists()


# qform offset x (268) and sform row x's offset (292); codes at 252 (qform) and 254 (sform);
# pixdim[1] at 80. The warning: None where ITK reads the sform, as nibabel and FSL do.
PLACEMENTS = {
    "sform moved, ITK reads it": ({292: ("<f", 50.0)}, None),
    "aligned sform, qform moved": ({254: ("<h", 2), 268: ("<f", 50.0)}, "qform and sform place the image up to "
                                   "50 mm apart; MaskSAM reads it as ITK and 3D Slicer do, by the qform"),
    "sform only, pixdim says 2 mm": ({252: ("<h", 0), 80: ("<f", 2.0)}, "its sform places the image up to 7 mm "
                                     "from where ITK and 3D Slicer, and so MaskSAM, read it"),
    "neither set": ({252: ("<h", 0), 254: ("<h", 0)}, "sets neither qform nor sform"),
}
_PLACEMENT_BYTES = [(76, 92), (123, 124), (252, 328)]   # pixdim[0..3], units, codes, quaternion, sform rows


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
@pytest.mark.parametrize("kind", list(PLACEMENTS))
def test_a_nifti_header_that_programs_read_differently_keeps_its_placements_in_the_label_map(
        model_dir, tmp_path, capsys, kind, ending):
    """The label map overlays the image in every program: ITK's (and Slicer's) reading is the
    same grid, and the header fields that nibabel or FSL read are the image's own. A warning
    says when sform-first programs read the image elsewhere than ITK."""
    patches, warning = PLACEMENTS[kind]
    hounsfield = (np.random.rand(6, 8, 8) * 2000 - 1000).astype(np.float32)   # a CT model's input
    source = _nifti_patched(tmp_path / "scan.nii", hounsfield, patches)
    output = tmp_path / f"labels{ending}"
    assert main(["predict", str(model_dir), str(source), str(output), "--fast", "--device", "cpu"]) == 0
    lines = capsys.readouterr().err.splitlines()
    warnings = [line for line in lines if "warning" in line.lower()]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith(f"masksam: warning: {source}: "), lines
        assert warning in warnings[0]
        assert warnings[0].endswith("; the label map gets the image's qform and sform as they are")
    assert read_geometry(output).grid_differences(read_geometry(source)) == []
    written = gzip.decompress(output.read_bytes()) if ending == ".nii.gz" else output.read_bytes()
    original = source.read_bytes()
    assert [written[a:b] for a, b in _PLACEMENT_BYTES] == [original[a:b] for a, b in _PLACEMENT_BYTES]


def test_placements_are_copied_value_by_value_from_a_big_endian_image(tmp_path):
    """ITK writes little-endian; a big-endian image's fields must arrive as values, not bytes."""
    from MaskSAMCore.data.nifti_transforms import _header, copy_placement

    little = _nifti_patched(tmp_path / "little.nii", np.random.rand(6, 8, 8).astype(np.float32), {292: ("<f", 50.0)})
    header = bytearray(little.read_bytes())
    struct.pack_into(">i", header, 0, 348)
    for offset, kind in ((76, "4f"), (252, "2h"), (256, "6f"), (280, "12f")):
        struct.pack_into(">" + kind, header, offset, *struct.unpack_from("<" + kind, little.read_bytes(), offset))
    big = _bytes(tmp_path / "big.nii", bytes(header))
    target = _write(tmp_path / "labels.nii.gz", np.zeros((6, 8, 8), np.uint8))
    copy_placement(big, target)
    (q_big, s_big, qform_big, sform_big), (q, s, qform, sform) = _header(big), _header(target)
    assert (q, s) == (q_big, s_big) and np.allclose(qform, qform_big) and np.allclose(sform, sform_big)
    assert sform[0, 3] == pytest.approx(qform[0, 3] + 50.0)


def test_a_label_map_in_another_format_says_it_keeps_one_placement(model_dir, tmp_path, capsys):
    source = _nifti_patched(tmp_path / "scan.nii", np.random.rand(6, 8, 8).astype(np.float32),
                            {254: ("<h", 2), 268: ("<f", 50.0)})
    output = tmp_path / "labels.nrrd"
    assert main(["predict", str(model_dir), str(source), str(output), "--fast", "--device", "cpu"]) == 0
    assert "; the label map stores that placement only" in capsys.readouterr().err
    assert read_geometry(output).grid_differences(read_geometry(source)) == []


def test_a_sam_checkpoint_the_model_does_not_use_is_said_to_be_ignored(model_dir, tmp_path, capsys):
    source = _good_image(tmp_path)
    sam = _bytes(tmp_path / "sam_vit_b_01ec64.pth", b"weights")
    assert main(["predict", str(model_dir), str(source), str(tmp_path / "labels.nrrd"), "--fast", "--device", "cpu",
                 "--sam-checkpoint", str(sam)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "--sam-checkpoint is not used" in warnings[0]
    assert "carries its whole network" in warnings[0]
