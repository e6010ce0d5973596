"""Which series of a folder is segmented, and which folders of a cohort: a study exported whole
(scouts, earlier SEGs, reports and RT objects beside the scan, localizers inside its series)
needs no --series, several volumes do; a cohort is one case per subfolder, every unusable one
named at once; inputs given the wrong way (a slice file, a CD's top folder) get a hint."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from MaskSAMCore.cli import main
from MaskSAMCore.data.dicom_series import find_series
from MaskSAMCore.data.image_io import read_label
from MaskSAMCore.errors import InputError
from MaskSAMCore.inference.cases import find_cases
from MaskSAMCore.inference.dicom_seg import seg_structures, write_dicom_seg
from dicom_support import Tags, one_line_error, oblique_volume, shuffled_names, write_enhanced, write_series

pytestmark = pytest.mark.usefixtures("dicom_locale_kept")


def test_several_series_are_listed_and_one_is_chosen_with_series(dicom_model_dir, tmp_path, capsys):
    folder = tmp_path / "study"
    write_series(folder, oblique_volume(), uid="1.2.3.1", number="3", description="AX 3mm")
    thin = oblique_volume(size=(20, 18, 12), spacing=(0.9, 0.8, 1.5))
    write_series(folder, thin, uid="1.2.3.2", number="5", description="AX 1.5mm",
                 names=[f"thin{k:03d}.dcm" for k in range(12)])
    out = tmp_path / "labels.nrrd"
    assert main(["predict", str(dicom_model_dir), str(folder), str(out), "--fast", "--device", "cpu"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("masksam: error:") and "2 DICOM image series" in error
    assert "3 'AX 3mm' (CT, 9 files)" in error and "5 'AX 1.5mm' (CT, 12 files)" in error and "--series" in error
    assert not out.exists()
    for choice in ("5", "1.2.3.2"):
        assert main(["predict", str(dicom_model_dir), str(folder), str(out), "--series", choice,
                     "--fast", "--device", "cpu"]) == 0
        assert read_label(out)[1].size == (20, 18, 12)
    assert main(["predict", str(dicom_model_dir), str(folder), str(out), "--series", "9", "--device", "cpu"]) == 1
    assert "no DICOM series with the number or UID 9" in capsys.readouterr().err


def _scout(k: int, tags: Tags) -> Optional[Tags]:
    """Two projections, frontal and lateral, as a CT scout (topogram) series holds them."""
    if k > 1:
        return None
    return {**tags, "0020|0037": "1\\0\\0\\0\\0\\-1" if k == 0 else "0\\1\\0\\0\\0\\-1"}


def test_a_scout_beside_the_scan_is_left_out_and_named_without_asking_for_series(dicom_model_dir, tmp_path, capsys):
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
    assert main(["predict", str(dicom_model_dir), str(folder), str(out), "--fast", "--device", "cpu"]) == 0
    assert ("the only series of the folder forming a volume was chosen; left out: 1 'Topogram' (CT, 2 files)"
            in capsys.readouterr().err)
    assert read_label(out)[1].size == (20, 18, 9)

    write_series(folder, oblique_volume(size=(20, 18, 12), spacing=(0.9, 0.8, 1.5)), uid="1.2.3.2", number="5",
                 description="AX 1.5mm", names=[f"thin{k:03d}.dcm" for k in range(12)])
    assert main(["predict", str(dicom_model_dir), str(folder), str(tmp_path / "b.nrrd"), "--device", "cpu"]) == 1
    error = one_line_error(capsys)
    assert "holds 3 DICOM image series" in error and "--series" in error and not (tmp_path / "b.nrrd").exists()

    scouts = tmp_path / "scouts"
    write_series(scouts, oblique_volume(), uid="1.2.3.9", number="1", description="Topogram", edit=_scout)
    write_series(scouts, oblique_volume(), uid="1.2.3.8", number="2", description="Dose", names=["dose.dcm"],
                 edit=lambda k, tags: tags if k == 0 else None)
    with pytest.raises(InputError, match=r"scouts: none of its 2 DICOM image series forms one volume: 1 'Topogram' "
                                         r"\(CT, 2 files\): IM0001.dcm has another orientation .*; 2 'Dose' \(CT, 1 file\): "
                                         r"has a single slice, a 2D image"):
        find_series(scouts)


def test_segmentations_reports_and_rt_objects_beside_a_series_are_left_out_and_named(dicom_model_dir, tmp_path, capsys):
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
    assert main(["predict", str(dicom_model_dir), str(folder), str(out), "--fast", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert ("3 file(s) in the folder are no images and were left out "
            "(SEG: earlier_seg.dcm; SR: reportsi.dcm; RTSTRUCT: rtstruct.dcm)") in err
    assert "cannot be read" not in err and read_label(out)[1].size == (20, 18, 9)

    only = tmp_path / "only"
    only.mkdir()
    for name in ("earlier_seg.dcm", "reportsi.dcm"):
        shutil.move(str(folder / name), str(only / name))
    assert main(["predict", str(dicom_model_dir), str(only), str(tmp_path / "none.nrrd"), "--device", "cpu"]) == 1
    assert one_line_error(capsys).endswith(
        "only: its 2 DICOM file(s) hold no image to segment (SEG: earlier_seg.dcm; SR: reportsi.dcm)")
    assert not (tmp_path / "none.nrrd").exists()


def test_dicom_inputs_given_the_wrong_way_get_a_hint(dicom_model_dir, tmp_path, capsys):
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
        assert main(["predict", str(dicom_model_dir), *arguments, "--device", "cpu"]) == 1, name
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("masksam: error:") and problem in error, (name, error)
        assert not out.exists() and not (tmp_path / "outs").exists()


def test_a_folder_without_images_says_dicom_was_looked_for_and_a_lone_dicomdir_where_its_files_are(tmp_path):
    from pydicom.fileset import FileSet

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no image files and no DICOM files found in it \(known image "
                                         r"endings: .*; DICOM: a folder of a series' slices\)$"):
        find_cases(tmp_path / "empty", tmp_path / "out", num_channels=1)
    index = FileSet()
    for path in write_series(tmp_path / "series", oblique_volume()).iterdir():
        dataset = pydicom.dcmread(str(path))
        dataset.PatientID, dataset.StudyID = "P1", "S1"   # a DICOMDIR's patient and study records need them
        index.add(dataset)
    index.write(str(tmp_path / "cd"))
    for path in (tmp_path / "cd").iterdir():   # only the index copied from the CD
        if path.is_dir():
            shutil.rmtree(path)
    with pytest.raises(InputError, match=r"cd: no image files and no DICOM files found in it .*; its DICOMDIR is the "
                                         r"index of a CD or export, whose image files lie elsewhere \(it names "
                                         r"PT000000/ST000000/SE000000/IM000000, \.\.\.\): copy them along"):
        find_cases(tmp_path / "cd", tmp_path / "out", num_channels=1)


def test_a_cohort_of_dicom_folders_is_one_case_per_folder(dicom_model_dir, tmp_path, capsys):
    """A cohort exported one folder per patient (classic slices or an enhanced file each)."""
    cohort = tmp_path / "cohort"
    first, second = oblique_volume(), oblique_volume(size=(16, 20, 7), angle=-0.2)
    write_series(cohort / "patient1", first, names=shuffled_names(first.GetDepth()))
    write_enhanced(cohort / "patient2", second)
    (cohort / "notes").mkdir()
    (cohort / "notes" / "protocol.txt").write_text("not a scan")   # not a case
    out = tmp_path / "labels"
    assert main(["predict", str(dicom_model_dir), str(cohort), f"{out}/", "--fast", "--device", "cpu",
                 "--series", "3"]) == 0
    assert "2 case(s)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["patient1.nii.gz", "patient2.nii.gz"]
    for name, image in (("patient1", first), ("patient2", second)):
        labels, geometry = read_label(out / f"{name}.nii.gz")
        assert geometry.size == image.GetSize()
        assert np.allclose(geometry.direction, image.GetDirection(), atol=1e-4)
        alone = tmp_path / f"{name}_alone.nii.gz"
        assert main(["predict", str(dicom_model_dir), str(cohort / name), str(alone), "--fast", "--device", "cpu"]) == 0
        assert np.array_equal(labels, read_label(alone)[0])
    assert main(["predict", str(dicom_model_dir), str(cohort), str(tmp_path / "segs"), "--output-ending", ".dcm",
                 "--fast", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == ["patient1.dcm", "patient2.dcm"]
    for output, problem in ((tmp_path / "one.nii.gz", "the output must be a folder too, not a file name"),
                            (cohort / "patient1", "would be written into a DICOM folder they segment")):
        assert main(["predict", str(dicom_model_dir), str(cohort), str(output), "--fast", "--device", "cpu"]) == 1
        assert problem in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "one.nii.gz").exists() and not list((cohort / "patient1").glob("*.nii.gz"))


def test_every_unusable_folder_of_a_cohort_is_named_in_one_run(dicom_model_dir, tmp_path, capsys):
    """A cohort's subfolders are all checked before the run stops, so the user moves every
    unusable one out at once instead of finding them one run at a time."""
    cohort = tmp_path / "cohort"
    write_series(cohort / "patient1", oblique_volume())
    write_series(cohort / "patient2", oblique_volume(), edit=lambda k, tags: None if k == 4 else tags)
    write_series(cohort / "patient3", oblique_volume())
    write_series(cohort / "scout", oblique_volume()[:, :, :1], uid="1.2.3.9", number="1")
    out = tmp_path / "out"
    assert main(["predict", str(dicom_model_dir), str(cohort), f"{out}/", "--fast", "--device", "cpu"]) == 1
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


def test_a_cd_layout_points_to_its_series_and_the_output_stays_out_of_the_series(dicom_model_dir, tmp_path, capsys):
    cd = tmp_path / "cd"
    series = write_series(cd / "DICOM" / "ST000000" / "SE000000", oblique_volume())
    (cd / "DICOMDIR").write_bytes((series / "IM0000.dcm").read_bytes())   # an index: left out by name
    assert main(["predict", str(dicom_model_dir), str(cd), str(tmp_path / "labels.nii.gz"), "--device", "cpu"]) == 1
    assert ("DICOM series lie in its subfolder(s) DICOM/ST000000/SE000000: give one of them as the input, or add "
            "--all-series to segment every series below it") in one_line_error(capsys)
    assert main(["predict", str(dicom_model_dir), str(cd), str(tmp_path / "all"), "--all-series", "--fast",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "all" / "DICOM" / "ST000000" / "SE000000" / "series_3.nii.gz").is_file()
    capsys.readouterr()
    assert main(["predict", str(dicom_model_dir), str(series), str(series / "labels.nii.gz"), "--device", "cpu"]) == 1
    assert "would be written into the DICOM folder it segments" in one_line_error(capsys)
    assert not (series / "labels.nii.gz").exists() and not (tmp_path / "labels.nii.gz").exists()


def _localizers(count: int):
    """An edit keeping `count` images (at most 4), each in an orientation of its own, as scanners
    that keep their localizers in the scan's series write them."""
    orientations = ["1\\0\\0\\0\\0\\-1", "0\\1\\0\\0\\0\\-1", "1\\0\\0\\0\\1\\0", "0\\1\\0\\1\\0\\0"]

    def edit(k: int, tags: Tags) -> Optional[Tags]:
        return {**tags, "0020|0037": orientations[k], "0020|0013": str(100 + k)} if k < count else None
    return edit


