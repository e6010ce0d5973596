"""Reading 3D images and label maps without ever losing their place in the world (`ImageGeometry`).

Arrays are ``(z, y, x)`` as SimpleITK's ``GetArrayFromImage`` returns them (multi-channel images
``(C, z, y, x)``); the geometry beside them (`ImageGeometry`) is in ITK order ``(x, y, z)``, LPS
world coordinates, millimetres. Every reader rejects what the rest of the pipeline cannot use (2D,
4D, vector pixels, NaN/Inf) with one `InputError` line naming the file. Writing is in
`image_writing` (which imports this module, never the other way round).

NIfTI stores origin, spacing and direction as float32, so a NIfTI round trip keeps the geometry to
float32 precision (about 1e-7 relative); NRRD and MHA keep it to double precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from MaskSAMCore.data.dicom_series import DicomSeries, read_series
from MaskSAMCore.data.header_checks import (check_header_grid, check_nrrd_units, check_pixel_type, check_spacing,
                                            stored_spacing)
from MaskSAMCore.data.nifti_values import count_non_finite_voxels, is_nifti, missing_bytes
from MaskSAMCore.data.read_failures import (METAIMAGE_ENDINGS, itk_warnings_off, metaimage_data_problem,
                                            unreadable_image_reason)
from MaskSAMCore.errors import InputError, describe_path

# Two grids whose origins are less than this many voxels apart are one grid. Float32 storage
# (NIfTI) rounds an origin by 1e-4 voxel (a 0.7 mm voxel 1.2 m from the world's origin), and two
# series of one scan (a CT and its ADC map, exported by different tools) can differ by a few
# micrometres, positions being rounded to DICOM's decimal strings: both pass. A hundredth of a voxel
# moves nothing a network or a metric can see; a tenth would (a 0.12 mm shift of 0.7 mm voxels).
ORIGIN_TOLERANCE_VOXELS = 1e-2


@dataclass(frozen=True)
class ImageGeometry:
    """Where a 3D voxel grid lies in the world, in ITK order.

    size: voxels along (x, y, z); spacing: mm along (x, y, z); origin: LPS mm of voxel (0, 0, 0);
    direction: the 3x3 direction cosine matrix, row-major, columns are the x, y, z axes.
    """

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    def __post_init__(self) -> None:
        # Normalise to plain Python tuples so equality, hashing and JSON behave predictably.
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        if len(self.size) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("ImageGeometry needs 3 sizes, 3 spacings, 3 origin values and 9 direction values")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "ImageGeometry":
        if image.GetDimension() != 3:
            raise ValueError(f"ImageGeometry is for 3D images, got {image.GetDimension()}D")
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ImageGeometry":
        return cls(tuple(data["size"]), tuple(data["spacing"]), tuple(data["origin"]), tuple(data["direction"]))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    # -- derived --------------------------------------------------------------------------------
    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        """The NumPy shape of an array on this grid, (z, y, x)."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def spacing_zyx(self) -> Tuple[float, float, float]:
        """Spacing in array order (z, y, x), mm."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """(3, 3) float64; column i is the world direction of ITK axis i (x, y, z)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Give `image` (which must have this size) this spacing, origin and direction; returns it."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match the geometry's size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def same_grid(self, other: "ImageGeometry", tol: float = 1e-4) -> bool:
        """Same size, spacing equal within `tol` (relative for values larger than 1 mm, absolute
        otherwise), direction cosines within `tol`, origins less than `ORIGIN_TOLERANCE_VOXELS` apart."""
        return not self.grid_differences(other, tol)

    def grid_differences(self, other: "ImageGeometry", tol: float = 1e-4) -> list:
        """Names of what differs ("size", "spacing", "origin", "direction"); empty if the same grid."""
        differences = []
        if self.size != other.size:
            differences.append("size")
        if not np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol):
            differences.append("spacing")
        if self.origin_offset_voxels(other) >= ORIGIN_TOLERANCE_VOXELS:
            differences.append("origin")
        if not np.allclose(self.direction, other.direction, rtol=0.0, atol=tol):
            differences.append("direction")
        return differences

    def origin_offset_voxels(self, other: "ImageGeometry") -> float:
        """How far `other`'s origin is from this one, in voxels (of the smaller voxel edge of
        either grid). In voxels, not mm nor relative to the coordinates: a shift that moves every
        voxel by a tenth of itself matters as much 1.2 m from the world's origin as next to it."""
        edge = min(*self.spacing, *other.spacing)
        distance = float(np.linalg.norm(np.subtract(self.origin, other.origin)))
        return distance / edge if edge > 0 else (0.0 if distance == 0 else float("inf"))

    def describe(self) -> str:
        """Short human-readable text, e.g. for messages."""
        spacing = "x".join(f"{s:.4g}" for s in self.spacing)
        return f"size {'x'.join(map(str, self.size))}, spacing {spacing} mm"


