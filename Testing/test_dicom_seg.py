"""`masksam predict MODEL DICOM_FOLDER out.dcm`: the labels as a DICOM SEG over the series.

What a PACS or viewer relies on: each frame names the source slice it lies on (UID and
position), holds exactly the label map's voxels of its segment there, the SEG belongs to the
series' patient and study, and each segment is named, coded (SNOMED-CT, side as modifier) and
coloured. Decoded here with pydicom alone, frame by frame, not by the library that wrote it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from MaskSAMCore.cli import main
from MaskSAMCore.data.dicom_series import DicomSeries, find_series
from MaskSAMCore.data.image_io import read_label
from MaskSAMCore.data.regions import region_scheme
from MaskSAMCore.errors import InputError
from MaskSAMCore.inference.cases import find_cases
from MaskSAMCore.inference.dicom_seg import SegStructure, check_seg_sources, seg_structures, write_dicom_seg
from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.config import preset
from dicom_support import decode_seg, oblique_volume, shuffled_names, write_series

pytestmark = pytest.mark.usefixtures("dicom_locale_kept")

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    config = preset("tiny", num_classes=3)
    return write_random_model_folder(tmp_path_factory.mktemp("models") / "tiny", config,
                                     synthetic_plan(config, (3.0, 0.85, 0.85)))


def _series(tmp_path: Path) -> DicomSeries:
    image = oblique_volume()
    return find_series(write_series(tmp_path / "ct", image, names=shuffled_names(image.GetDepth())))


def test_frames_lie_on_their_source_slices_and_hold_the_label_map(tmp_path):
    series = _series(tmp_path)
    labels = np.zeros((9, 18, 20), np.uint8)
    labels[2:5, 3:9, 4:12] = 1
    labels[6, 10:14, 2:5] = 2          # one slice only, off-centre: a flipped axis would show
    labels[7, 0, 19] = 2               # a corner voxel
    out = tmp_path / "seg.dcm"
    write_dicom_seg(labels, series, seg_structures(["background", "liver", "kidney_left"], None), out, "abdomen")
    masks = decode_seg(out, series)
    assert sorted(masks) == [1, 2]
    assert np.array_equal(masks[1], labels == 1) and np.array_equal(masks[2], labels == 2)

    seg = pydicom.dcmread(str(out))
    first = pydicom.dcmread(str(series.files[0]), stop_before_pixels=True)
    assert (seg.SOPClassUID, seg.Modality) == (SEG_STORAGE, "SEG")
    for key in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert getattr(seg, key) == getattr(first, key), key
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
    assert seg.SeriesInstanceUID != series.uid and seg.SeriesNumber == 1003
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                       [float(v) for v in first.ImageOrientationPatient], atol=1e-6)
    measures = shared.PixelMeasuresSequence[0]
    assert np.allclose([float(v) for v in measures.PixelSpacing], (0.8, 0.9))   # rows, columns
    assert float(measures.SpacingBetweenSlices) == pytest.approx(3.0, abs=1e-4)
    # only frames with voxels are stored: 3 slices of segment 1, 2 of segment 2
    assert int(seg.NumberOfFrames) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "seg.dcm"]   # no temporary file left


def test_segments_are_named_coded_and_coloured_as_in_slicer(tmp_path):
    series = _series(tmp_path)
    labels = np.zeros((9, 18, 20), np.uint8)
    labels[1:3, 2:6, 2:6] = 1
    names = ["background", "liver", "kidney_left", "blob_3"]
    out = tmp_path / "seg.dcm"
    write_dicom_seg(labels, series, seg_structures(names, None), out, "abdomen v2")
    seg = pydicom.dcmread(str(out))
    segments = {int(d.SegmentNumber): d for d in seg.SegmentSequence}
    assert [segments[n].SegmentLabel for n in (1, 2, 3)] == ["Liver", "Left kidney", "Blob 3"]
    liver, kidney, blob = segments[1], segments[2], segments[3]
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    kidney_type = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert (kidney_type.CodeValue, kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning) == \
        ("64033007", "Left")
    assert blob.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"   # unknown to the table
    assert all(d.SegmentAlgorithmType == "AUTOMATIC" for d in segments.values())
    assert segments[1].SegmentAlgorithmName == seg.SeriesDescription == "MaskSAM abdomen v2"
    colours = {tuple(d.RecommendedDisplayCIELabValue) for d in segments.values()}
    assert len(colours) == 3
    # Structures not found are still described (a reader sees they were looked for), without frames
    assert {int(g.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            for g in seg.PerFrameFunctionalGroupsSequence} == {1}


def test_region_models_write_overlapping_segments(tmp_path):
    series = _series(tmp_path)
    scheme = region_scheme({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                            "enhancing tumor": 3}, [1, 2, 3])
    painted = np.zeros((9, 18, 20), np.uint8)
    painted[1:7, 2:14, 2:14] = 1       # not symmetric in z: reversed slices would show
    painted[3:6, 4:10, 4:10] = 2
    painted[4, 5:8, 5:8] = 3
    out = tmp_path / "seg.dcm"
    write_dicom_seg(painted, series, seg_structures(list(scheme.classes), scheme), out, "brats")
    masks = decode_seg(out, series)
    assert np.array_equal(masks[1], painted >= 1)     # whole tumor holds the core and the enhancing part
    assert np.array_equal(masks[2], painted >= 2)
    assert np.array_equal(masks[3], painted == 3)
    labels = [d.SegmentLabel for d in pydicom.dcmread(str(out)).SegmentSequence]
    assert labels == ["Whole tumor", "Tumor core", "Enhancing tumor"]


def test_predict_writes_the_same_labels_as_seg_and_as_nifti(random_model, tmp_path, capsys):
    image = oblique_volume()
    folder = write_series(tmp_path / "patient7_ct", image, names=shuffled_names(image.GetDepth()))
    out = tmp_path / "out"
    for name in ("seg.dcm", "labels.nii.gz"):
        assert main(["predict", str(random_model), str(folder), str(out / name), "--fast", "--device", "cpu",
                     "--probabilities"]) == 0
    labels, _ = read_label(out / "labels.nii.gz")
    masks = decode_seg(out / "seg.dcm", find_series(folder))
    assert sorted(masks) == [1, 2]
    for value in (1, 2):
        assert np.array_equal(masks[value], labels == value)
    assert (out / "seg_probabilities.npz").is_file()
    assert main(["predict", str(random_model), str(folder), f"{out}/", "--output-ending", ".dcm",
                 "--fast", "--device", "cpu"]) == 0
    assert (out / "patient7_ct.dcm").is_file()


def _refused(capsys, *arguments: str) -> str:
    assert main(["predict", *arguments, "--fast", "--device", "cpu"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("masksam: error: ")
    return lines[-1]


def test_seg_output_needs_a_dicom_series_and_highdicom(random_model, tmp_path, capsys, monkeypatch):
    nrrd = tmp_path / "ct.nrrd"
    sitk.WriteImage(oblique_volume(), str(nrrd))
    out = tmp_path / "out"
    line = _refused(capsys, str(random_model), str(nrrd), str(out / "seg.dcm"))
    assert "ct.nrrd: a DICOM SEG (.dcm) refers to the DICOM slices it segments" in line
    folder_of_images = tmp_path / "images"
    folder_of_images.mkdir()
    sitk.WriteImage(oblique_volume(), str(folder_of_images / "a_0000.nrrd"))
    line = _refused(capsys, str(random_model), str(folder_of_images), f"{out}/", "--output-ending", "dcm")
    assert "INPUT must be a folder of DICOM slices" in line
    folder = write_series(tmp_path / "ct", oblique_volume())
    monkeypatch.setitem(sys.modules, "highdicom", None)   # as if not installed
    line = _refused(capsys, str(random_model), str(folder), str(out / "seg.dcm"))
    assert "needs the highdicom package: pip install highdicom" in line
    assert not out.exists()


def _without_frame_of_reference(k: int, tags):
    return {key: value for key, value in tags.items() if key != "0020|0052"}


def _two_studies(k: int, tags):
    return {**tags, "0020|000d": "1.2.826.0.1.3680043.2.1125.99"} if k == 4 else tags


@pytest.mark.parametrize("edit, message", [
    (_without_frame_of_reference, "has no Frame of Reference UID, which a DICOM SEG must refer to"),
    (_two_studies, "have different Study Instance UIDs"),
])
def test_a_series_a_seg_cannot_refer_to_is_refused_before_any_work(random_model, tmp_path, capsys, edit, message):
    folder = write_series(tmp_path / "ct", oblique_volume(), edit=edit)
    line = _refused(capsys, str(random_model), str(folder), str(tmp_path / "out" / "seg.dcm"))
    assert message in line and "DICOM series 3 'AX ABD'" in line and "write .nii.gz" in line
    assert not (tmp_path / "out").exists()
    # the same series is segmented into an image file
    assert main(["predict", str(random_model), str(folder), str(tmp_path / "labels.nrrd"), "--fast"]) == 0


def _anonymised(folder: Path) -> Path:
    """The series as anonymisers and converters leave it: Type 2 patient and study elements left out
    entirely (not present and empty), the patient's name a single word."""
    for path in folder.iterdir():
        dataset = pydicom.dcmread(str(path))
        for keyword in ("PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                        "StudyID", "ReferringPhysicianName"):
            del dataset[keyword]
        dataset.PatientName = "Anon"
        dataset.save_as(str(path))
    return folder


def test_a_series_without_type2_patient_and_study_elements_gets_a_seg(random_model, tmp_path, capsys, recwarn):
    folder = _anonymised(write_series(tmp_path / "ct", oblique_volume()))
    out = tmp_path / "seg.dcm"
    assert main(["predict", str(random_model), str(folder), str(out), "--fast", "--device", "cpu"]) == 0
    # The one-word name is the series' own: no raw Python warning (pytest holds those back from stderr).
    assert "Warning" not in capsys.readouterr().err
    assert not [w for w in recwarn if "unlikely to represent" in str(w.message)]
    seg = pydicom.dcmread(str(out))
    assert (seg.PatientName, seg.PatientBirthDate, seg.StudyID, seg.AccessionNumber) == ("Anon", "", "", "")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == find_series(folder).uid


def test_a_series_highdicom_cannot_describe_is_one_error_line(random_model, tmp_path, capsys, monkeypatch):
    import highdicom

    def refuses(**_):   # as a highdicom needing an element this series lacks would
        raise AttributeError("'FileDataset' object has no attribute 'PatientAge'")
    monkeypatch.setattr(highdicom.seg, "Segmentation", refuses)
    folder = write_series(tmp_path / "ct", oblique_volume())
    line = _refused(capsys, str(random_model), str(folder), str(tmp_path / "out" / "seg.dcm"))
    assert line == (f"masksam: error: {folder} (DICOM series 3 'AX ABD'): no DICOM SEG can refer to it "
                    "('FileDataset' object has no attribute 'PatientAge'); write .nii.gz, .nrrd or .mha instead")
    assert not (tmp_path / "out" / "seg.dcm").exists()


def _orientation_noise(k: int, tags):
    """Each slice's direction cosines off by float noise of its own (2e-6, written with 8
    decimals), as some exporters write them: one orientation within tolerance, not exactly."""
    cosines = [float(v) + 2e-6 * ((k % 3) - 1) * (1 if i % 2 else -1)
               for i, v in enumerate(tags["0020|0037"].split("\\"))]
    return {**tags, "0020|0037": "\\".join(f"{v:.8f}" for v in cosines)}


def test_a_seg_is_written_over_slices_whose_orientations_differ_by_float_noise(tmp_path):
    image = oblique_volume()
    folder = write_series(tmp_path / "ct", image, names=shuffled_names(image.GetDepth()), edit=_orientation_noise)
    series = find_series(folder)
    assert len({pydicom.dcmread(str(f)).ImageOrientationPatient[0] for f in series.files}) == 3
    check_seg_sources(series)
    labels = np.zeros((9, 18, 20), np.uint8)
    labels[1:4, 3:9, 4:12] = 1
    labels[8, 17, 0] = 2
    out = tmp_path / "seg.dcm"
    write_dicom_seg(labels, series, seg_structures(["background", "liver", "kidney_left"], None), out, "abdomen")
    masks = decode_seg(out, series)   # every frame on its own source slice's position
    assert np.array_equal(masks[1], labels == 1) and np.array_equal(masks[2], labels == 2)
    seg_cosines = pydicom.dcmread(str(out)).SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert np.allclose([float(v) for v in seg_cosines.ImageOrientationPatient],
                       np.reshape(series.direction, (3, 3))[:, :2].T.ravel(), atol=1e-12)


def test_the_spacing_between_slices_is_written_without_float_noise(tmp_path):
    series = find_series(write_series(tmp_path / "ct", oblique_volume(spacing=(0.9, 0.8, 3.1))))
    assert series.plane_spacing != 3.1   # positions written with 6 decimals along an oblique normal
    write_dicom_seg(np.ones((9, 18, 20), np.uint8), series, seg_structures(["background", "liver"], None),
                    tmp_path / "seg.dcm", "abdomen")
    measures = pydicom.dcmread(str(tmp_path / "seg.dcm")).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert str(measures.SpacingBetweenSlices) == "3.1"


def test_what_highdicom_would_refuse_is_refused_before_the_prediction(tmp_path, monkeypatch):
    import highdicom

    def refuses(**_):   # as a highdicom refusing this series' sources would
        raise ValueError("Source images must have a shared orientation.")
    monkeypatch.setattr(highdicom.seg, "Segmentation", refuses)
    series = find_series(write_series(tmp_path / "ct", oblique_volume()))
    with pytest.raises(InputError, match=r"no DICOM SEG can refer to it \(Source images must have a shared "
                                         r"orientation\.\); write \.nii\.gz"):
        check_seg_sources(series)


def test_an_upper_case_seg_name_is_kept(tmp_path):
    folder = write_series(tmp_path / "ct", oblique_volume())
    case = find_cases(folder, tmp_path / "SEG.DCM", num_channels=1)[0]
    assert case.output_file == tmp_path / "SEG.DCM"
    with pytest.raises(InputError, match="does not apply"):
        find_cases(folder, tmp_path / "seg.dcm", num_channels=1, output_ending=".nrrd")


@pytest.mark.slow
def test_a_trained_model_segments_a_phantom_series_into_named_organs(trained_phantom_model, tmp_path):
    """The phantom-trained model (conftest) on a held-out phantom given as DICOM slices: the SEG
    holds the organs the NIfTI prediction holds, under their anatomical names."""
    dataset, model = trained_phantom_model.dataset, trained_phantom_model.model_dir
    scan = sorted((dataset / "imagesTs").iterdir())[0]
    image = sitk.ReadImage(str(scan))
    folder = write_series(tmp_path / "phantom", image, names=shuffled_names(image.GetDepth()))
    for name in ("organs.dcm", "organs.nii.gz"):
        assert main(["predict", str(model), str(folder), str(tmp_path / name), "--fast", "--device", "cpu"]) == 0
    labels, _ = read_label(tmp_path / "organs.nii.gz")
    masks = decode_seg(tmp_path / "organs.dcm", find_series(folder))
    for value in range(1, 6):
        assert np.array_equal(masks[value], labels == value), value
    assert (labels > 0).sum() > 1000
    seg = pydicom.dcmread(str(tmp_path / "organs.dcm"))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Liver", "Spleen", "Left kidney", "Right kidney", "Aorta"]
    assert seg.SeriesDescription == "MaskSAM abdominal CT phantoms"   # the model's name, not "MaskSAM MaskSAM ..."


def test_structures_of_a_model():
    assert seg_structures(["background", "liver", "spleen"], None) == [SegStructure("liver", (1,)),
                                                                       SegStructure("spleen", (2,))]
