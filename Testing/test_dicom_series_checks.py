"""DICOM series checks a user relies on without seeing them: irregular gaps and uneven sideways
shifts refused, slight tilts kept on a sheared grid, each slice's own rescale slope, slices of
another size, direction or pixel spacing named, two series under one number not chosen between
by guess, multi-frame and colour files refused, hidden files skipped, slices whose pixel data
is cut short - by any amount, with or without the preamble and meta group - refused rather than
read with another slice's voxels, and slices stored compressed read exactly as native ones."""

from __future__ import annotations

import struct

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import RLELossless

from MaskSAMCore.data.dicom_series import find_series, read_series
from MaskSAMCore.errors import InputError
from dicom_support import oblique_volume, shuffled_names, write_series

pytestmark = pytest.mark.usefixtures("dicom_locale_kept")


def _moved(offsets):
    """An edit moving slice k by offsets[k] (LPS mm, a 3-vector)."""
    def edit(k, tags):
        x, y, z = (float(v) for v in tags["0020|0032"].split("\\"))
        dx, dy, dz = offsets[k]
        return {**tags, "0020|0032": f"{x + dx:.6f}\\{y + dy:.6f}\\{z + dz:.6f}"}
    return edit


def test_one_gap_a_tenth_wider_than_the_others_is_refused(tmp_path):
    """Slices 3 mm apart with one gap of 3.3 mm: a slice lies 0.3 mm
    off the grid the series would be read on, so the series is not one regular volume."""
    image = oblique_volume(angle=0.0)                      # axis-aligned: the slice normal is +z
    offsets = [(0.0, 0.0, 0.3 if k >= 5 else 0.0) for k in range(image.GetDepth())]
    with pytest.raises(InputError, match="slice spacing varies"):
        find_series(write_series(tmp_path / "ct", image, edit=_moved(offsets)))


def test_a_missing_slice_is_placed_by_its_neighbours_names_and_positions(tmp_path):
    """PACS file names (UIDs) do not show which slices are neighbours: the refusal names the two
    slices around the gap and where they lie, so the user can find what the export lost."""
    image = oblique_volume(angle=0.0)                      # axis-aligned: positions along the normal are z
    names = shuffled_names(image.GetDepth())
    folder = write_series(tmp_path / "ct", image, names=names, edit=lambda k, tags: None if k == 4 else tags)
    with pytest.raises(InputError) as refused:
        find_series(folder)
    assert f"the slice spacing varies from 3 to 6 mm, widest (6 mm) between {names[3]} and {names[5]} " \
        "(at 113 and 119 mm along the slice normal: a missing slice?); a regular volume is needed" in str(refused.value)


def test_uneven_steps_that_are_no_whole_missing_slice_are_not_called_one(tmp_path):
    image = oblique_volume(angle=0.0)
    offsets = [(0.0, 0.0, 0.5 * max(0, k - 4)) for k in range(image.GetDepth())]   # 3 mm, then 3.5 mm apart
    with pytest.raises(InputError, match=r"widest \(3\.5 mm\) between IM0004\.dcm and IM0005\.dcm \(at [0-9.]+ and "
                                         r"[0-9.]+ mm along the slice normal: slices at uneven distances\)"):
        find_series(write_series(tmp_path / "ct", image, edit=_moved(offsets)))


def _positions_to_two_decimals(k, tags):
    return {**tags, "0020|0032": "\\".join(f"{float(v):.2f}" for v in tags["0020|0032"].split("\\"))}


def test_thin_oblique_slices_with_positions_rounded_to_two_decimals_are_one_volume(tmp_path):
    """Some exporters write positions to 0.01 mm: along an oblique normal, 0.5 mm steps then vary
    by up to 0.017 mm (3.5 %). The grid runs from the first slice to the last, as exactly as
    the positions allow."""
    image = oblique_volume(size=(20, 18, 40), spacing=(0.7, 0.7, 0.5))
    series = find_series(write_series(tmp_path / "ct", image, edit=_positions_to_two_decimals))
    first, last = (np.array([float(v) for v in pydicom.dcmread(str(series.files[k])).ImagePositionPatient])
                   for k in (0, -1))
    normal = np.reshape(series.direction, (3, 3))[:, 2]
    assert series.tilt_degrees == 0
    assert series.spacing[2] == pytest.approx(float((last - first) @ normal) / 39, abs=1e-9)
    assert series.spacing[2] == pytest.approx(0.5, abs=1e-3)
    assert np.allclose(series.origin, first, atol=1e-9)


