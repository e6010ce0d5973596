"""Limits of image reading and writing: channels a fraction of a voxel off another grid,
label values past 255 and past int16, float64 written as float32, NaN found past a NIfTI
header extension, a NIfTI one byte short."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import SimpleITK as sitk

from MaskSAMCore.data.image_io import ImageGeometry, read_case, read_image, read_label
from MaskSAMCore.data.image_writing import write_image, write_label
from MaskSAMCore.errors import InputError

IDENTITY = tuple(np.eye(3).ravel())
GRID = ImageGeometry((5, 4, 3), (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), IDENTITY)


def test_a_channel_with_a_slightly_different_spacing_or_origin_is_on_another_grid(tmp_path):
    """0.5 % more spacing, or an origin 0.05 mm away, puts a second
    channel's voxels elsewhere (0.5 % over 300 voxels is 1.5 voxels): refused."""
    write_image(np.ones(GRID.shape_zyx, np.int16), GRID, tmp_path / "c_0000.nrrd")
    wider = ImageGeometry(GRID.size, (0.8 * 1.005, 0.9, 2.5), GRID.origin, IDENTITY)
    write_image(np.ones(GRID.shape_zyx, np.int16), wider, tmp_path / "c_0001.nrrd")
    with pytest.raises(InputError, match="its spacing differ"):
        read_case([tmp_path / "c_0000.nrrd", tmp_path / "c_0001.nrrd"])
    moved = ImageGeometry(GRID.size, GRID.spacing, (10.05, -20.0, 30.0), IDENTITY)
    write_image(np.ones(GRID.shape_zyx, np.int16), moved, tmp_path / "c_0002.nrrd")
    with pytest.raises(InputError, match="its origin differ"):
        read_case([tmp_path / "c_0000.nrrd", tmp_path / "c_0002.nrrd"])


@pytest.mark.parametrize("ending", [".nrrd", ".nii.gz"])
def test_label_value_256_survives_writing(tmp_path, ending):
    """Label 256 must not wrap to background."""
    labels = np.zeros(GRID.shape_zyx, np.int16)
    labels[1, 2, 3] = 256
    labels[0, 0, 0] = 255
    write_label(labels, GRID, tmp_path / f"l{ending}")
    read, _ = read_label(tmp_path / f"l{ending}")
    assert read[1, 2, 3] == 256 and read[0, 0, 0] == 255


def test_a_float64_image_is_written_as_float32(tmp_path):
    """Write_image documents float64 -> float32 (half the disk space)."""
    write_image(np.full(GRID.shape_zyx, 0.1, np.float64), GRID, tmp_path / "f.nrrd")
    assert sitk.ReadImage(str(tmp_path / "f.nrrd")).GetPixelID() == sitk.sitkFloat32


def test_a_label_value_beyond_int16_is_refused_not_wrapped(tmp_path):
    """40000 would become -25536 in the int16 label array."""
    labels = np.zeros(GRID.shape_zyx, np.uint16)
    labels[1, 1, 1] = 40000
    image = GRID.apply(sitk.GetImageFromArray(labels))
    sitk.WriteImage(image, str(tmp_path / "big.nrrd"))
    with pytest.raises(InputError, match="label value 40000 is too large"):
        read_label(tmp_path / "big.nrrd")


def _nifti_with_extension(path, values: np.ndarray) -> None:
    """An uncompressed NIfTI-1 float32 file with a 16-byte header extension between the header
    and the voxels (vox_offset 368), as dcm2niix and AFNI write them."""
    sitk.WriteImage(GRID.apply(sitk.GetImageFromArray(values.astype(np.float32))), str(path))
    data = bytearray(path.read_bytes())
    offset = int(struct.unpack("<f", data[108:112])[0])
    assert offset == 352
    extension = struct.pack("<ii", 16, 0) + b"\0" * 8     # esize 16, ecode 0, 8 bytes of content
    data[108:112] = struct.pack("<f", 368.0)
    path.write_bytes(bytes(data[:348]) + b"\x01\0\0\0" + extension + bytes(data[352:]))


def test_nan_at_the_end_of_a_nifti_with_a_header_extension_is_found(tmp_path):
    """The scan starts where the voxels start."""
    values = np.ones(GRID.shape_zyx, np.float32)
    values[-1, -1, -1] = np.nan       # the last voxel: missed by a scan starting 16 bytes early
    path = tmp_path / "ext.nii"
    _nifti_with_extension(path, values)
    with pytest.raises(InputError, match="1 NaN/Inf voxel"):
        read_image(path)


def test_a_nifti_one_byte_short_is_refused(tmp_path):
    """The last voxel's last byte missing is a file cut short too."""
    path = tmp_path / "short.nii"
    write_image(np.ones(GRID.shape_zyx, np.int16), GRID, path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(InputError, match="cut short \\(1 bytes"):
        read_image(path)