# -- reading ----------------------------------------------------------------------------------------

def read_sitk_image(path: "os.PathLike[str] | str | DicomSeries", layers: bool = False) -> sitk.Image:
    """Read a scalar 3D image as a SimpleITK image, or raise `InputError` naming the file.

    A 4D image whose fourth axis has one sample is reduced to 3D (some converters write those);
    a 3D image with a single slice stays 3D. A `DicomSeries` (already checked) is read slice by slice.
    `layers`: several values per voxel are allowed (the layers of a Slicer segmentation file).
    """
    if isinstance(path, DicomSeries):
        return read_series(path)
    path = Path(path)
    where = describe_path(path)
    if not path.exists():
        raise InputError(f"{where}: file not found")
    if path.is_dir():
        raise InputError(f"{where}: is a folder, expected an image file")
    reader = _header_reader(path)
    _check_complete(path)
    try:
        with itk_warnings_off():
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{where}: cannot read it as an image ({unreadable_image_reason(path, exc)})") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0  # Extract collapses axes of size 0, keeping the 3x3 part of the direction
        image = sitk.Extract(image, size, [0, 0, 0, 0])
    if image.GetDimension() != 3:
        size = "x".join(map(str, image.GetSize()))
        raise InputError(f"{where}: is a {image.GetDimension()}D image (size {size}); a 3D volume is needed")
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1 and not layers:
        raise InputError(
            f"{where}: has {components} values per voxel (vector/RGB pixels); a scalar (grey-value) image is needed")
    return image


def _header_reader(path: Path) -> sitk.ImageFileReader:
    """A reader of `path` whose header has been read and checked (`header_checks`): what ITK
    would quietly reinterpret (a negative spacing) is refused before any voxel is read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{describe_path(path)}: cannot read it as an image "
                         f"({unreadable_image_reason(path, exc)})") from None
    check_pixel_type(describe_path(path), reader.GetPixelID())
    dimension = reader.GetDimension()
    if dimension >= 3:   # fewer: refused as not 3D by the caller
        direction = np.asarray(reader.GetDirection()).reshape(dimension, dimension)[:3, :3]
        check_header_grid(describe_path(path), reader.GetSpacing()[:3], direction.ravel())
        stored = stored_spacing(path)
        if stored:
            check_spacing(describe_path(path), stored)
        check_nrrd_units(describe_path(path), path)
    return reader


def _check_complete(path: Path) -> None:
    """A file cut short (an interrupted copy or download) is refused: ITK reads a NIfTI file cut
    short without complaint and fills the rest with zeros (a scan would be segmented, or a label
    map scored, half empty); MetaIO refuses one but prints its own lines first."""
    where = describe_path(path)
    if path.name.lower().endswith(METAIMAGE_ENDINGS):
        reason = metaimage_data_problem(path)
        if reason:
            raise InputError(f"{where}: cannot read it as an image ({reason})")
    if not is_nifti(path):
        return
    try:
        missing = missing_bytes(path)
    except ValueError as exc:
        raise InputError(f"{where}: cannot read it as an image ({exc})") from None
    if missing:
        raise InputError(f"{where}: the file is cut short ({missing} bytes of voxel data "
                         "missing); copy or download it again")


def unreadable_file_problem(path: "os.PathLike[str] | str") -> Optional[str]:
    """Why image file `path` cannot be read, judged from its header and its size alone (no voxel
    data is decoded, but for a gzip file whose trailer disagrees with its header): the message
    `read_sitk_image` would raise, or None for a file that looks whole."""
    path = Path(path)
    try:
        _header_reader(path)
        _check_complete(path)
    except InputError as exc:
        return str(exc)
    return None


def read_image(path: "os.PathLike[str] | str | DicomSeries") -> Tuple[np.ndarray, ImageGeometry]:
    """Read one image channel: (array (z, y, x) float32, geometry). Raises `InputError` for a
    missing, unreadable, non-3D or vector image, or one with NaN/Inf values. A constant image is
    accepted here (whoever uses it decides whether that is a problem)."""
    image = read_sitk_image(path)
    array = sitk.GetArrayFromImage(image)
    if array.dtype == np.float64:
        _check_fits_float32(array, path)
    array = array.astype(np.float32, copy=False)
    bad = _count_non_finite(array, image, path)
    if bad:
        raise InputError(f"{describe_path(path)}: contains {bad} NaN/Inf voxel(s)")
    return array, ImageGeometry.from_sitk(image)


def _count_non_finite(array: np.ndarray, image: sitk.Image, path: "os.PathLike[str] | str | DicomSeries") -> int:
    """NaN/Inf voxels of `array`, read from `path` as `image`. ITK's NIfTI reader turns NaN/Inf
    into 0, so for a float NIfTI file whose array looks clean the file itself is scanned."""
    bad = int(array.size - np.count_nonzero(np.isfinite(array))) if array.dtype.kind == "f" else 0
    if not bad and is_nifti(path) and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        try:
            bad = count_non_finite_voxels(path)
        except ValueError as exc:
            raise InputError(f"{describe_path(path)}: cannot read it as an image ({exc})") from None
    return bad


def _check_fits_float32(array: np.ndarray, path: "os.PathLike[str] | str") -> None:
    """Values beyond float32's range would become Inf and be reported as such; say what they are."""
    finite = np.isfinite(array)
    largest = float(np.abs(array[finite]).max()) if finite.any() else 0.0
    limit = float(np.finfo(np.float32).max)
    if largest > limit:
        raise InputError(f"{describe_path(path)}: has values up to {largest:.3g}, beyond the float32 range "
                         f"(±{limit:.3g}) MaskSAM computes in; rescale the image")


