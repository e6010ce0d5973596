"""`masksam predict` on a folder of DICOM slices: the series' grid comes from the slice headers
(oblique, anisotropic, files named out of order), the labels land on it exactly as for the same
volume stored as NRRD, and series that are not one regular volume are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import SimpleITK as sitk

from MaskSAMCore.cli import main
from MaskSAMCore.data.dicom_headers import header_text, read_slices
from MaskSAMCore.data.dicom_series import find_series, read_series
from MaskSAMCore.data.image_io import ImageGeometry, read_label
from MaskSAMCore.errors import InputError
from MaskSAMCore.inference.cases import find_cases
from MaskSAMCore.inference.dicom_seg import seg_structures, write_dicom_seg
from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.config import preset
from dicom_support import Tags, oblique_volume, shuffled_names, write_enhanced, write_series

pytestmark = pytest.mark.usefixtures("dicom_locale_kept")

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = preset("tiny", num_classes=3)
    return write_random_model_folder(tmp_path_factory.mktemp("models") / "tiny", config,
                                     synthetic_plan(config, (3.0, 0.85, 0.85)))


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


def test_predict_on_a_dicom_folder_equals_predict_on_the_same_volume_as_nrrd(model_dir, tmp_path, capsys):
    image = oblique_volume()
    folder = write_series(tmp_path / "patient7_ct", image, names=shuffled_names(image.GetDepth()))
    nrrd = tmp_path / "same.nrrd"
    sitk.WriteImage(read_series(find_series(folder)), str(nrrd))
    out = tmp_path / "out"
    assert main(["predict", str(model_dir), str(folder), f"{out}/", "--fast", "--device", "cpu"]) == 0
    assert "DICOM series 3 'AX ABD'" in capsys.readouterr().err
    assert main(["predict", str(model_dir), str(nrrd), str(out / "from_nrrd.nrrd"), "--fast", "--device", "cpu"]) == 0
    labels, geometry = read_label(out / "patient7_ct.nii.gz")
    reference, reference_geometry = read_label(out / "from_nrrd.nrrd")
    expected = ImageGeometry.from_sitk(image)
    assert geometry.size == expected.size
    for field in ("spacing", "origin", "direction"):   # NIfTI keeps float32 precision
        assert np.allclose(getattr(geometry, field), getattr(expected, field), atol=1e-4), field
    assert reference_geometry.same_grid(expected)
    assert np.array_equal(labels, reference)


def test_several_series_are_listed_and_one_is_chosen_with_series(model_dir, tmp_path, capsys):
    folder = tmp_path / "study"
    write_series(folder, oblique_volume(), uid="1.2.3.1", number="3", description="AX 3mm")
    thin = oblique_volume(size=(20, 18, 12), spacing=(0.9, 0.8, 1.5))
    write_series(folder, thin, uid="1.2.3.2", number="5", description="AX 1.5mm",
                 names=[f"thin{k:03d}.dcm" for k in range(12)])
    out = tmp_path / "labels.nrrd"
    assert main(["predict", str(model_dir), str(folder), str(out), "--fast", "--device", "cpu"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("masksam: error:") and "2 DICOM image series" in error
    assert "3 'AX 3mm' (CT, 9 files)" in error and "5 'AX 1.5mm' (CT, 12 files)" in error and "--series" in error
    assert not out.exists()
    for choice in ("5", "1.2.3.2"):
        assert main(["predict", str(model_dir), str(folder), str(out), "--series", choice,
                     "--fast", "--device", "cpu"]) == 0
        assert read_label(out)[1].size == (20, 18, 12)
    assert main(["predict", str(model_dir), str(folder), str(out), "--series", "9", "--device", "cpu"]) == 1
    assert "no DICOM series with the number or UID 9" in capsys.readouterr().err


def _scout(k: int, tags: Tags) -> Optional[Tags]:
    """Two projections, frontal and lateral, as a CT scout (topogram) series holds them."""
    if k > 1:
        return None
    return {**tags, "0020|0037": "1\\0\\0\\0\\0\\-1" if k == 0 else "0\\1\\0\\0\\0\\-1"}


def test_a_scout_beside_the_scan_is_left_out_and_named_without_asking_for_series(model_dir, tmp_path, capsys):
    """A study exported whole: the scan is the only series forming a volume, so it is segmented
    without --series and the scout is named as left out. A second volume makes it the user's
    choice again; a folder with no volume says why for each series."""
    folder = tmp_path / "study"
    write_series(folder, oblique_volume(), uid="1.2.3.1", number="3", description="AX 3mm")
    write_series(folder, oblique_volume(), uid="1.2.3.9", number="1", description="Topogram",
                 names=[f"scout{k}.dcm" for k in range(9)], edit=_scout)
    series = find_series(folder)
    assert (series.number, len(series.files)) == ("3", 9)
    assert series.other_series == ("1 'Topogram' (CT, 2 files): scout1.dcm has another orientation from "
                                   "scout0.dcm; the series does not form one volume",)
    out = tmp_path / "labels.nrrd"
    assert main(["predict", str(model_dir), str(folder), str(out), "--fast", "--device", "cpu"]) == 0
    assert ("the only series of the folder forming a volume was chosen; left out: 1 'Topogram' (CT, 2 files)"
            in capsys.readouterr().err)
    assert read_label(out)[1].size == (20, 18, 9)

    write_series(folder, oblique_volume(size=(20, 18, 12), spacing=(0.9, 0.8, 1.5)), uid="1.2.3.2", number="5",
                 description="AX 1.5mm", names=[f"thin{k:03d}.dcm" for k in range(12)])
    assert main(["predict", str(model_dir), str(folder), str(tmp_path / "b.nrrd"), "--device", "cpu"]) == 1
    error = _one_line_error(capsys)
    assert "holds 3 DICOM image series" in error and "--series" in error and not (tmp_path / "b.nrrd").exists()

    scouts = tmp_path / "scouts"
    write_series(scouts, oblique_volume(), uid="1.2.3.9", number="1", description="Topogram", edit=_scout)
    write_series(scouts, oblique_volume(), uid="1.2.3.8", number="2", description="Dose", names=["dose.dcm"],
                 edit=lambda k, tags: tags if k == 0 else None)
    with pytest.raises(InputError, match=r"scouts: none of its 2 DICOM image series forms one volume: 1 'Topogram' "
                                         r"\(CT, 2 files\): IM0001.dcm has another orientation .*; 2 'Dose' \(CT, 1 file\): "
                                         r"has a single slice, a 2D image"):
        find_series(scouts)


def test_segmentations_reports_and_rt_objects_beside_a_series_are_left_out_and_named(model_dir, tmp_path, capsys):
    """A study export holds more than images: an earlier SEG (MaskSAM's own), structured reports,
    RT structure sets. None of them is a series to choose, none is called unreadable, and a
    folder holding only such objects is refused naming them."""
    import pydicom.data

    folder = write_series(tmp_path / "study", oblique_volume())
    labels = np.zeros((9, 18, 20), np.uint8)
    labels[2:5, 3:9, 4:12] = 1
    write_dicom_seg(labels, find_series(folder), seg_structures(["background", "liver"], None),
                    folder / "earlier_seg.dcm", "abdomen")
    for name in ("rtstruct.dcm", "reportsi.dcm"):
        shutil.copy(pydicom.data.get_testdata_file(name), folder / name)
    series = find_series(folder)
    assert (series.number, len(series.files), series.left_out) == ("3", 9, ())
    assert sorted((p.name, modality) for p, modality in series.not_images) == [
        ("earlier_seg.dcm", "SEG"), ("reportsi.dcm", "SR"), ("rtstruct.dcm", "RTSTRUCT")]
    out = tmp_path / "labels.nrrd"
    assert main(["predict", str(model_dir), str(folder), str(out), "--fast", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert ("3 file(s) in the folder are no images and were left out "
            "(SEG: earlier_seg.dcm; SR: reportsi.dcm; RTSTRUCT: rtstruct.dcm)") in err
    assert "cannot be read" not in err and read_label(out)[1].size == (20, 18, 9)

    only = tmp_path / "only"
    only.mkdir()
    for name in ("earlier_seg.dcm", "reportsi.dcm"):
        shutil.move(str(folder / name), str(only / name))
    assert main(["predict", str(model_dir), str(only), str(tmp_path / "none.nrrd"), "--device", "cpu"]) == 1
    assert _one_line_error(capsys).endswith(
        "only: its 2 DICOM file(s) hold no image to segment (SEG: earlier_seg.dcm; SR: reportsi.dcm)")
    assert not (tmp_path / "none.nrrd").exists()


def _shift_sideways(k: int, tags: Tags) -> Tags:
    x, y, z = (float(v) for v in tags["0020|0032"].split("\\"))
    return {**tags, "0020|0032": f"{x + 0.4 * k}\\{y}\\{z}"}     # a gantry tilt: each slice moves along x


def _rotate_one(k: int, tags: Tags) -> Tags:
    return {**tags, "0020|0037": "1\\0\\0\\0\\0\\-1"} if k == 4 else tags


def _same_position(k: int, tags: Tags) -> Tags:
    return {**tags, "0020|0032": "0\\0\\0"}


BAD_SERIES = {
    "missing slice": (lambda k, tags: None if k == 4 else tags, "slice spacing varies from 3 to 6 mm (missing slices?)"),
    "gantry tilt": (_shift_sideways, "gantry tilt of about"),
    "slices in two orientations": (_rotate_one, "IM0004.dcm has another orientation"),
    "echoes in one series": (_same_position, "9 of its 9 slices share a position"),
    "one slice": (lambda k, tags: tags if k == 0 else None, "single slice, a 2D image"),
}


@pytest.mark.parametrize("kind", list(BAD_SERIES))
def test_a_series_that_is_not_one_regular_volume_is_refused(model_dir, tmp_path, capsys, kind):
    edit, problem = BAD_SERIES[kind]
    folder = write_series(tmp_path / "ct", oblique_volume(), edit=edit)
    out = tmp_path / "out"
    assert main(["predict", str(model_dir), str(folder), f"{out}/", "--device", "cpu"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("masksam: error:"), lines
    assert "ct (DICOM series 3 'AX ABD'):" in lines[0]
    assert problem in lines[0], lines[0]
    assert not out.exists()


def test_dicom_inputs_given_the_wrong_way_get_a_hint(model_dir, tmp_path, capsys):
    study = tmp_path / "study"
    folder = write_series(study / "series3", oblique_volume())
    write_series(study / "scout", oblique_volume()[:, :, :1], uid="1.2.3.9", number="1")
    out = tmp_path / "out.nrrd"
    cases = {
        "a slice file": ([str(folder / "IM0000.dcm"), str(out)],
                         "it is a DICOM file: give the folder holding its series"),
        "a study folder with a scout": ([str(study), f"{tmp_path}/outs/"],
                                        "has a single slice, a 2D image; a 3D volume is needed; each subfolder of "
                                        f"{study} holding DICOM files is segmented as a case of its own: move this "
                                        "one out, or give one subfolder as INPUT"),
        "--series with an image file": ([str(_write_nrrd(tmp_path)), str(out), "--series", "3"],
                                        "--series is for a folder of DICOM files"),
    }
    for name, (arguments, problem) in cases.items():
        assert main(["predict", str(model_dir), *arguments, "--device", "cpu"]) == 1, name
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("masksam: error:") and problem in error, (name, error)
        assert not out.exists() and not (tmp_path / "outs").exists()


def test_a_cohort_of_dicom_folders_is_one_case_per_folder(model_dir, tmp_path, capsys):
    """A cohort exported one folder per patient (classic slices or an enhanced file each)."""
    cohort = tmp_path / "cohort"
    first, second = oblique_volume(), oblique_volume(size=(16, 20, 7), angle=-0.2)
    write_series(cohort / "patient1", first, names=shuffled_names(first.GetDepth()))
    write_enhanced(cohort / "patient2", second)
    (cohort / "notes").mkdir()
    (cohort / "notes" / "protocol.txt").write_text("not a scan")   # not a case
    out = tmp_path / "labels"
    assert main(["predict", str(model_dir), str(cohort), f"{out}/", "--fast", "--device", "cpu", "--series", "3"]) == 0
    assert "2 case(s)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["patient1.nii.gz", "patient2.nii.gz"]
    for name, image in (("patient1", first), ("patient2", second)):
        labels, geometry = read_label(out / f"{name}.nii.gz")
        assert geometry.size == image.GetSize()
        assert np.allclose(geometry.direction, image.GetDirection(), atol=1e-4)
        alone = tmp_path / f"{name}_alone.nii.gz"
        assert main(["predict", str(model_dir), str(cohort / name), str(alone), "--fast", "--device", "cpu"]) == 0
        assert np.array_equal(labels, read_label(alone)[0])
    assert main(["predict", str(model_dir), str(cohort), str(tmp_path / "segs"), "--output-ending", ".dcm",
                 "--fast", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == ["patient1.dcm", "patient2.dcm"]
    for output, problem in ((tmp_path / "one.nii.gz", "the output must be a folder too, not a file name"),
                            (cohort / "patient1", "would be written into a DICOM folder they segment")):
        assert main(["predict", str(model_dir), str(cohort), str(output), "--fast", "--device", "cpu"]) == 1
        assert problem in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "one.nii.gz").exists() and not list((cohort / "patient1").glob("*.nii.gz"))


def test_every_unusable_folder_of_a_cohort_is_named_in_one_run(model_dir, tmp_path, capsys):
    """A cohort's subfolders are all checked before the run stops, so the user moves every
    unusable one out at once instead of finding them one run at a time."""
    cohort = tmp_path / "cohort"
    write_series(cohort / "patient1", oblique_volume())
    write_series(cohort / "patient2", oblique_volume(), edit=lambda k, tags: None if k == 4 else tags)
    write_series(cohort / "patient3", oblique_volume())
    write_series(cohort / "scout", oblique_volume()[:, :, :1], uid="1.2.3.9", number="1")
    out = tmp_path / "out"
    assert main(["predict", str(model_dir), str(cohort), f"{out}/", "--fast", "--device", "cpu"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"masksam: error: 2 of 4 DICOM subfolders of {cohort} cannot be "
                                                   f"segmented: (1) {cohort / 'patient2'} (DICOM series 3"), lines
    assert "the slice spacing varies" in lines[0] and f"; (2) {cohort / 'scout'} (DICOM series 1" in lines[0]
    assert lines[0].endswith("move these out, or give one subfolder as INPUT")
    assert not out.exists()


def _write_nrrd(tmp_path: Path) -> Path:
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(oblique_volume(), str(path))
    return path


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


def _one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("masksam: error:"), lines
    return lines[0]


def _shorten_pixel_data(path: Path, keep: int) -> None:
    """Rewrite a GDCM-written (implicit VR little endian) slice with only `keep` bytes of pixel
    data and a length field that agrees: a damaged file GDCM reads without complaint."""
    data = path.read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00")   # (7FE0,0010) Pixel Data, then a 4-byte length
    assert at > 0
    path.write_bytes(data[:at + 4] + keep.to_bytes(4, "little") + data[at + 8:at + 8 + keep])


def test_damaged_and_copied_slices_are_named(model_dir, tmp_path, capsys):
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
        cut: "the slice spacing varies from 3 to 6 mm (missing slices?); 1 file(s) of the folder cannot be "
             "read (IM0004.dcm)",
        short: "bytes) than its pixels (18432 bytes): a damaged file",
        copied: "IM0003.dcm and IM0003 (1).dcm are the same image",
        echoes: "18 of its 18 slices share a position",
    }
    for folder, problem in expected.items():
        assert main(["predict", str(model_dir), str(folder), f"{out}/", "--device", "cpu"]) == 1
        assert problem in _one_line_error(capsys), folder.name
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


def test_a_cd_layout_points_to_its_series_and_the_output_stays_out_of_the_series(model_dir, tmp_path, capsys):
    cd = tmp_path / "cd"
    series = write_series(cd / "DICOM" / "ST000000" / "SE000000", oblique_volume())
    (cd / "DICOMDIR").write_bytes((series / "IM0000.dcm").read_bytes())   # an index: left out by name
    assert main(["predict", str(model_dir), str(cd), str(tmp_path / "labels.nii.gz"), "--device", "cpu"]) == 1
    assert "DICOM series lie in its subfolder(s) DICOM/ST000000/SE000000: give one" in _one_line_error(capsys)
    assert main(["predict", str(model_dir), str(series), str(series / "labels.nii.gz"), "--device", "cpu"]) == 1
    assert "would be written into the DICOM folder it segments" in _one_line_error(capsys)
    assert not (series / "labels.nii.gz").exists() and not (tmp_path / "labels.nii.gz").exists()


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
