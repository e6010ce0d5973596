"""Header values ITK reads without complaint but that would put the image somewhere else.

- A negative voxel spacing: ITK turns it positive and mirrors the axis; other programs (nibabel)
  take its absolute value and do not mirror, so left and right depend on the reader. Refused.
- A zero spacing, or a direction matrix whose columns are not unit vectors (a MetaImage
  ``TransformMatrix`` carrying a scale): the voxel size, and so every resampling, would be wrong.
- Complex voxels (complex MR reconstructions): converting them to real numbers silently keeps
  the real part, not the magnitude a reader of the image sees.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from MaskSAMCore.errors import InputError

AXES = "xyz"
UNIT_TOLERANCE = 1e-3   # NIfTI stores directions as float32 rotations: far below this
COMPLEX_PIXELS = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)


def check_header_grid(where: str, spacing: Sequence[float], direction: Sequence[float]) -> None:
    """`InputError` naming the file (`where`) for a spacing or direction that misplaces voxels.

    spacing: (3,) as in the header (x, y, z); direction: (9,) row-major, as ITK gives them."""
    values = np.asarray(spacing, dtype=np.float64)
    for axis, value in zip(AXES, values):
        if not np.isfinite(value) or value == 0:
            raise InputError(f"{where}: its header gives the voxel spacing along {axis} as {value:g}; "
                             "fix the spacing in the header")
        if value < 0:
            raise InputError(f"{where}: its header gives a negative voxel spacing ({value:g} mm along {axis}), "
                             "which programs read differently (ITK mirrors the axis, nibabel does not); "
                             "write it with positive spacings")
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(matrix)):
        raise InputError(f"{where}: its header's direction matrix holds NaN or Inf values")
    lengths = np.linalg.norm(matrix, axis=0)
    if np.any(np.abs(lengths - 1.0) > UNIT_TOLERANCE):
        shown = ", ".join(f"{length:.4g}" for length in lengths)
        raise InputError(f"{where}: its direction matrix scales the axes (column lengths {shown}, not 1), so "
                         "the voxel size would be misread; put the scale into the spacing")


def check_pixel_type(where: str, pixel_id: int) -> None:
    """`InputError` for complex voxels (SimpleITK pixel id `pixel_id`)."""
    if pixel_id in COMPLEX_PIXELS:
        raise InputError(f"{where}: has complex voxel values (a complex MR reconstruction?); save the "
                         "magnitude image and segment that")
