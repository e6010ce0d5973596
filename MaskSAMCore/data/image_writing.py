"""Writing 3D images and label maps on their exact geometry (`image_io.ImageGeometry`).

Every writer goes through `MaskSAMCore.atomic`, so a reader never sees half a file, and reads the
written header back: a file format that cannot store the grid (TIFF has no origin or direction,
NIfTI no sheared direction) is an `InputError` instead of labels put somewhere else.
`check_format_keeps` gives the same answer before any work. Reading is in `image_io`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from MaskSAMCore.atomic import atomic_path, atomic_path_with_companions, file_type_suffix
from MaskSAMCore.data.image_io import ImageGeometry, read_geometry
from MaskSAMCore.data.nifti_transforms import copy_placement
from MaskSAMCore.data.nifti_values import is_nifti
from MaskSAMCore.data.read_failures import itk_warnings_off, sitk_reason
from MaskSAMCore.errors import InputError, describe_path

DETACHED_HEADER_ENDINGS = (".nhdr", ".mhd")   # the header and the voxels in two files


def write_label(array: np.ndarray, geometry: ImageGeometry, path: "os.PathLike[str] | str",
                placement_from: "Optional[os.PathLike[str] | str]" = None) -> None:
    """Write a label map (z, y, x) on `geometry` atomically. Stored as uint8 when the values fit,
    else int16; compressed where the format allows. `placement_from`: a NIfTI image whose qform
    and sform a NIfTI label map copies (`nifti_transforms.copy_placement`)."""
    array = np.asarray(array)
    if array.dtype.kind not in "iub":
        raise ValueError(f"a label map must have an integer dtype, got {array.dtype}")
    if array.size and array.min() >= 0 and array.max() <= 255:
        array = array.astype(np.uint8, copy=False)
    else:
        array = array.astype(np.int16, copy=False)
    _write_array(array, geometry, path, placement_from)


def write_image(array: np.ndarray, geometry: ImageGeometry, path: "os.PathLike[str] | str") -> None:
    """Write an image (z, y, x) on `geometry` atomically, keeping its dtype (bool becomes uint8,
    float64 becomes float32)."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    _write_array(array, geometry, path)


def _write_array(array: np.ndarray, geometry: ImageGeometry, path: "os.PathLike[str] | str",
                 placement_from: "Optional[os.PathLike[str] | str]" = None) -> None:
    if array.ndim != 3:
        raise ValueError(f"expected a (z, y, x) array, got shape {array.shape}")
    if tuple(array.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {array.shape} does not match the geometry's (z, y, x) {geometry.shape_zyx}")
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    write_sitk_image(image, path, placement_from)


def write_sitk_image(image: sitk.Image, path: "os.PathLike[str] | str",
                     placement_from: "Optional[os.PathLike[str] | str]" = None) -> None:
    """Atomically write a SimpleITK image; the format follows the file ending of `path`.

    The written header is read back: a format that cannot keep the image's grid (TIFF has no
    origin or direction, NIfTI no sheared direction such as a gantry tilt's) would otherwise
    put the image somewhere else without a word. Then nothing is written and `InputError` says so.
    """
    path = Path(path)
    detached = path.name.lower().endswith(DETACHED_HEADER_ENDINGS)
    with (atomic_path_with_companions if detached else atomic_path)(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as exc:
            raise InputError(f"{describe_path(path)}: cannot write an image here ({sitk_reason(exc)})") from None
        if placement_from is not None and is_nifti(placement_from) and is_nifti(path):
            copy_placement(placement_from, tmp)   # ITK still reads `image`'s grid: checked next
        problem = _format_problem(image, tmp)
        if problem:
            raise InputError(f"{describe_path(path)}: {problem}")


def check_format_keeps(geometry: ImageGeometry, path: "os.PathLike[str] | str") -> None:
    """`InputError` now, before any work, when the format of `path` cannot store `geometry`
    (what `write_sitk_image` would find at the end): a 2 x 2 x 2 image with its spacing, origin
    and direction is written to a temporary file of the same ending and read back."""
    ending = file_type_suffix(Path(path).name)
    probe = ImageGeometry((2, 2, 2), geometry.spacing, geometry.origin, geometry.direction)
    image = probe.apply(sitk.Image(2, 2, 2, sitk.sitkUInt8))
    with tempfile.TemporaryDirectory(prefix="masksam-format-") as folder:
        probe_file = Path(folder) / f"probe{ending}"
        try:
            with itk_warnings_off():   # ITK's multi-line "coerced" warning
                sitk.WriteImage(image, str(probe_file))
        except RuntimeError as exc:
            raise InputError(f"{describe_path(path)}: cannot write this kind of file ({sitk_reason(exc)})") from None
        problem = _format_problem(image, probe_file)
    if problem:
        raise InputError(f"{describe_path(path)}: {problem}")


def _format_problem(image: sitk.Image, written_file: Path) -> Optional[str]:
    """Why the file written from `image` is not on `image`'s grid, or None when it is."""
    try:
        written = read_geometry(written_file)
    except InputError:
        return "this file format does not read back as a 3D image; choose .nrrd, .mha or .nii.gz"
    differences = ImageGeometry.from_sitk(image).grid_differences(written)
    if not differences:
        return None
    named = ", ".join(differences[:-1]) + (" and " if len(differences) > 1 else "") + differences[-1]
    return (f"this file format cannot store the grid's {named} exactly "
            "(the labels would lie elsewhere); choose .nrrd or .mha")