def read_case(paths: Sequence["os.PathLike[str] | str | DicomSeries"]) -> Tuple[np.ndarray, ImageGeometry]:
    """Read the channels of one case: (image (C, z, y, x) float32, geometry of channel 0).
    Every channel must lie on the grid of the first one, else `InputError` naming the file."""
    if not paths:
        raise ValueError("read_case needs at least one file")
    channels = []
    geometries = []
    for path in paths:
        array, geometry = read_image(path)
        geometries.append(geometry)
        check_channels_share_grid(paths[:len(geometries)], geometries)
        channels.append(array)
    return np.stack(channels, axis=0), geometries[0]


def check_channels_share_grid(paths: Sequence["os.PathLike[str] | str | DicomSeries"],
                              geometries: Sequence[ImageGeometry]) -> None:
    """Raise `InputError` naming the first channel file whose grid differs from channel 0's: one
    rule for reading a case and for `predict`'s check of every header before any work."""
    for path, geometry in zip(paths[1:], geometries[1:]):
        differences = geometries[0].grid_differences(geometry)
        if differences:
            raise InputError(
                f"{describe_path(path)}: its {', '.join(differences)} differ(s) from channel 0 "
                f"({describe_path(paths[0])}); all channels must share one voxel grid")


def read_label(path: "os.PathLike[str] | str") -> Tuple[np.ndarray, ImageGeometry]:
    """Read a label map: (array (z, y, x) int16, geometry). The values must be whole numbers
    in 0..32767 (so no NaN/Inf, which a float NIfTI file would otherwise pass off as background
    0), else `InputError` naming the file."""
    image = read_sitk_image(path)
    array = sitk.GetArrayFromImage(image)
    where = describe_path(path)
    if array.dtype.kind == "f":
        bad = _count_non_finite(array, image, path)
        if bad:
            raise InputError(f"{where}: label map contains {bad} NaN/Inf value(s)")
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{where}: label map contains non-integer values (is it an image, not a label map?)")
    if array.size:
        low, high = array.min(), array.max()
        if low < 0:
            raise InputError(f"{where}: label map contains negative values (min {low})")
        if high > np.iinfo(np.int16).max:
            raise InputError(f"{where}: label value {high} is too large (at most 32767)")
    return array.astype(np.int16, copy=False), ImageGeometry.from_sitk(image)


def read_geometry(path: "os.PathLike[str] | str | DicomSeries") -> ImageGeometry:
    """The geometry of a 3D image from its header only (fast; no pixel data read)."""
    if isinstance(path, DicomSeries):
        return ImageGeometry(path.size, path.spacing, path.origin, path.direction)
    path = Path(path)
    where = describe_path(path)
    if not path.is_file():
        raise InputError(f"{where}: file not found")
    reader = _header_reader(path)
    _check_complete(path)
    size = reader.GetSize()
    if len(size) == 4 and size[3] == 1:
        return ImageGeometry.from_sitk(read_sitk_image(path))  # rare: let the full reader reduce it
    if len(size) != 3:
        raise InputError(f"{where}: is a {len(size)}D image; a 3D volume is needed")
    return ImageGeometry(size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