def test_a_slight_gantry_tilt_is_kept_and_uneven_sideways_shifts_are_refused(tmp_path):
    """0.05 mm sideways per slice (0.4 mm over the stack, half a pixel) is a tilt: the grid's
    slice axis leans with it, so every slice lies where the grid puts it. The same shift on one
    slice only is no grid at all: refused."""
    image = oblique_volume(angle=0.0)
    offsets = [(0.05 * k, 0.0, 0.0) for k in range(image.GetDepth())]
    series = find_series(write_series(tmp_path / "ct", image, edit=_moved(offsets)))
    assert series.tilt_degrees == pytest.approx(np.degrees(np.arctan(0.05 / 3.0)), abs=1e-3)
    assert series.plane_spacing == pytest.approx(3.0, abs=1e-5)
    grid = read_series(series)
    for k in range(image.GetDepth()):
        stored = np.add(image.TransformIndexToPhysicalPoint((0, 0, k)), offsets[k])
        assert np.allclose(grid.TransformIndexToPhysicalPoint((0, 0, k)), stored, atol=1e-5), k

    offsets = [(0.4 if k == 4 else 0.0, 0.0, 0.0) for k in range(image.GetDepth())]
    with pytest.raises(InputError, match="shifted sideways unevenly"):
        find_series(write_series(tmp_path / "uneven", image, edit=_moved(offsets)))


def test_slices_with_different_rescale_slopes_read_as_their_hounsfield_units(tmp_path):
    """The first slice has slope 1 (integer HU), every other slice
    stores half-HU values at slope 0.5: each slice's own slope gives its HU back, not truncated."""
    image = oblique_volume(angle=0.0)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    folder = write_series(tmp_path / "ct", image)
    for k, path in enumerate(sorted(folder.iterdir())):
        if k % 2 == 0:
            continue
        data = path.read_bytes()          # implicit VR little endian, pixel data last
        at = data.find(b"\x28\x00\x53\x10")   # (0028,1053) Rescale Slope
        length = struct.unpack("<I", data[at + 4:at + 8])[0]
        data = data[:at + 4] + struct.pack("<I", 4) + b"0.5 " + data[at + 8 + length:]
        hu[k] += 0.5                       # half-HU steps: only slope 0.5 stores them
        stored = np.round((hu[k] + 1024.0) / 0.5).astype(np.int16)   # intercept -1024
        path.write_bytes(data[:-stored.nbytes] + stored.tobytes())
    read = sitk.GetArrayFromImage(read_series(find_series(folder)))
    np.testing.assert_array_equal(read, hu)


def test_a_slice_of_another_image_size_is_named_and_refused(tmp_path):
    """A localiser or a cropped slice with the series' UID does not make a volume."""
    image = oblique_volume(angle=0.0)
    folder = write_series(tmp_path / "ct", image)
    write_series(folder, image[:12, :, :], names=[f"SMALL{k}" for k in range(image.GetDepth())],
                 edit=lambda k, tags: tags if k == 4 else None)
    with pytest.raises(InputError, match="SMALL4 has another image size"):
        find_series(folder)


def test_a_slice_with_its_columns_running_the_other_way_is_refused(tmp_path):
    """Same row direction, column direction reversed (an image flipped upside down):
    that slice's voxels would be read mirrored into the volume."""
    image = oblique_volume(angle=0.0)

    def flip_columns(k, tags):
        return {**tags, "0020|0037": "1\\0\\0\\0\\-1\\0"} if k == 4 else tags

    with pytest.raises(InputError, match="has another orientation"):
        find_series(write_series(tmp_path / "ct", image, edit=flip_columns))


