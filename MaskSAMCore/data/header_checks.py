"""Header values ITK reads without complaint but that would put the image somewhere else.

- A negative voxel spacing: ITK turns it positive and mirrors the axis; other programs (nibabel)
  take its absolute value and do not mirror, so left and right depend on the reader. Refused.
- A zero spacing, or a direction matrix whose columns are not unit vectors (a MetaImage
  ``TransformMatrix`` carrying a scale): the voxel size, and so every resampling, would be wrong.
  A direction matrix with (nearly) parallel axes (a damaged header) places no volume at all.
- Complex voxels (complex MR reconstructions): converting them to real numbers silently keeps
  the real part, not the magnitude a reader of the image sees.
- A zero, NaN or Inf spacing stored in a NIfTI or NRRD header, which ITK's readers replace by
  1 mm without a word (`stored_spacing` reads the header itself).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from MaskSAMCore.data.nifti_transforms import header_spacing
from MaskSAMCore.data.nifti_values import is_nifti
from MaskSAMCore.errors import InputError

AXES = "xyz"
UNIT_TOLERANCE = 1e-3   # NIfTI stores directions as float32 rotations: far below this
# Below this |determinant| of the direction matrix two voxel axes are within about 6 degrees of
# parallel: no scanner writes that (a gantry tilt of 30 degrees gives 0.87), a damaged or
# hand-edited header does, and ITK refuses an exactly singular one with a matrix dump.
PARALLEL_AXES_DETERMINANT = 0.1
COMPLEX_PIXELS = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)


def check_header_grid(where: str, spacing: Sequence[float], direction: Sequence[float]) -> None:
    """`InputError` naming the file (`where`) for a spacing or direction that misplaces voxels.

    spacing: (3,) as in the header (x, y, z); direction: (9,) row-major, as ITK gives them."""
    check_spacing(where, spacing)
    check_direction(where, direction)


def check_spacing(where: str, spacing: Sequence[float]) -> None:
    """`InputError` for a zero, NaN, Inf or negative spacing (x, y, z). Also called with the
    values a header stores: ITK's NIfTI and NRRD readers replace a zero or NaN one by 1 mm."""
    values = np.asarray(spacing, dtype=np.float64)
    for axis, value in zip(AXES, values):
        if not np.isfinite(value) or value == 0:
            raise InputError(f"{where}: its header gives the voxel spacing along {axis} as {value:g}; "
                             "fix the spacing in the header")
        if value < 0:
            raise InputError(f"{where}: its header gives a negative voxel spacing ({value:g} mm along {axis}), "
                             "which programs read differently (ITK mirrors the axis, nibabel does not); "
                             "write it with positive spacings")


def check_direction(where: str, direction: Sequence[float]) -> None:
    """`InputError` for a direction matrix (9 values, row-major) with NaN/Inf or scaled axes."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(matrix)):
        raise InputError(f"{where}: its header's direction matrix holds NaN or Inf values")
    lengths = np.linalg.norm(matrix, axis=0)
    if not np.any(lengths):   # what ITK makes of a MetaImage TransformMatrix holding NaN
        raise InputError(f"{where}: its header's direction matrix is unreadable (ITK reads it as all zeros; "
                         "NaN values?)")
    if np.any(np.abs(lengths - 1.0) > UNIT_TOLERANCE):
        shown = ", ".join(f"{length:.4g}" for length in lengths)
        raise InputError(f"{where}: its direction matrix scales the axes (column lengths {shown}, not 1), so "
                         "the voxel size would be misread; put the scale into the spacing")
    reason = parallel_axes(matrix)
    if reason:
        raise InputError(f"{where}: its header's direction matrix {reason}, so its voxels cannot be placed in "
                         "space; fix the direction in the header")


def parallel_axes(direction: np.ndarray) -> str:
    """Why a (3, 3) direction matrix of unit columns places no volume ("" when it does): two or
    three of its axes are (nearly) parallel."""
    determinant = float(np.linalg.det(direction))
    if abs(determinant) >= PARALLEL_AXES_DETERMINANT:
        return ""
    return f"has (nearly) parallel axes (determinant {determinant:.3g})"


def check_pixel_type(where: str, pixel_id: int) -> None:
    """`InputError` for complex voxels (SimpleITK pixel id `pixel_id`)."""
    if pixel_id in COMPLEX_PIXELS:
        raise InputError(f"{where}: has complex voxel values (a complex MR reconstruction?); save the "
                         "magnitude image and segment that")


NRRD_ENDINGS = (".nrrd", ".nhdr")
_NRRD_HEADER_BYTES = 64 * 1024


def stored_spacing(path: "os.PathLike[str] | str") -> Optional[List[float]]:
    """The voxel spacing (x, y, z) a NIfTI-1 or NRRD header stores, before ITK's reader
    replaces a zero or NaN value by 1 mm; None for other formats or when it stores none."""
    path = Path(path)
    if is_nifti(path):
        spacing = header_spacing(path)
        return [abs(value) for value in spacing] if spacing else None   # a negative one ITK reports itself
    if path.name.lower().endswith(NRRD_ENDINGS):
        return _nrrd_spacing(path)
    return None


def check_nrrd_units(where: str, path: "os.PathLike[str] | str") -> None:
    """Refuse an NRRD header giving its sizes in another unit than millimetres (``space units:
    "um" "um" "um"``): ITK, and 3D Slicer, drop the units and read the numbers as millimetres, so
    a micrometre scan would be segmented a thousand times too large, without a word."""
    path = Path(path)
    if not path.name.lower().endswith(NRRD_ENDINGS):
        return
    units = re.findall(r'"([^"]*)"', _nrrd_fields(path).get("space units", ""))
    other = sorted({unit for unit in units if unit.strip().lower() not in ("mm", "")})
    if other:
        raise InputError(f"{where}: its header gives the voxel sizes in {', '.join(other)} (NRRD space units); "
                         "MaskSAM, like ITK and 3D Slicer, reads NRRD sizes as millimetres: convert it to mm")


def _nrrd_fields(path: Path) -> Dict[str, str]:
    """The fields of an NRRD header (lower-case names), empty when unreadable."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_NRRD_HEADER_BYTES).decode("latin-1")
    except OSError:
        return {}
    fields = {}
    for line in head.splitlines()[1:]:
        if not line.strip():
            break   # the blank line ending the header
        key, separator, value = line.partition(":")
        if separator and not key.startswith("#"):
            fields[key.strip().lower()] = value.strip()
    return fields


def _nrrd_spacing(path: Path) -> Optional[List[float]]:
    """``spacings`` of an NRRD header, or the lengths of its ``space directions``."""
    fields = _nrrd_fields(path)
    if fields.get("dimension") != "3":
        return None   # other dimensions are refused with their own reason
    try:
        if "space directions" in fields:
            vectors = re.findall(r"\(([^)]*)\)", fields["space directions"])   # "none" axes have none
            return [float(np.linalg.norm([float(v) for v in vector.split(",")])) for vector in vectors][:3] or None
        if "spacings" in fields:
            return [float(value) for value in fields["spacings"].split()][:3] or None
    except ValueError:
        return None   # ITK reports a header it cannot parse itself
    return None
