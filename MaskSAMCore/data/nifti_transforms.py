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

import os
import struct
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np

from MaskSAMCore.data.nifti_values import is_nifti, open_nifti

if TYPE_CHECKING:
    from MaskSAMCore.data.image_io import ImageGeometry

# Placements count as different when they put a corner of the image at least this far apart:
# half its smallest voxel, or 1/1000 of its diagonal for large images. Writers round: ITK's own
# float32 quaternion of an oblique scan lies ~0.05 mm off its sform at the far corner of a 120 mm
# phantom and up to ~0.2 mm off on a 480 mm one near a half turn; no reader notices either,
# while half a voxel moves every label.
TOLERANCE_VOXELS = 0.5
TOLERANCE_OF_DIAGONAL = 1e-3
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Millimetres per unit of the NIfTI-1 `xyzt_units` spatial code (ITK converts to millimetres).
_MM_PER_UNIT = {1: 1000.0, 2: 1.0, 3: 0.001}
# The fields of a NIfTI-1 header that place the voxels (offset, struct format): pixdim[0..3]
# (qfac and the spacing), the units, qform_code and sform_code, quatern_b..d and qoffset_x..z,
# srow_x..z.
_PLACEMENT_FIELDS = ((76, "4f"), (123, "B"), (252, "2h"), (256, "6f"), (280, "12f"))


@dataclass(frozen=True)
class _Placements:
    """A NIfTI-1 header's placements beside ITK's reading of it, in millimetres (RAS)."""

    qform: Optional[np.ndarray]   # 4x4, None when its code is 0
    sform: Optional[np.ndarray]
    itk: np.ndarray
    tolerance: float
    size: Sequence[int]

    def apart(self, first: np.ndarray, second: np.ndarray) -> float:
        return _largest_distance(first, second, self.size)

    def differs(self, first: np.ndarray, second: np.ndarray) -> bool:
        return self.apart(first, second) >= self.tolerance


def placement_warning(path: "os.PathLike[str] | str", geometry: "ImageGeometry") -> Optional[str]:
    """Why programs that read NIfTI by its sform (nibabel, FSL) may place the NIfTI-1 file `path`
    elsewhere than ITK's reading of it, `geometry`, or None. Said when the header sets neither
    transform, or when ITK's reading is not the sform's (ITK took the qform, or the voxel size
    from pixdim where the sform's is another).

    None also for files that are not NIfTI-1 or whose header cannot be read (the image reader
    reports those)."""
    found = _placements(path, geometry)
    if found is None:
        return None
    if found.qform is None and found.sform is None:
        return ("its header sets neither qform nor sform, so programs place it differently; MaskSAM reads it "
                "as ITK and 3D Slicer do (origin 0, LPS axes)")
    if found.sform is None or not found.differs(found.itk, found.sform):
        return None
    if found.qform is not None and found.differs(found.qform, found.sform):
        return (f"its qform and sform place the image up to {found.apart(found.qform, found.sform):.3g} mm apart; "
                "MaskSAM reads it as ITK and 3D Slicer do, by the qform (nibabel and FSL use the sform)")
    return (f"its sform places the image up to {found.apart(found.itk, found.sform):.3g} mm from where ITK and "
            "3D Slicer, and so MaskSAM, read it (they take the voxel size from pixdim, nibabel and FSL from "
            "the sform)")


def keeps_own_placement(path: "os.PathLike[str] | str", geometry: "ImageGeometry") -> bool:
    """Whether a NIfTI label map of the NIfTI-1 image `path` (read by ITK as `geometry`) must
    carry the image's own placement fields to overlay it in every program: some transform set in
    the header is not ITK's reading, or none is set (ITK would write its reading into both)."""
    found = _placements(path, geometry)
    if found is None:
        return False
    placements = [t for t in (found.qform, found.sform) if t is not None]
    return not placements or any(found.differs(found.itk, t) for t in placements)


