"""The scan a 3D Slicer segmentation file was drawn on, as the file records it.

Slicer saves a segmentation cropped to its segments' extent, so the file's own grid is not the
scan's. It keeps the scan's grid among its conversion parameters, in the header field
``Segmentation_ConversionParameters``: entries ``name|value|description`` joined by ``&``, one of
them ``Reference image geometry|<IJK to RAS matrix, 16 numbers>;<extent, 6 whole numbers>;|...``,
every number followed by ``;``. `masksam evaluate` needs that grid for one thing: the length of
the scan's diagonal, the HD95 of a structure only one of two segmentations holds. MaskSAM's own
segmentations record it too (`reference_parameter`), as Slicer's do.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from MaskSAMCore.data.image_io import ImageGeometry

CONVERSION_PARAMETERS_FIELD = "Segmentation_ConversionParameters"
REFERENCE_PARAMETER = "Reference image geometry"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])   # Slicer's world is RAS, ITK's (and ImageGeometry's) LPS


def conversion_parameter(parameters: str, name: str) -> Optional[str]:
    """The value of the conversion parameter `name` in a ``name|value|description&...`` text; None
    where it is not there. Descriptions are free text, so only an entry's first two fields count."""
    for entry in parameters.split("&"):
        fields = entry.split("|")
        if len(fields) >= 2 and fields[0].strip() == name:
            return fields[1].strip()
    return None


def reference_geometry(header: Dict[str, str]) -> Optional[ImageGeometry]:
    """The scan's grid that a segmentation's header fields record (see the module docstring);
    None where they record none, or one that is no grid (too few numbers, an empty extent, a
    flat matrix): the caller then does without it."""
    value = conversion_parameter(header.get(CONVERSION_PARAMETERS_FIELD, ""), REFERENCE_PARAMETER)
    if not value:
        return None
    try:
        numbers = np.array([float(number) for number in value.split(";") if number.strip()])
    except ValueError:
        return None
    if len(numbers) < 22 or not np.isfinite(numbers[:22]).all():
        return None
    matrix = numbers[:16].reshape(4, 4)
    low, high = numbers[16:22:2], numbers[17:22:2]   # the extent: first and last voxel index per axis
    size = high - low + 1
    steps = _RAS_TO_LPS @ matrix[:3, :3]   # columns: one voxel along i, j, k in mm
    spacing = np.linalg.norm(steps, axis=0)
    if (size < 1).any() or not np.array_equal(low, np.rint(low)) or not np.array_equal(high, np.rint(high)):
        return None
    if (spacing <= 0).any() or abs(np.linalg.det(steps / spacing)) < 0.5:
        return None
    origin = _RAS_TO_LPS @ matrix[:3, 3] + steps @ low   # the voxel at the extent's first index
    return ImageGeometry(size.astype(int), spacing, origin, (steps / spacing).ravel())


def reference_parameter(geometry: ImageGeometry) -> str:
    """The ``Segmentation_ConversionParameters`` entry recording `geometry` as the scan's grid, in
    the form `reference_geometry` (and Slicer) read: IJK to RAS matrix, then the extent."""
    steps = geometry.direction_matrix * np.asarray(geometry.spacing)   # columns: one voxel along i, j, k
    matrix = np.eye(4)
    matrix[:3, :3] = _RAS_TO_LPS @ steps
    matrix[:3, 3] = _RAS_TO_LPS @ np.asarray(geometry.origin, dtype=np.float64)
    extent = [bound for size in geometry.size for bound in (0, int(size) - 1)]
    numbers = ";".join(repr(float(v)) for v in matrix.ravel()) + ";" + ";".join(map(str, extent)) + ";"
    return f"{REFERENCE_PARAMETER}|{numbers}|Image geometry description string determined from the reference volume"
