"""Header values that would misplace or misread voxels (`header_checks`), and NIfTI files whose qform and
sform disagree (`nifti_transforms`): the tolerances, units and handedness of the comparison."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MaskSAMCore.errors import InputError

ROTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("spacing, direction, problem", [
    ((1.2, 1.2, -0.5), ROTATION, "negative voxel spacing (-0.5 mm along z)"),
    ((1.2, 1.2, 0.0), ROTATION, "voxel spacing along z as 0"),
    ((1.2, math.nan, 2.5), ROTATION, "voxel spacing along y as nan"),
    ((1.2, 1.2, 2.5), (1, 0, 0, 0, 1, 0, 0, 0, 2), "column lengths 1, 1, 2, not 1"),      # one axis scaled
    ((1.2, 1.2, 2.5), (0.5, 0, 0, 0, 0.5, 0, 0, 0, 0.5), "column lengths 0.5, 0.5, 0.5"),  # shrunk
    ((1.2, 1.2, 2.5), (1.005, 0, 0, 0, 1, 0, 0, 0, 1), "column lengths 1.005, 1, 1"),       # 0.5 % too long
    ((1.2, 1.2, 2.5), (math.nan, 0, 0, 0, 1, 0, 0, 0, 1), "NaN or Inf"),
])
def test_every_axis_and_column_of_a_header_grid_is_checked(spacing, direction, problem):
    from MaskSAMCore.data.header_checks import check_header_grid

    with pytest.raises(InputError, match="scan.nrrd: ") as info:
        check_header_grid("scan.nrrd", spacing, direction)
    assert problem in str(info.value)


def test_a_float32_rotation_is_not_called_a_scale():
    from MaskSAMCore.data.header_checks import check_header_grid

    angle = 0.3
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    check_header_grid("scan.nii", (1.2, 1.2, 2.5), rotation.astype(np.float32).ravel())


def test_complex128_voxels_are_refused(tmp_path):
    from MaskSAMCore.data.image_io import read_image

    voxels = (np.arange(6 * 8 * 8) % 50).reshape(6, 8, 8)
    path = tmp_path / "complex.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray((voxels + 1j * voxels).astype(np.complex128)), str(path))
    with pytest.raises(InputError, match="complex voxel values"):
        read_image(path)


def _nifti(path: Path, spacing=(1.0, 1.0, 1.0), size_zyx=(6, 8, 8), direction=None) -> bytearray:
    image = sitk.GetImageFromArray(np.random.rand(*size_zyx).astype(np.float32))
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return bytearray(path.read_bytes())


def _warning_for_qform_moved(tmp_path, by_mm, spacing=(1.0, 1.0, 1.0)):
    from MaskSAMCore.data.image_io import read_geometry
    from MaskSAMCore.data.nifti_transforms import placement_warning

    path = tmp_path / "scan.nii"
    data = _nifti(path, spacing)
    struct.pack_into("<h", data, 254, 2)                                          # aligned sform: ITK reads the qform
    struct.pack_into("<f", data, 268, struct.unpack_from("<f", data, 268)[0] + by_mm)   # qoffset_x
    path.write_bytes(bytes(data))
    return placement_warning(path, read_geometry(path))


@pytest.mark.parametrize("by_mm, warned", [(0.3, False), (1.0, True)])
def test_placements_half_a_voxel_apart_are_two_placements(tmp_path, by_mm, warned):
    """1 mm voxels on an 8 x 8 x 6 image: the tolerance is half a voxel (0.5 mm)."""
    assert (_warning_for_qform_moved(tmp_path, by_mm) is not None) == warned


@pytest.mark.parametrize("by_mm, warned", [(0.5, False), (2.0, True)])
def test_on_a_long_image_the_tolerance_is_a_thousandth_of_its_diagonal(tmp_path, by_mm, warned):
    """0.1 x 100 x 100 mm voxels: a 1000 mm diagonal, so 1 mm, not half the 0.1 mm voxel."""
    assert (_warning_for_qform_moved(tmp_path, by_mm, spacing=(0.1, 100.0, 100.0)) is not None) == warned


def _in_metres(data: bytearray) -> bytearray:
    """The same placement in metres (xyzt_units code 1) instead of millimetres."""
    pixdim = struct.unpack_from("<4f", data, 76)
    struct.pack_into("<4f", data, 76, pixdim[0], *(v / 1000 for v in pixdim[1:]))
    quatern = struct.unpack_from("<6f", data, 256)
    struct.pack_into("<6f", data, 256, *quatern[:3], *(v / 1000 for v in quatern[3:]))
    struct.pack_into("<12f", data, 280, *(v / 1000 for v in struct.unpack_from("<12f", data, 280)))
    data[123] = (data[123] & 0xF8) | 1
    return data


def test_a_nifti_in_metres_is_compared_in_millimetres(tmp_path):
    from MaskSAMCore.data.image_io import read_geometry
    from MaskSAMCore.data.nifti_transforms import keeps_own_placement, placement_warning

    path = tmp_path / "metres.nii"
    path.write_bytes(bytes(_in_metres(_nifti(path, (1.2, 1.2, 2.5)))))
    geometry = read_geometry(path)
    assert geometry.spacing == pytest.approx((1.2, 1.2, 2.5))
    assert placement_warning(path, geometry) is None and not keeps_own_placement(path, geometry)


def test_the_units_travel_with_the_placement(tmp_path):
    from MaskSAMCore.data.image_io import read_geometry
    from MaskSAMCore.data.nifti_transforms import copy_placement

    source = tmp_path / "metres.nii"
    data = _in_metres(_nifti(source, (1.2, 1.2, 2.5)))
    struct.pack_into("<h", data, 254, 2)
    source.write_bytes(bytes(data))
    target = tmp_path / "labels.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 8, 8), np.uint8)), str(target))
    copy_placement(source, target)
    assert target.read_bytes()[123] == source.read_bytes()[123]
    assert read_geometry(target).grid_differences(read_geometry(source)) == []


def test_a_left_handed_nifti_with_a_moved_sform_says_how_far(tmp_path):
    """qfac = -1 (ITK's left-handed grid): the qform mirrors z; ignoring qfac puts it elsewhere."""
    from MaskSAMCore.data.image_io import read_geometry
    from MaskSAMCore.data.nifti_transforms import placement_warning

    path = tmp_path / "left.nii"
    data = _nifti(path, (1.2, 1.2, 2.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    assert struct.unpack_from("<f", data, 76)[0] == -1.0
    struct.pack_into("<h", data, 254, 2)
    struct.pack_into("<f", data, 292, struct.unpack_from("<f", data, 292)[0] + 50.0)
    path.write_bytes(bytes(data))
    assert "qform and sform place the image up to 50 mm apart" in placement_warning(path, read_geometry(path))


@pytest.mark.parametrize("value", [0.0, math.nan, math.inf])
def test_a_nifti_slice_spacing_of_zero_or_nan_is_refused_not_read_as_1_mm(tmp_path, value):
    """ITK's NIfTI reader turns a pixdim of 0, NaN or Inf into 1 mm before the header check sees it."""
    from MaskSAMCore.data.image_io import read_image

    path = tmp_path / "scan.nii"
    data = _nifti(path, (1.2, 1.2, 2.5))
    struct.pack_into("<f", data, 88, value)      # pixdim[3]
    struct.pack_into("<h", data, 254, 0)         # no sform: the qform alone places the voxels
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"scan.nii: its header gives the voxel spacing along z as {value:g}"):
        read_image(path)


@pytest.mark.parametrize("field", ["spacings: 1.2 1.2 nan",
                                   "space: left-posterior-superior\nspace directions: (1.2,0,0) (0, 0, 0) (0,0,2.5)"])
def test_an_nrrd_spacing_of_nan_or_zero_is_refused_not_read_as_1_mm(tmp_path, field):
    from MaskSAMCore.data.image_io import read_geometry

    header = f"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 6\nendian: little\n{field}\nencoding: raw\n\n"
    path = tmp_path / "scan.nrrd"
    path.write_bytes(header.encode() + np.zeros(6 * 8 * 8, "<i2").tobytes())
    with pytest.raises(InputError, match="scan.nrrd: its header gives the voxel spacing along (z as nan|y as 0)"):
        read_geometry(path)


@pytest.mark.parametrize("units, refused", [('"um" "um" "um"', "um"), ('"mm" "mm" "cm"', "cm"),
                                            ('"mm" "mm" "mm"', None), ('"MM" "" "mm"', None)])
def test_an_nrrd_in_micrometres_is_refused_not_read_as_millimetres(tmp_path, units, refused):
    """ITK drops NRRD's space units: a micrometre scan would be read 1000 times too large."""
    from MaskSAMCore.data.image_io import read_geometry

    header = ("NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 6\nendian: little\nspace: left-posterior-superior\n"
              f"space directions: (800,0,0) (0,800,0) (0,0,2500)\nspace units: {units}\nencoding: raw\n\n")
    path = tmp_path / "scan.nrrd"
    path.write_bytes(header.encode() + np.zeros(6 * 8 * 8, "<i2").tobytes())
    if refused is None:
        assert read_geometry(path).spacing == pytest.approx((800, 800, 2500))
        return
    with pytest.raises(InputError, match=rf"scan.nrrd: its header gives the voxel sizes in {refused} \(NRRD space "
                                         r"units\); MaskSAM, like ITK and 3D Slicer, reads NRRD sizes as millimetres"):
        read_geometry(path)


def test_a_metaimage_direction_holding_nan_is_called_unreadable_not_scaled(tmp_path):
    from MaskSAMCore.data.image_io import read_image

    path = tmp_path / "scan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(path))
    path.write_bytes(path.read_bytes().replace(b"TransformMatrix = 1 0 0", b"TransformMatrix = nan 0 0"))
    with pytest.raises(InputError, match="scan.mha: its header's direction matrix is unreadable"):
        read_image(path)