def test_localizers_kept_in_the_scans_own_series_are_left_out_and_named(dicom_model_dir, tmp_path, capsys):
    """Up to three images of the series in other orientations, beside a stack at least twice as
    large, are localizers: left out and named, and the stack is segmented as without them. A
    fourth makes the series one that does not form a volume again."""
    image = oblique_volume()
    plain = write_series(tmp_path / "plain", image)
    folder = write_series(tmp_path / "with_localizers", image)
    write_series(folder, image, names=["loc0.dcm", "loc1.dcm", "loc2.dcm"], edit=_localizers(3))
    series = find_series(folder)
    assert (len(series.files), sorted(series.localizers)) == (9, ["loc0.dcm", "loc1.dcm", "loc2.dcm"])
    alone = find_series(plain)
    assert (series.size, series.origin, series.direction) == (alone.size, alone.origin, alone.direction)
    out = tmp_path / "out"
    assert main(["predict", str(dicom_model_dir), str(folder), str(out / "localizers.nrrd"), "--fast",
                 "--device", "cpu"]) == 0
    assert ("3 image(s) of the series lie in another orientation (localizers) and were left out: loc"
            in capsys.readouterr().err)
    assert main(["predict", str(dicom_model_dir), str(plain), str(out / "plain.nrrd"), "--fast",
                 "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read_label(out / "localizers.nrrd")[0], read_label(out / "plain.nrrd")[0])

    write_series(folder, image, names=["loc0.dcm", "loc1.dcm", "loc2.dcm", "loc3.dcm"], edit=_localizers(4))
    with pytest.raises(InputError, match="another orientation from IM0000.dcm; the series does not form one volume"):
        find_series(folder)


def test_all_series_segments_every_volume_of_an_export_and_names_the_rest(dicom_model_dir, tmp_path, capsys):
    """--all-series on a PACS export: one patient exported as study/series folders (the scan and
    its scout), another as one flat study folder (two volumes beside a dose report): every volume
    is segmented into OUTPUT/<its folder>/series_<number>, the scout is named, not refused."""
    import pydicom.data

    export = tmp_path / "export"
    scan, thin = oblique_volume(), oblique_volume(size=(20, 18, 12), spacing=(0.9, 0.8, 1.5))
    write_series(export / "PAT1" / "ST1" / "SE3", scan, uid="1.2.3.1", number="3")
    write_series(export / "PAT1" / "ST1" / "SE1", scan, uid="1.2.3.9", number="1", description="Topogram",
                 edit=_scout)
    write_series(export / "PAT2", scan, uid="1.2.4.1", number="4", names=[f"a{k}.dcm" for k in range(9)])
    write_series(export / "PAT2", thin, uid="1.2.4.2", number="5", names=[f"b{k}.dcm" for k in range(12)])
    shutil.copy(pydicom.data.get_testdata_file("reportsi.dcm"), export / "PAT2" / "dose_report.dcm")
    out = tmp_path / "labels"
    assert main(["predict", str(dicom_model_dir), str(export), f"{out}/", "--all-series", "--fast",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "3 case(s)" in err
    assert ("1 series were left out: PAT1/ST1/SE1: 1 'Topogram' (CT, 2 files): IM0001.dcm has "
            "another orientation") in err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    assert written == ["PAT1/ST1/SE3/series_3.nii.gz", "PAT2/series_4.nii.gz", "PAT2/series_5.nii.gz"]
    assert read_label(out / "PAT2" / "series_5.nii.gz")[1].size == (20, 18, 12)
    alone = tmp_path / "alone.nii.gz"
    assert main(["predict", str(dicom_model_dir), str(export / "PAT1" / "ST1" / "SE3"), str(alone), "--fast",
                 "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read_label(out / "PAT1" / "ST1" / "SE3" / "series_3.nii.gz")[0],
                                  read_label(alone)[0])
    capsys.readouterr()

    for arguments, problem in (
            ([str(export), f"{tmp_path}/other/", "--all-series", "--series", "3"],
             "--all-series segments every series and --series picks one; give one of them"),
            ([str(export / "PAT1" / "ST1" / "SE1"), f"{tmp_path}/other/", "--all-series"],
             "SE1: no DICOM series forming a volume in it or its subfolders: .: 1 'Topogram'"),
            ([str(export), str(tmp_path / "one.nii.gz"), "--all-series"], "the output must be a folder too")):
        assert main(["predict", str(dicom_model_dir), *arguments, "--device", "cpu"]) == 1
        assert problem in one_line_error(capsys), arguments
    assert not (tmp_path / "other").exists() and not (tmp_path / "one.nii.gz").exists()


def test_a_series_of_another_modality_is_left_out_of_an_export_and_warned_about_when_chosen(
        dicom_model_dir, tmp_path, capsys):
    """A PET/CT study exported whole: the CT model segments the CT and names the PET as left out
    (another modality); given the PET series itself, it segments it but says so."""
    export = tmp_path / "petct"
    write_series(export / "CT", oblique_volume(), uid="1.2.5.1", number="2", description="CT WB")
    write_series(export / "PET", oblique_volume(), uid="1.2.5.2", number="3", description="PET AC",
                 edit=lambda k, tags: {**tags, "0008|0060": "PT"})
    out = tmp_path / "out"
    assert main(["predict", str(dicom_model_dir), str(export), f"{out}/", "--all-series", "--fast",
                 "--device", "cpu"]) == 0
    assert ("1 series were left out: PET: 3 'PET AC': a PT series, and the model is for CT"
            in capsys.readouterr().err)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")) == ["CT/series_2.nii.gz"]

    assert main(["predict", str(dicom_model_dir), str(export / "PET"), str(tmp_path / "pet.nii.gz"), "--fast",
                 "--device", "cpu"]) == 0
    assert (f"masksam: warning: {export / 'PET'} (DICOM series 3 'PET AC'): a PT series, and the model is for CT; "
            "its labels may be meaningless") in capsys.readouterr().err
    assert (tmp_path / "pet.nii.gz").is_file()
