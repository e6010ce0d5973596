"""`masksam predict` on a folder of DICOM slices: the series' grid comes from the slice headers
(oblique, anisotropic, files named out of order), the labels land on it exactly as for the same
volume stored as NRRD, and series that are not one regular volume are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from MaskSAMCore.cli import main
from MaskSAMCore.data.dicom_headers import header_text, read_slices
from MaskSAMCore.data.dicom_series import find_series, read_series
from MaskSAMCore.data.image_io import ImageGeometry, read_label
from MaskSAMCore.errors import InputError
from MaskSAMCore.inference.cases import find_cases
from dicom_support import Tags, one_line_error, oblique_volume, shuffled_names, tilted, write_series

pytestmark = pytest.mark.usefixtures("dicom_locale_kept")


def test_series_reads_back_as_the_volume_it_was_written_from(tmp_path):
    image = oblique_volume()
    folder = write_series(tmp_path / "ct", image, names=shuffled_names(image.GetDepth()))
    series = find_series(folder)
    read = read_series(series)
    assert read.GetSize() == image.GetSize()
    assert np.allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-5)
    assert np.allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-5)
    assert np.allclose(read.GetDirection(), image.GetDirection(), atol=1e-7)
    # HU survive the rescale intercept the files carry; slices are in position order, not name order
    assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image).astype(np.float32))


def test_slices_stored_from_head_to_feet_give_the_same_grid(tmp_path):
    image = oblique_volume()
    flipped = sitk.Flip(image, (False, False, True))   # the same voxels in the world, z reversed
    series = find_series(write_series(tmp_path / "ct", flipped))
    # DICOM's slice normal is row x column, so the grid runs along it whatever the file order
    assert np.allclose(series.origin, image.GetOrigin(), atol=1e-5)
    assert np.allclose(series.direction, image.GetDirection(), atol=1e-7)


def test_predict_on_a_dicom_folder_equals_predict_on_the_same_volume_as_nrrd(dicom_model_dir, tmp_path, capsys):
    image = oblique_volume()
    folder = write_series(tmp_path / "patient7_ct", image, names=shuffled_names(image.GetDepth()))
    nrrd = tmp_path / "same.nrrd"
    sitk.WriteImage(read_series(find_series(folder)), str(nrrd))
    out = tmp_path / "out"
    assert main(["predict", str(dicom_model_dir), str(folder), f"{out}/", "--fast", "--device", "cpu"]) == 0
    assert "DICOM series 3 'AX ABD'" in capsys.readouterr().err
    assert main(["predict", str(dicom_model_dir), str(nrrd), str(out / "from_nrrd.nrrd"), "--fast",
                 "--device", "cpu"]) == 0
    labels, geometry = read_label(out / "patient7_ct.nii.gz")
    reference, reference_geometry = read_label(out / "from_nrrd.nrrd")
    expected = ImageGeometry.from_sitk(image)
    assert geometry.size == expected.size
    for field in ("spacing", "origin", "direction"):   # NIfTI keeps float32 precision
        assert np.allclose(getattr(geometry, field), getattr(expected, field), atol=1e-4), field
    assert reference_geometry.same_grid(expected)
    assert np.array_equal(labels, reference)


def _shift_sideways(k: int, tags: Tags) -> Tags:
    """Half the stack moved 0.4 mm along the rows: sideways, but not evenly (no tilt)."""
    position = np.array([float(v) for v in tags["0020|0032"].split("\\")])
    row = np.array([float(v) for v in tags["0020|0037"].split("\\")[:3]])
    moved = position + (0.4 * row if k >= 5 else 0.0)
    return {**tags, "0020|0032": "\\".join(f"{v:.6f}" for v in moved)}


def _rotate_one(k: int, tags: Tags) -> Tags:
    return {**tags, "0020|0037": "1\\0\\0\\0\\0\\-1"} if k == 4 else tags


def _same_position(k: int, tags: Tags) -> Tags:
    return {**tags, "0020|0032": "0\\0\\0"}


BAD_SERIES = {
    "missing slice": (lambda k, tags: None if k == 4 else tags,
                      "slice spacing varies from 3 to 6 mm, widest (6 mm) between IM0003.dcm and IM0005.dcm (at "),
    "slices shifted sideways unevenly": (_shift_sideways, "slices are shifted sideways unevenly (up to 0.204 mm off"),
    "slices in two orientations": (_rotate_one, "IM0004.dcm has another orientation"),
    "echoes in one series": (_same_position, "9 of its 9 slices share a position"),
    "one slice": (lambda k, tags: tags if k == 0 else None, "single slice, a 2D image"),
}


@pytest.mark.parametrize("kind", list(BAD_SERIES))
def test_a_series_that_is_not_one_regular_volume_is_refused(dicom_model_dir, tmp_path, capsys, kind):
    edit, problem = BAD_SERIES[kind]
    folder = write_series(tmp_path / "ct", oblique_volume(), edit=edit)
    out = tmp_path / "out"
    assert main(["predict", str(dicom_model_dir), str(folder), f"{out}/", "--device", "cpu"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("masksam: error:"), lines
    assert "ct (DICOM series 3 'AX ABD'):" in lines[0]
    assert problem in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_a_held_out_phantom_exported_as_dicom_is_segmented_as_its_nifti_file(trained_phantom_model, tmp_path):
    """The phantom-trained model (conftest) on a held-out phantom given as DICOM slices."""
    dataset, model = trained_phantom_model.dataset, trained_phantom_model.model_dir
    scan = sorted((dataset / "imagesTs").iterdir())[0]
    image = sitk.ReadImage(str(scan))
    assert np.linalg.det(np.reshape(image.GetDirection(), (3, 3))) > 0   # DICOM grids are right-handed
    folder = write_series(tmp_path / "phantom_dicom", image, names=shuffled_names(image.GetDepth()))
    out = tmp_path / "out"
    for source, name in ((folder, "from_dicom.nii.gz"), (scan, "from_nifti.nii.gz")):
        assert main(["predict", str(model), str(source), str(out / name), "--fast", "--device", "cpu"]) == 0
    from_dicom, geometry = read_label(out / "from_dicom.nii.gz")
    from_nifti, nifti_geometry = read_label(out / "from_nifti.nii.gz")
    assert geometry.same_grid(nifti_geometry)
    assert np.mean(from_dicom == from_nifti) > 0.999
    report = tmp_path / "report.json"
    truth = dataset / "labelsTs" / scan.name.replace("_0000", "")
    assert main(["evaluate", str(out / "from_dicom.nii.gz"), str(truth), "--dataset-json",
                 str(dataset / "dataset.json"), "--output", str(report)]) == 0
    assert json.loads(report.read_text())["mean_dice"] >= 0.6


def test_a_multi_channel_model_is_not_given_a_dicom_series(tmp_path):
    folder = write_series(tmp_path / "t2", oblique_volume())
    with pytest.raises(InputError, match="needs 2 channels and a DICOM series is one channel"):
        find_cases(folder, tmp_path / "out.nrrd", num_channels=2)
    assert find_cases(folder, tmp_path / "out.nrrd", num_channels=1)[0].input_files == \
        [folder / f"IM{k:04d}.dcm" for k in range(9)]


def _shorten_pixel_data(path: Path, keep: int) -> None:
    """Rewrite a GDCM-written (implicit VR little endian) slice with only `keep` bytes of pixel
    data and a length field that agrees: a damaged file GDCM reads without complaint."""
    data = path.read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00")   # (7FE0,0010) Pixel Data, then a 4-byte length
    assert at > 0
    path.write_bytes(data[:at + 4] + keep.to_bytes(4, "little") + data[at + 8:at + 8 + keep])


def test_damaged_and_copied_slices_are_named(dicom_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cut = write_series(tmp_path / "cut", oblique_volume())
    (cut / "IM0004.dcm").write_bytes((cut / "IM0004.dcm").read_bytes()[:-500])   # an interrupted copy
    short = write_series(tmp_path / "short", oblique_volume(size=(96, 96, 9)))   # 18 KB of pixels per slice
    _shorten_pixel_data(short / "IM0004.dcm", keep=5000)
    copied = write_series(tmp_path / "copied", oblique_volume())
    (copied / "IM0003 (1).dcm").write_bytes((copied / "IM0003.dcm").read_bytes())
    echoes = write_series(tmp_path / "echoes", oblique_volume())
    write_series(echoes, oblique_volume(), names=[f"echo2_{k}.dcm" for k in range(9)],
                 edit=lambda k, tags: {**tags, "0008|0018": f"1.2.826.0.1.3680043.2.1125.8.{k}"})
    expected = {
        cut: "(DICOM series 3 'AX ABD'): IM0004.dcm: a damaged slice of this series",
        short: "bytes) than its pixels (18432 bytes): a damaged file",
        copied: "IM0003.dcm and IM0003 (1).dcm are the same image",
        echoes: "18 of its 18 slices share a position",
    }
    for folder, problem in expected.items():
        assert main(["predict", str(dicom_model_dir), str(folder), f"{out}/", "--device", "cpu"]) == 1
        assert problem in one_line_error(capsys), folder.name
        assert not out.exists()


def test_a_slice_without_pixel_spacing_is_refused(tmp_path):
    folder = write_series(tmp_path / "ct", oblique_volume())
    for path in folder.iterdir():   # (0028,0030) Pixel Spacing becomes (0028,0031): GDCM assumes 1 mm
        path.write_bytes(path.read_bytes().replace(b"\x28\x00\x30\x00", b"\x28\x00\x31\x00", 1))
    assert read_slices(folder / "IM0000.dcm")[0].problem.startswith("has no Pixel Spacing")
    with pytest.raises(InputError, match="IM0000.dcm has no Pixel Spacing"):
        find_series(folder)


def test_latin1_descriptions_read_as_written():
    latin1 = "Thorax \u00c4\u00d6".encode("latin-1").decode("utf-8", "surrogateescape")
    assert header_text(latin1) == "Thorax \u00c4\u00d6"
    assert header_text("Thorax \u00c4\u00d6 ") == "Thorax \u00c4\u00d6"


def test_positions_rounded_within_the_tolerance_read_without_itk_warnings(tmp_path, capfd):
    jitter = np.random.default_rng(1).uniform(-0.004, 0.004, 9)

    def rounded(k: int, tags: Tags) -> Tags:
        x, y, z = (float(v) for v in tags["0020|0032"].split("\\"))
        return {**tags, "0020|0032": f"{x}\\{y}\\{z + jitter[k]}"}

    series = find_series(write_series(tmp_path / "ct", oblique_volume(angle=0.0), edit=rounded))
    capfd.readouterr()
    read_series(series)
    assert capfd.readouterr().err == ""


def test_files_without_preamble_or_ending_are_read(tmp_path):
    """Older exports: no 128-byte preamble, no file meta information, names 1, 2, ..."""
    image = oblique_volume()
    written = write_series(tmp_path / "written", image)
    bare = tmp_path / "bare"
    bare.mkdir()
    for k, path in enumerate(sorted(written.iterdir())):
        data = path.read_bytes()
        assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"   # (0002,0000) group length
        meta_end = 144 + int.from_bytes(data[140:144], "little")
        (bare / str(k + 1)).write_bytes(data[meta_end:])   # GDCM writes implicit VR little endian
    read = read_series(find_series(bare))
    assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image).astype(np.float32))
    assert np.allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-5)


def test_a_tilted_ct_is_segmented_on_its_own_sheared_grid(dicom_model_dir, tmp_path, capsys):
    """A gantry tilt (15 degrees) is kept as a sheared grid: the label map places every slice's
    labels at that slice's position, as NRRD by default (NIfTI cannot store a shear: asked for,
    it is refused before any work), or as a SEG whose frames lie on the source slices."""
    from dicom_support import decode_seg

    image = oblique_volume()
    folder = write_series(tmp_path / "ct", image, names=shuffled_names(image.GetDepth()), edit=tilted(image, 15.0))
    series = find_series(folder)
    out = tmp_path / "out"
    assert main(["predict", str(dicom_model_dir), str(folder), f"{out}/", "--fast", "--device", "cpu"]) == 0
    assert "gantry tilt of 15.0 degrees: segmented on its own sheared grid" in capsys.readouterr().err
    written = sitk.ReadImage(str(out / "ct.nrrd"))
    positions = [np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k))) + k * image.GetSpacing()[2] *
                 np.tan(np.radians(15.0)) * np.reshape(image.GetDirection(), (3, 3))[:, 1] for k in range(9)]
    for k, position in enumerate(positions):
        assert np.allclose(written.TransformIndexToPhysicalPoint((0, 0, k)), position, atol=1e-4), k
    assert written.TransformIndexToPhysicalPoint((19, 17, 8)) == pytest.approx(
        np.add(positions[8], np.reshape(image.GetDirection(), (3, 3))[:, :2] @ (19 * 0.9, 17 * 0.8)), abs=1e-4)
    # The same voxels on the same sheared grid, given as an NRRD file: the same labels.
    sitk.WriteImage(read_series(series), str(tmp_path / "same.nrrd"))
    assert main(["predict", str(dicom_model_dir), str(tmp_path / "same.nrrd"), str(out / "same.nrrd"), "--fast",
                 "--device", "cpu"]) == 0
    labels = read_label(out / "ct.nrrd")[0]
    assert np.array_equal(labels, read_label(out / "same.nrrd")[0])
    capsys.readouterr()

    assert main(["predict", str(dicom_model_dir), str(folder), str(out / "ct.nii.gz"), "--device", "cpu"]) == 1
    assert one_line_error(capsys).endswith(
        "ct.nii.gz: this format cannot store the sheared grid of "
        f"{folder} (DICOM series 3 'AX ABD') (gantry tilt of 15.0 degrees); write .nrrd, .mha or a DICOM SEG (.dcm)")
    assert not (out / "ct.nii.gz").exists()

    assert main(["predict", str(dicom_model_dir), str(folder), str(out / "ct.dcm"), "--fast", "--device", "cpu"]) == 0
    assert labels.any()   # frames to place
    masks = decode_seg(out / "ct.dcm", series)   # every frame on its source slice's position
    for number, mask in masks.items():
        assert np.array_equal(mask, labels == number), number
    measures = pydicom.dcmread(str(out / "ct.dcm")).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(3.0, abs=1e-4)   # between the planes