def test_a_slice_with_another_pixel_spacing_is_refused(tmp_path):
    """A slice with 0.7 mm pixels among 0.9/0.8 mm ones would be read on the wrong scale."""
    image = oblique_volume(angle=0.0)
    folder = write_series(tmp_path / "ct", image)
    (folder / "IM0003.dcm").unlink()
    finer = sitk.Image(image)
    finer.SetSpacing((0.7, 0.7, image.GetSpacing()[2]))   # same origin, direction and slice positions
    write_series(folder, finer, names=[f"FINE{k}" for k in range(image.GetDepth())],
                 edit=lambda k, tags: tags if k == 3 else None)
    with pytest.raises(InputError, match="has another pixel spacing from FINE3|FINE3 has another pixel spacing"):
        find_series(folder)


def test_two_series_sharing_a_number_are_not_chosen_between_by_guess(tmp_path):
    """--series 3 when two series carry number 3: the user must give the UID."""
    folder = tmp_path / "study"
    write_series(folder, oblique_volume(), uid="1.2.3.1", number="3", names=[f"A{k}" for k in range(9)])
    write_series(folder, oblique_volume(size=(20, 18, 6)), uid="1.2.3.2", number="3", names=[f"B{k}" for k in range(6)])
    with pytest.raises(InputError, match="2 series have the number 3"):
        find_series(folder, "3")
    assert find_series(folder, "1.2.3.2").size[2] == 6


def test_series_sharing_a_number_are_offered_by_their_uids_at_once(tmp_path):
    """Without --series, the list to choose from gives the UID of each series whose number is not
    unique: "--series 3" would not do, and a second refusal only to learn the UIDs helps nobody."""
    folder = tmp_path / "study"
    write_series(folder, oblique_volume(), uid="1.2.3.1", number="3", names=[f"A{k}" for k in range(9)])
    write_series(folder, oblique_volume(size=(20, 18, 6)), uid="1.2.3.2", number="3", names=[f"B{k}" for k in range(6)])
    write_series(folder, oblique_volume(size=(20, 18, 5)), uid="1.2.3.5", number="5", names=[f"C{k}" for k in range(5)])
    with pytest.raises(InputError) as refused:
        find_series(folder)
    listed = str(refused.value)
    assert "3 'AX ABD' (CT, 9 files, UID 1.2.3.1); 3 'AX ABD' (CT, 6 files, UID 1.2.3.2)" in listed
    assert "5 'AX ABD' (CT, 5 files);" in listed   # a number of its own is enough
    assert listed.endswith("choose one with --series NUMBER (or its Series Instance UID)")


def test_a_multi_frame_file_written_by_gdcm_reads_as_the_volume_it_holds(tmp_path):
    """GDCM writes a 3D image as one multi-frame file with a position per frame: a volume."""
    folder = tmp_path / "multi"
    folder.mkdir()
    volume = sitk.GetImageFromArray(np.arange(3 * 6 * 7, dtype=np.uint16).reshape(3, 6, 7))
    volume.SetSpacing((0.7, 0.6, 2.5))
    volume.SetOrigin((10.0, -4.0, 33.0))
    sitk.WriteImage(volume, str(folder / "multi.dcm"))
    image = read_series(find_series(folder))
    assert image.GetSize() == (7, 6, 3)
    assert np.allclose(image.GetSpacing(), (0.7, 0.6, 2.5)) and np.allclose(image.GetOrigin(), (10.0, -4.0, 33.0))
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(volume).astype(np.float32))


def _cut_pixel_data(path, missing: int) -> None:
    """Shorten the Pixel Data of a GDCM-written slice by `missing` bytes, its length field agreeing."""
    data = path.read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00")
    keep = int.from_bytes(data[at + 4:at + 8], "little") - missing
    path.write_bytes(data[:at + 4] + keep.to_bytes(4, "little") + data[at + 8:at + 8 + keep])


@pytest.mark.parametrize("size, missing, held, needed", [(96, 2000, 16432, 18432), (40, 200, 3000, 3200)],
                         ids=["a_tenth_missing", "less_missing_than_the_header_holds"])
def test_a_slice_whose_pixel_data_is_cut_short_is_refused(tmp_path, size, missing, held, needed):
    """Short by less than its header, the whole file is still larger than its pixels; GDCM would
    read the missing pixels as other values."""
    folder = write_series(tmp_path / "ct", oblique_volume(size=(size, size, 4)))
    _cut_pixel_data(folder / "IM0002.dcm", missing)
    with pytest.raises(InputError, match=rf"IM0002.dcm holds less pixel data \({held} bytes\) than its pixels "
                                         rf"\({needed} bytes\): a damaged file"):
        find_series(folder)


