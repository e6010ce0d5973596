"""Image files that are incomplete or stored in pieces: cut short (NIfTI, MetaImage, NRRD, a
detached data file missing), values past float32, NIfTI in several gzip members, MetaImage
volumes stored one file per slice."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk

from test_data_image_io import oblique_geometry, write_raw

from MaskSAMCore.data.image_io import read_geometry, read_image, read_label
from MaskSAMCore.data.image_writing import write_image, write_label
from MaskSAMCore.errors import InputError


@pytest.mark.parametrize("ending, dtype", [(".nii.gz", np.int16), (".nii.gz", np.float32), (".nii", np.int16)])
def test_a_nifti_file_cut_short_is_refused_not_read_as_zeros(tmp_path, ending, dtype):
    geometry = oblique_geometry()
    rng = np.random.default_rng(1)
    write_image(rng.integers(-1000, 1000, geometry.shape_zyx).astype(dtype), geometry, tmp_path / f"full{ending}")
    data = (tmp_path / f"full{ending}").read_bytes()
    cut = tmp_path / f"cut{ending}"
    cut.write_bytes(data[: len(data) * 2 // 3])     # an interrupted copy
    for reader in (read_geometry, read_image, read_label):
        with pytest.raises(InputError, match=rf"cut{re.escape(ending)}: the file is cut short \(\d+ bytes"):
            reader(cut)


@pytest.mark.parametrize("ending, compressed", [(".mha", True), (".mha", False), (".nrrd", True), (".nrrd", False),
                                              (".mhd", True), (".mhd", False)])
def test_other_formats_cut_short_or_missing_their_data_file_say_so(tmp_path, capfd, ending, compressed):
    """ITK's own reason for these is "No such file or directory" (a stale errno) or a page of
    Teem messages, and MetaIO prints lines of its own to stderr: the user needs one line saying
    the file is incomplete."""
    geometry = oblique_geometry()
    image = sitk.GetImageFromArray(np.arange(np.prod(geometry.shape_zyx), dtype=np.int16).reshape(geometry.shape_zyx))
    sitk.WriteImage(image, str(tmp_path / f"full{ending}"), compressed)
    data_file = {".mhd": "full.zraw" if compressed else "full.raw"}.get(ending, f"full{ending}")
    source = tmp_path / data_file
    data = source.read_bytes()
    source.write_bytes(data[: len(data) * 2 // 3])
    capfd.readouterr()
    with pytest.raises(InputError, match=rf"full{ending}: cannot read it as an image \(the file is cut short: only "
                                         r"[\d.]+% of its voxel data is there"):
        read_image(tmp_path / f"full{ending}")
    assert capfd.readouterr().err == ""
    if ending == ".mhd":
        source.unlink()
        with pytest.raises(InputError, match=rf"full.mhd: cannot read it as an image \(its data file {data_file} is missing"):
            read_image(tmp_path / "full.mhd")


def test_a_detached_nrrd_header_whose_data_file_is_missing_names_it(tmp_path):
    """Teem says "nrrdIoStateDataFileIterNext: couldn't open ..."; as for a .mhd, name the data file."""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 8, 8), np.int16)), str(tmp_path / "scan.nhdr"), False)
    (tmp_path / "scan.raw").unlink()
    with pytest.raises(InputError) as raised:
        read_image(tmp_path / "scan.nhdr")
    assert str(raised.value).endswith("scan.nhdr: cannot read it as an image (its data file scan.raw is missing: "
                                      "it must lie where the header's 'data file' field says)")


@pytest.mark.parametrize("name, content, reason", [
    ("gzipped.nii", None, "it is gzip-compressed, which a .nii file is not; rename it to end in .nii.gz"),
    ("notes.nii.gz", b"patient notes, not an image\n" * 20,
     "it is neither gzip-compressed, as a .nii.gz file is, nor a NIfTI image"),
    ("notes.nii", b"patient notes, not an image\n" * 20, "it has no NIfTI header at its start"),
])
def test_a_nifti_name_on_other_content_says_what_the_file_is(tmp_path, name, content, reason):
    """ITK picks its NIfTI reader by the name and then says only "Unable to determine ImageIO reader"."""
    path = tmp_path / name
    if content is None:   # a .nii.gz renamed to .nii
        geometry = oblique_geometry()
        write_image(np.zeros(geometry.shape_zyx, np.float32), geometry, tmp_path / "scan.nii.gz")
        (tmp_path / "scan.nii.gz").rename(path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as raised:
        read_image(path)
    said = str(raised.value)
    assert f"{name}: cannot read it as an image ({reason}" in said and "ImageIO" not in said, said


def test_values_beyond_float32_are_named_not_called_infinite(tmp_path):
    array = np.zeros((3, 4, 5), np.float64)
    array[1, 1, 1] = 3e40
    write_raw(tmp_path / "huge.mha", sitk.GetImageFromArray(array))
    with pytest.raises(InputError, match=r"huge.mha: has values up to 3e\+40, beyond the float32 range"):
        read_image(tmp_path / "huge.mha")


def test_a_complete_nifti_in_several_gzip_members_is_read(tmp_path):
    import gzip

    geometry = oblique_geometry()
    labels = (np.arange(np.prod(geometry.shape_zyx)) % 3).reshape(geometry.shape_zyx).astype(np.uint8)
    write_label(labels, geometry, tmp_path / "plain.nii")
    raw = (tmp_path / "plain.nii").read_bytes()
    # Some tools write (or concatenate) several gzip members: the trailer then holds only the last one's size.
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    back, _ = read_label(tmp_path / "members.nii.gz")
    np.testing.assert_array_equal(back, labels)


def write_metaimage_slices(folder, volume: np.ndarray, listed: bool) -> None:
    """`volume` (z, y, x) int16 as a MetaImage header `slices.mhd` and one raw file per slice,
    named in a LIST or by a pattern (`slice%02d.raw 1 N 1`) - how some scanners' exports and
    older tools store a series."""
    names = [f"slice{number:02d}.raw" for number in range(1, volume.shape[0] + 1)]
    for name, plane in zip(names, volume):
        (folder / name).write_bytes(plane.astype("<i2").tobytes())
    data_files = "LIST\n" + "\n".join(names) if listed else f"slice%02d.raw 1 {volume.shape[0]} 1"
    (folder / "slices.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"DimSize = {volume.shape[2]} {volume.shape[1]} {volume.shape[0]}\nElementSpacing = 0.8 0.9 2.5\n"
        f"ElementType = MET_SHORT\nElementDataFile = {data_files}\n")


@pytest.mark.parametrize("listed", [True, False], ids=["list", "pattern"])
def test_a_metaimage_stored_one_file_per_slice_is_read_and_a_missing_or_short_slice_named(tmp_path, capfd, listed):
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 60
    write_metaimage_slices(tmp_path, volume, listed)
    array, geometry = read_image(tmp_path / "slices.mhd")
    np.testing.assert_array_equal(array, volume)
    assert geometry.spacing == pytest.approx((0.8, 0.9, 2.5))

    third = tmp_path / "slice03.raw"
    third.write_bytes(third.read_bytes()[:15])      # an interrupted copy: 15 of 60 bytes
    capfd.readouterr()
    with pytest.raises(InputError, match=r"slices\.mhd: cannot read it as an image \(its slice file slice03\.raw "
                                         r"\(3 of 4\) is cut short: only 25% of its voxel data is there"):
        read_image(tmp_path / "slices.mhd")
    assert capfd.readouterr().err == ""             # not MetaIO's own "data not read completely" lines
    third.unlink()
    with pytest.raises(InputError, match=r"slices\.mhd: cannot read it as an image \(its slice file slice03\.raw "
                                         r"\(3 of 4\) is missing \(it must lie beside the header\)\)$"):
        read_image(tmp_path / "slices.mhd")
