"""Multi-frame (enhanced) DICOM input: a series kept in one file (or a few), as enhanced CT and
MR scanners and PACS conversions store it. Each frame's own position, orientation, spacing and
rescale make the grid; it must read exactly as the classic series it was converted from, be
refused for the same reasons (naming the frame), and take a DICOM SEG over its frames."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless

from MaskSAMCore.cli import main
from MaskSAMCore.data.dicom_series import find_series, read_series
from MaskSAMCore.data.image_io import read_label
from MaskSAMCore.errors import InputError
from MaskSAMCore.inference.dicom_seg import check_seg_sources, seg_structures, write_dicom_seg
from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.config import preset
from dicom_support import decode_seg, oblique_volume, tilted, write_enhanced, write_series

pytestmark = pytest.mark.usefixtures("dicom_locale_kept")

SHUFFLED = (4, 0, 7, 2, 8, 1, 6, 3, 5)   # the 9 slices of oblique_volume(), stored out of order


def _voxels(folder: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_series(find_series(folder)))


def _edited(path: Path, edit) -> Path:
    dataset = pydicom.dcmread(str(path))
    edit(dataset)
    dataset.save_as(str(path))
    return path


def _frame(dataset, index: int):
    return dataset.PerFrameFunctionalGroupsSequence[index]


def test_an_enhanced_file_reads_as_the_classic_series_it_was_converted_from(tmp_path):
    image = oblique_volume()   # oblique, 0.9 x 0.8 x 3.0 mm
    classic = write_series(tmp_path / "classic", image)
    write_enhanced(tmp_path / "enhanced", image, frame_order=SHUFFLED)
    series, reference = find_series(tmp_path / "enhanced"), find_series(classic)
    assert series.frames != tuple(sorted(series.frames))   # stored out of order, read in order
    assert series.size == reference.size == image.GetSize()
    assert np.allclose(series.spacing, image.GetSpacing(), rtol=1e-6)
    assert np.allclose(series.origin, reference.origin, atol=1e-5)
    assert np.allclose(series.direction, reference.direction, atol=1e-8)
    assert series.slices_described == "9 frames of 1 multi-frame (enhanced) file"
    assert np.array_equal(_voxels(tmp_path / "enhanced"), _voxels(classic))


def test_enhanced_files_of_one_frame_each_read_as_a_classic_series(tmp_path):
    """GDCM writes a slice under the Enhanced CT SOP class with its position in the frame's
    functional groups: nine one-frame files are one series."""
    image = oblique_volume()
    enhanced = write_series(tmp_path / "ct", image,
                            edit=lambda k, tags: {**tags, "0008|0016": "1.2.840.10008.5.1.4.1.1.2.1"})
    series = find_series(enhanced)
    assert series.frames == (0,) * 9 and len(series.distinct_files) == 9
    assert np.array_equal(_voxels(enhanced), _voxels(write_series(tmp_path / "classic", image)))


def test_each_frame_is_rescaled_by_its_own_slope_and_intercept(tmp_path):
    image = oblique_volume()
    path = write_enhanced(tmp_path / "enhanced", image)

    def own_rescale(dataset):
        pixels = dataset.pixel_array.astype(np.int16)
        for frame, slope, intercept, stored in ((2, 0.5, -1024, pixels[2] * 2), (5, 1, -1124, pixels[5] + 100)):
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
            _frame(dataset, frame).PixelValueTransformationSequence = [transform]
            pixels[frame] = stored
        dataset.PixelData = pixels.tobytes()

    _edited(path, own_rescale)
    assert np.array_equal(_voxels(path.parent), sitk.GetArrayFromImage(image).astype(np.float32))


def test_rle_compressed_frames_read_as_stored(tmp_path):
    image = oblique_volume()
    path = write_enhanced(tmp_path / "enhanced", image)
    _edited(path, lambda dataset: dataset.compress(RLELossless))
    assert pydicom.dcmread(str(path)).file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(_voxels(path.parent), sitk.GetArrayFromImage(image).astype(np.float32))


def test_frames_that_cannot_be_decoded_are_named_with_what_to_install(tmp_path):
    path = write_enhanced(tmp_path / "enhanced", oblique_volume())

    def damaged_jpeg2000(dataset):
        dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(20)] * int(dataset.NumberOfFrames))
        dataset["PixelData"].VR = "OB"
        dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless

    _edited(path, damaged_jpeg2000)
    series = find_series(path.parent)   # the headers are fine: refused when the voxels are read
    with pytest.raises(InputError, match=r"enhanced\.dcm: its pixel data cannot be decoded .*pip install pylibjpeg"):
        read_series(series)


def test_frames_at_one_position_are_refused_as_echoes_or_time_points(tmp_path):
    path = write_enhanced(tmp_path / "enhanced", oblique_volume())

    def two_echoes(dataset):
        _frame(dataset, 3).PlanePositionSequence[0].ImagePositionPatient = \
            _frame(dataset, 4).PlanePositionSequence[0].ImagePositionPatient

    _edited(path, two_echoes)
    with pytest.raises(InputError, match=r"2 of its 9 slices share a position .*enhanced\.dcm frame [45]\).*echoes"):
        find_series(path.parent)


def test_a_frame_of_another_orientation_is_named(tmp_path):
    path = write_enhanced(tmp_path / "enhanced", oblique_volume())

    def tilted(dataset):
        orientation = Dataset()
        orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        _frame(dataset, 6).PlaneOrientationSequence = [orientation]

    _edited(path, tilted)
    with pytest.raises(InputError, match=r"enhanced\.dcm frame 7 has another orientation from enhanced\.dcm frame 1"):
        find_series(path.parent)


def test_a_multi_frame_file_whose_pixel_data_is_cut_short_is_refused(tmp_path):
    path = write_enhanced(tmp_path / "enhanced", oblique_volume())
    data = path.read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00")   # Pixel Data, implicit VR: its length follows the tag
    keep = int.from_bytes(data[at + 4:at + 8], "little") - 400
    path.write_bytes(data[:at + 4] + keep.to_bytes(4, "little") + data[at + 8:at + 8 + keep])
    with pytest.raises(InputError, match=r"enhanced\.dcm holds less pixel data .*damaged file"):
        find_series(path.parent)


def test_a_series_spread_over_two_enhanced_files_reads_whole_but_takes_no_seg(tmp_path):
    image = oblique_volume()
    write_enhanced(tmp_path / "enhanced", image[:, :, :5], name="part1.dcm")
    write_enhanced(tmp_path / "enhanced", image[:, :, 5:], name="part2.dcm")
    series = find_series(tmp_path / "enhanced")
    assert series.size == image.GetSize()
    assert series.slices_described == "9 frames of 2 multi-frame (enhanced) files"
    assert np.array_equal(_voxels(tmp_path / "enhanced"), sitk.GetArrayFromImage(image).astype(np.float32))
    with pytest.raises(InputError, match="spread over 2 multi-frame files; a DICOM SEG here refers to one"):
        check_seg_sources(series)


def test_multi_frame_and_classic_files_in_one_series_are_refused(tmp_path):
    image = oblique_volume()
    write_enhanced(tmp_path / "mixed", image[:, :, :5], name="part1.dcm")
    write_series(tmp_path / "mixed", image, edit=lambda k, tags: tags if k >= 5 else None)
    with pytest.raises(InputError, match=r"mixes multi-frame files \(part1\.dcm\) and single-frame ones \(IM0005\.dcm\)"):
        find_series(tmp_path / "mixed")


def test_a_multi_frame_file_without_frame_positions_is_refused(tmp_path):
    folder = tmp_path / "gdcm"
    folder.mkdir()
    volume = sitk.GetImageFromArray(np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7))
    sitk.WriteImage(volume, str(folder / "multi.dcm"))
    _edited(folder / "multi.dcm", lambda dataset: delattr(dataset, "PerFrameFunctionalGroupsSequence"))
    with pytest.raises(InputError, match=r"multi\.dcm is a multi-frame DICOM file whose frames have no positions .*dcm2niix"):
        find_series(folder)


def test_seg_frames_refer_to_the_source_frames_they_lie_on(tmp_path):
    path = write_enhanced(tmp_path / "enhanced", oblique_volume(), frame_order=SHUFFLED)
    series = find_series(path.parent)
    labels = np.zeros((9, 18, 20), np.uint8)
    for z in range(9):   # a different pattern on every slice
        labels[z, :z + 2, :] = 1
        labels[z, -3:, z:] = 2
    write_dicom_seg(labels, series, seg_structures(["background", "liver", "spleen"], None),
                    tmp_path / "seg.dcm", "test model")
    masks = decode_seg(tmp_path / "seg.dcm", series)
    for value in (1, 2):
        assert np.array_equal(masks[value], labels == value)


def test_a_seg_is_written_over_frames_keeping_orientation_and_pixel_spacing_per_frame(tmp_path):
    """Many enhanced files keep each frame's orientation and pixel measures in its own functional
    group, not in the shared one highdicom copies them from."""
    path = write_enhanced(tmp_path / "enhanced", oblique_volume(), frame_order=SHUFFLED)

    def per_frame(dataset):
        shared = dataset.SharedFunctionalGroupsSequence[0]
        for sequence in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
            items = shared[sequence].value
            delattr(shared, sequence)
            for k in range(len(SHUFFLED)):
                setattr(_frame(dataset, k), sequence, copy.deepcopy(items))
                if sequence == "PlaneOrientationSequence":   # float noise, different in every frame
                    cosines = [float(v) + 2e-6 * (-1) ** k for v in items[0].ImageOrientationPatient]
                    _frame(dataset, k).PlaneOrientationSequence[0].ImageOrientationPatient = \
                        [f"{v:.8f}" for v in cosines]

    series = find_series(_edited(path, per_frame).parent)
    check_seg_sources(series)
    labels = np.zeros((9, 18, 20), np.uint8)
    labels[2:6, 3:9, 4:12] = 1
    labels[7, 0, 19] = 2
    write_dicom_seg(labels, series, seg_structures(["background", "liver", "spleen"], None),
                    tmp_path / "seg.dcm", "test model")
    masks = decode_seg(tmp_path / "seg.dcm", series)
    assert np.array_equal(masks[1], labels == 1) and np.array_equal(masks[2], labels == 2)
    # the source file itself is left as it was
    assert "PlaneOrientationSequence" not in pydicom.dcmread(str(path)).SharedFunctionalGroupsSequence[0]


def test_predict_segments_an_enhanced_file_as_its_classic_series_and_writes_a_seg_on_its_frames(tmp_path, capsys):
    config = preset("tiny", num_classes=3)
    model = write_random_model_folder(tmp_path / "model", config, synthetic_plan(config, (3.0, 0.85, 0.85)))
    image = oblique_volume()
    classic = write_series(tmp_path / "classic", image)
    path = write_enhanced(tmp_path / "enhanced", image, frame_order=SHUFFLED)
    out = tmp_path / "out"
    for folder, name in ((classic, "classic.nii.gz"), (path.parent, "enhanced.nii.gz"), (path.parent, "seg.dcm")):
        assert main(["predict", str(model), str(folder), str(out / name), "--fast", "--device", "cpu"]) == 0
    assert "9 frames of 1 multi-frame (enhanced) file" in capsys.readouterr().err
    labels, _ = read_label(out / "classic.nii.gz")
    assert np.array_equal(read_label(out / "enhanced.nii.gz")[0], labels)
    masks = decode_seg(out / "seg.dcm", find_series(path.parent))
    seg = pydicom.dcmread(str(out / "seg.dcm"))
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        pydicom.dcmread(str(path), stop_before_pixels=True).SOPInstanceUID
    for value in (1, 2):
        assert np.array_equal(masks[value], labels == value)


def test_a_tilted_multi_frame_file_is_read_on_its_sheared_grid_and_its_seg_follows_the_frames(tmp_path):
    """The frames of one enhanced file, leaning as a 15-degree gantry tilt, stored shuffled: the
    grid's slice axis leans with them, the voxels are the classic tilted series', and a SEG's
    frames lie on the source frames' positions."""
    image = oblique_volume()
    classic = read_series(find_series(write_series(tmp_path / "classic", image, edit=tilted(image, 15.0))))
    path = write_enhanced(tmp_path / "enhanced", image, frame_order=[4, 0, 8, 2, 6, 1, 7, 3, 5],
                          edit=tilted(image, 15.0))
    series = find_series(path.parent)
    assert series.tilt_degrees == pytest.approx(15.0, abs=1e-3)
    enhanced = read_series(series)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(enhanced), sitk.GetArrayFromImage(classic))
    np.testing.assert_allclose(enhanced.GetDirection(), classic.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(enhanced.GetSpacing(), classic.GetSpacing(), atol=1e-6)
    labels = np.zeros((9, 18, 20), np.uint8)
    labels[1:7, 4:12, 5:15] = 1
    labels[3:5, 6:9, 7:11] = 2
    write_dicom_seg(labels, series, seg_structures(["background", "lesion", "core"], None), tmp_path / "seg.dcm",
                    "tilted")
    masks = decode_seg(tmp_path / "seg.dcm", series)
    for value in (1, 2):
        np.testing.assert_array_equal(masks[value], labels == value)