def test_hidden_files_in_the_folder_are_not_slices(tmp_path):
    """A hidden backup copy of a slice (".IM0003.dcm") is not a second copy of it."""
    folder = write_series(tmp_path / "ct", oblique_volume())
    (folder / ".IM0003.dcm").write_bytes((folder / "IM0003.dcm").read_bytes())
    series = find_series(folder)
    assert len(series.files) == 9 and all(not p.name.startswith(".") for p in series.files)


def test_a_colour_series_is_refused(tmp_path):
    """An RGB secondary capture is not a CT or MR."""
    image = oblique_volume(angle=0.0)
    rgb = sitk.Compose(*[sitk.Cast(sitk.RescaleIntensity(image, 0, 255), sitk.sitkUInt8)] * 3)
    rgb.CopyInformation(image)
    with pytest.raises(InputError, match="3 values per pixel"):
        find_series(write_series(tmp_path / "rgb", rgb, edit=lambda k, tags: {
            key: v for key, v in tags.items() if key not in ("0028|1052", "0028|1053")}))


def test_a_slice_without_image_orientation_is_refused(tmp_path):
    """A position without an orientation does not place
    the slice (GDCM would assume an axial identity)."""
    folder = write_series(tmp_path / "ct", oblique_volume())
    path = folder / "IM0000.dcm"   # (0020,0037) Image Orientation (Patient) becomes (0020,0038)
    path.write_bytes(path.read_bytes().replace(b"\x20\x00\x37\x00", b"\x20\x00\x38\x00", 1))
    with pytest.raises(InputError, match="IM0000.dcm has no Image Position or Orientation"):
        find_series(folder)


def test_a_damaged_slice_without_preamble_is_refused(tmp_path):
    """An older export (no preamble, implicit VR little endian, names 1, 2, ...) whose slice 3
    keeps only 5000 of its 18432 pixel bytes (no transfer syntax to go by: the encoding is
    found from the first element)."""
    written = write_series(tmp_path / "written", oblique_volume(size=(96, 96, 4)))
    bare = tmp_path / "bare"
    bare.mkdir()
    for k, path in enumerate(sorted(written.iterdir())):
        data = path.read_bytes()
        (bare / str(k + 1)).write_bytes(data[144 + int.from_bytes(data[140:144], "little"):])
    _cut_pixel_data(bare / "3", 18432 - 5000)
    with pytest.raises(InputError, match=r"\): 3 holds less pixel data \(5000 bytes\) than its pixels \(18432"):
        find_series(bare)
    (bare / "3").write_bytes(((written / "IM0002.dcm").read_bytes())[144 + int.from_bytes(
        (written / "IM0002.dcm").read_bytes()[140:144], "little"):])
    assert len(find_series(bare).files) == 4      # whole again: read


# -- the element walk behind the pixel-data check, on hand-made files ----------------------------

def _element(group: int, element: int, value: bytes, vr: bytes = b"", order: str = "<", length=None) -> bytes:
    """One element: implicit VR when `vr` is empty, else explicit (long form for OB/OW/SQ/UN/UT)."""
    length = len(value) if length is None else length
    tag = struct.pack(order + "HH", group, element)
    if not vr:
        return tag + struct.pack(order + "I", length) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return tag + vr + b"\0\0" + struct.pack(order + "I", length) + value
    return tag + vr + struct.pack(order + "H", length) + value


def _nested_sequence(explicit: bool, order: str) -> bytes:
    """A sequence of undefined length holding an item of undefined length that holds a sequence
    of one defined-length item: the walk must find both delimiters."""
    vr = (lambda code: code) if explicit else (lambda code: b"")
    undefined = 0xFFFFFFFF
    inner_item = _element(0xFFFE, 0xE000, _element(0x0008, 0x1150, b"1.2.3\0", vr(b"UI"), order), order=order)
    inner = _element(0x0008, 0x1115, inner_item, vr(b"SQ"), order)
    item = (_element(0xFFFE, 0xE000, b"", order=order, length=undefined) + inner
            + _element(0x0008, 0x1155, b"4.5.6\0", vr(b"UI"), order) + _element(0xFFFE, 0xE00D, b"", order=order))
    return (_element(0x0008, 0x1140, b"", vr(b"SQ"), order, length=undefined) + item
            + _element(0xFFFE, 0xE0DD, b"", order=order))