def _placements(path: "os.PathLike[str] | str", geometry: "ImageGeometry") -> Optional[_Placements]:
    if not is_nifti(path):
        return None
    try:
        header = _header(Path(path))
    except (OSError, EOFError, ValueError, struct.error):
        return None
    if header is None:
        return None
    qform_code, sform_code, qform, sform = header
    extent = np.asarray(geometry.size, dtype=np.float64) * np.asarray(geometry.spacing, dtype=np.float64)
    tolerance = max(TOLERANCE_VOXELS * min(geometry.spacing), TOLERANCE_OF_DIAGONAL * float(np.linalg.norm(extent)))
    return _Placements(qform=qform if qform_code > 0 else None, sform=sform if sform_code > 0 else None,
                       itk=_itk_affine(geometry.spacing, geometry.origin, geometry.direction),
                       tolerance=tolerance, size=tuple(geometry.size))


def copy_placement(source: "os.PathLike[str] | str", target: "os.PathLike[str] | str") -> None:
    """Give the NIfTI-1 file `target` (of the same size) the placement fields of `source`: qfac,
    pixdim, both codes, the quaternion, its offset and the sform rows. For a label map written on
    ITK's reading of an image whose qform and sform disagree, so that every program puts the
    labels where it puts the image."""
    header, read_order = _raw_header(source)
    target = Path(target)
    with open_nifti(target) as stream:
        data = bytearray(stream.read())
    write_order = _byte_order(data)
    if read_order is None or write_order is None:
        raise ValueError(f"{source} or {target} is not a NIfTI-1 file")
    for offset, kind in _PLACEMENT_FIELDS:   # value by value: the two may differ in byte order
        struct.pack_into(write_order + kind, data, offset, *struct.unpack_from(read_order + kind, header, offset))
    with open_nifti(target, "wb") as stream:
        stream.write(bytes(data))


def header_spacing(path: "os.PathLike[str] | str") -> Optional[Tuple[float, float, float]]:
    """pixdim[1..3] as the NIfTI-1 header stores them (ITK reads a zero or NaN one as 1 mm);
    None when `path` is no readable NIfTI-1 file of at least 3 dimensions."""
    try:
        raw, order = _raw_header(path)
        if order is None or struct.unpack(order + "h", raw[40:42])[0] < 3:
            return None
        x, y, z = struct.unpack(order + "3f", raw[80:92])
    except (OSError, EOFError, ValueError, struct.error):
        return None
    return x, y, z


def _raw_header(path: "os.PathLike[str] | str") -> Tuple[bytes, Optional[str]]:
    """The 348 header bytes and their byte order ('<' or '>'; None when not NIfTI-1)."""
    with open_nifti(path) as stream:
        raw = stream.read(348)
    return raw, _byte_order(raw)


def _byte_order(header: bytes) -> Optional[str]:
    for order in ("<", ">"):
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            return order
    return None


def _header(path: Path):
    """(qform_code, sform_code, qform 4x4, sform 4x4) in RAS millimetres, or None when not NIfTI-1."""
    raw, order = _raw_header(path)
    if order is None:
        return None
    pixdim = struct.unpack(order + "8f", raw[76:108])
    qform_code, sform_code = struct.unpack(order + "2h", raw[252:256])
    b, c, d, qx, qy, qz = struct.unpack(order + "6f", raw[256:280])
    rows = struct.unpack(order + "12f", raw[280:328])
    sform = np.vstack([np.reshape(rows, (3, 4)), [0.0, 0.0, 0.0, 1.0]])
    qform = _quaternion_affine(b, c, d, (qx, qy, qz), pixdim)
    to_mm = np.diag([_MM_PER_UNIT.get(raw[123] & 0x07, 1.0)] * 3 + [1.0])   # as ITK reads it
    return int(qform_code), int(sform_code), to_mm @ qform, to_mm @ sform


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
