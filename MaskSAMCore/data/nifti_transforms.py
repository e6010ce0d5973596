"""The two placements a NIfTI-1 header can give, and a warning when readers would disagree.

A NIfTI-1 file may place its voxels twice: the qform (a rotation, pixdim and an offset) and the
sform (any affine), each switched on by its code. ITK - and so SimpleITK, 3D Slicer and MaskSAM -
picks one by its own rules; nibabel, FSL and FreeSurfer prefer the sform. When the two disagree,
or when neither is set (ITK then assumes origin 0 and LPS axes, others use other defaults), a
label map written on ITK's reading overlays the image in ITK-based tools only. MaskSAM keeps the
reading of ITK and 3D Slicer, says so once per file (`placement_warning`), and gives a NIfTI
label map of such an image the image's own placement fields (`copy_placement`).
"""

from __future__ import annotations

import gzip
import os
import struct
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from MaskSAMCore.data.nifti_values import is_nifti

if TYPE_CHECKING:
    from MaskSAMCore.data.image_io import ImageGeometry

# Placements count as different when they put a corner of the image at least this fraction of
# its smallest voxel apart. Writers round: ITK's own qform of an oblique scan (a float32
# quaternion) lies up to ~0.05 mm from its sform at the far corner of a 120 mm phantom, which no
# reader would notice; half a voxel moves every label.
TOLERANCE_VOXELS = 0.5
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# The fields of a NIfTI-1 header that place the voxels (offset, struct format): pixdim[0..3]
# (qfac and the spacing), qform_code and sform_code, quatern_b..d and qoffset_x..z, srow_x..z.
_PLACEMENT_FIELDS = ((76, "4f"), (252, "2h"), (256, "6f"), (280, "12f"))


def placement_warning(path: "os.PathLike[str] | str", geometry: "ImageGeometry") -> Optional[str]:
    """Why other programs may place the NIfTI-1 file `path` elsewhere than ITK's reading of it,
    `geometry`, or None.

    None also for files that are not NIfTI-1 or whose header cannot be read (the image reader
    reports those)."""
    if not is_nifti(path):
        return None
    try:
        header = _header(Path(path))
    except (OSError, EOFError, ValueError, struct.error):
        return None
    if header is None:
        return None
    qform_code, sform_code, qform, sform = header
    if qform_code == 0 and sform_code == 0:
        return ("its header sets neither qform nor sform, so programs place it differently; MaskSAM reads it "
                "as ITK and 3D Slicer do (origin 0, LPS axes)")
    if qform_code == 0 or sform_code == 0:
        return None
    tolerance = TOLERANCE_VOXELS * min(geometry.spacing)
    apart = _largest_distance(qform, sform, geometry.size)
    if apart < tolerance:
        return None
    itk = _itk_affine(geometry.spacing, geometry.origin, geometry.direction)
    uses_qform = _largest_distance(itk, qform, geometry.size) < _largest_distance(itk, sform, geometry.size)
    used = "qform" if uses_qform else "sform"
    return (f"its qform and sform place the image up to {apart:.3g} mm apart; MaskSAM reads it as ITK and "
            f"3D Slicer do, by the {used} (nibabel and FSL prefer the sform)")


def copy_placement(source: "os.PathLike[str] | str", target: "os.PathLike[str] | str") -> None:
    """Give the NIfTI-1 file `target` (of the same size) the placement fields of `source`: qfac,
    pixdim, both codes, the quaternion, its offset and the sform rows. For a label map written on
    ITK's reading of an image whose qform and sform disagree, so that every program puts the
    labels where it puts the image."""
    with _opener(Path(source))(source, "rb") as stream:
        header = stream.read(348)
    target = Path(target)
    with _opener(target)(target, "rb") as stream:
        data = bytearray(stream.read())
    read_order, write_order = _byte_order(header), _byte_order(data)
    if read_order is None or write_order is None:
        raise ValueError(f"{source} or {target} is not a NIfTI-1 file")
    for offset, kind in _PLACEMENT_FIELDS:   # value by value: the two may differ in byte order
        struct.pack_into(write_order + kind, data, offset, *struct.unpack_from(read_order + kind, header, offset))
    with _opener(target)(target, "wb") as stream:
        stream.write(bytes(data))


def _opener(path: Path):
    return gzip.open if path.name.lower().endswith(".gz") else open


def _byte_order(header: bytes) -> Optional[str]:
    for order in ("<", ">"):
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            return order
    return None


def _header(path: Path):
    """(qform_code, sform_code, qform 4x4, sform 4x4) in RAS, or None when not NIfTI-1."""
    with _opener(path)(path, "rb") as stream:
        raw = stream.read(348)
    order = _byte_order(raw)
    if order is None:
        return None
    pixdim = struct.unpack(order + "8f", raw[76:108])
    qform_code, sform_code = struct.unpack(order + "2h", raw[252:256])
    b, c, d, qx, qy, qz = struct.unpack(order + "6f", raw[256:280])
    rows = struct.unpack(order + "12f", raw[280:328])
    sform = np.vstack([np.reshape(rows, (3, 4)), [0.0, 0.0, 0.0, 1.0]])
    qform = _quaternion_affine(b, c, d, (qx, qy, qz), pixdim)
    return int(qform_code), int(sform_code), qform, sform


def _quaternion_affine(b: float, c: float, d: float, offset, pixdim) -> np.ndarray:
    """The qform as a 4x4 affine (NIfTI-1 "method 2")."""
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    scale = np.diag([abs(pixdim[1]), abs(pixdim[2]), qfac * abs(pixdim[3])])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ scale
    affine[:3, 3] = offset
    return affine


def _itk_affine(spacing, origin, direction) -> np.ndarray:
    """ITK's reading (LPS) as a RAS voxel-to-world affine."""
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ np.reshape(direction, (3, 3)) @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def _largest_distance(first: np.ndarray, second: np.ndarray, size) -> float:
    """The largest distance (mm) between where two affines put a corner voxel of the image."""
    corners = np.array([[*corner, 1.0] for corner in product(*[(0, n - 1) for n in size])]).T
    return float(np.linalg.norm((first - second)[:3] @ corners, axis=0).max())
