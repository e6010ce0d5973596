"""NumPy arrays with an LPS grid <-> image files (NRRD, NIfTI, MetaImage) through SimpleITK.

These are the files exchanged with the MaskSAMCore command line: the module writes the input
volume, the core writes a label map on exactly the input's grid, the module reads it back.
Writes are atomic (`MaskSAMCore.atomic`): a cancelled job never leaves half a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np

from MaskSAMCore.atomic import write_with
from MaskSAMCore.errors import InputError
from MaskSAMSegmentLib.geometry import LpsGrid


def _sitk():
    import SimpleITK  # imported on use: Slicer bundles it, but importing it costs a second

    return SimpleITK


def sitk_image_from_array(array: np.ndarray, grid: LpsGrid):
    """A SimpleITK image of a (z, y, x) array placed on `grid`."""
    if tuple(array.shape) != grid.shape_zyx:
        raise ValueError(f"array shape {array.shape} does not match grid {grid.shape_zyx}")
    image = _sitk().GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def grid_of_sitk_image(image) -> LpsGrid:
    """The LPS grid of a 3D SimpleITK image."""
    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got {image.GetDimension()}D")
    return LpsGrid(tuple(int(n) for n in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))


def write_array_image(array: np.ndarray, grid: LpsGrid, path: "os.PathLike[str] | str",
                      compress: bool = True) -> Path:
    """Atomically write `array` on `grid` to `path` (format from the suffix); returns the path."""
    path = Path(path)
    image = sitk_image_from_array(array, grid)
    write_with(path, lambda tmp: _sitk().WriteImage(image, str(tmp), compress))
    return path


def read_array_image(path: "os.PathLike[str] | str") -> Tuple[np.ndarray, LpsGrid]:
    """A (z, y, x) array and its LPS grid from an image file; `InputError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        image = _sitk().ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputError(f"{path}: cannot read image ({reason})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected one value per voxel, found {image.GetNumberOfComponentsPerPixel()}")
    return _sitk().GetArrayFromImage(image), grid_of_sitk_image(image)