def _meta_group(syntax: str) -> bytes:
    uid = syntax.encode() + (b"\0" if len(syntax) % 2 else b"")
    return b"\0" * 128 + b"DICM" + _element(0x0002, 0x0010, uid, b"UI")


@pytest.mark.parametrize("syntax, preamble", [
    ("1.2.840.10008.1.2", True), ("1.2.840.10008.1.2.1", True), ("1.2.840.10008.1.2.2", True),
    ("1.2.840.10008.1.2", False), ("1.2.840.10008.1.2.1", False)])
def test_pixel_data_is_found_past_nested_sequences_of_undefined_length(tmp_path, syntax, preamble):
    from MaskSAMCore.data.dicom_pixel_data import pixel_data_bytes

    explicit, order = syntax != "1.2.840.10008.1.2", ">" if syntax.endswith(".2.2") else "<"
    vr = (lambda code: code) if explicit else (lambda code: b"")
    body = (_element(0x0008, 0x0060, b"CT", vr(b"CS"), order) + _nested_sequence(explicit, order)
            + _element(0x0028, 0x0010, struct.pack(order + "H", 10), vr(b"US"), order))
    pixels = _element(0x7FE0, 0x0010, bytes(200), vr(b"OW"), order)
    path = tmp_path / "slice.dcm"
    path.write_bytes((_meta_group(syntax) if preamble else b"") + body + pixels)
    assert pixel_data_bytes(path) == 200
    path.write_bytes((_meta_group(syntax) if preamble else b"") + body + pixels[:-60])   # cut short
    assert pixel_data_bytes(path) == 140


def test_compressed_or_unwalkable_files_claim_nothing(tmp_path):
    """Encapsulated (compressed) pixel data has no size to compare; a header cut short cannot be
    walked: neither is called damaged by this check (GDCM's own reading decides)."""
    from MaskSAMCore.data.dicom_pixel_data import pixel_data_bytes

    jpeg = tmp_path / "jpeg.dcm"
    jpeg.write_bytes(_meta_group("1.2.840.10008.1.2.4.50") + _element(0x7FE0, 0x0010, bytes(40), b"OB"))
    assert pixel_data_bytes(jpeg) is None
    encapsulated = tmp_path / "encapsulated.dcm"
    encapsulated.write_bytes(_meta_group("1.2.840.10008.1.2.1")
                             + _element(0x7FE0, 0x0010, bytes(40), b"OB", length=0xFFFFFFFF))
    assert pixel_data_bytes(encapsulated) is None
    cut_in_header = tmp_path / "cut.dcm"
    cut_in_header.write_bytes(_meta_group("1.2.840.10008.1.2.1") + _element(0x0010, 0x0010, b"DOE^J", b"PN")[:9])
    assert pixel_data_bytes(cut_in_header) is None


@pytest.mark.parametrize("compression", ["JPEG", "JPEG2000", "RLE"])
def test_a_compressed_series_reads_exactly_as_the_native_one(tmp_path, compression):
    """PACS exports often store slices losslessly compressed (JPEG process 14, JPEG 2000, RLE):
    the header checks, which measure only native pixel data, let them through, and the voxels
    read are the native series' (in HU)."""
    image = oblique_volume()
    native = read_series(find_series(write_series(tmp_path / "native", image)))
    folder = write_series(tmp_path / compression, image, compressor=None if compression == "RLE" else compression)
    for path in folder.iterdir():
        if compression == "RLE":
            dataset = pydicom.dcmread(str(path))
            dataset.compress(RLELossless)
            dataset.save_as(str(path))
        assert pydicom.dcmread(str(path), stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    compressed = read_series(find_series(folder))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(compressed), sitk.GetArrayFromImage(native))
    assert compressed.GetOrigin() == native.GetOrigin() and compressed.GetDirection() == native.GetDirection()
