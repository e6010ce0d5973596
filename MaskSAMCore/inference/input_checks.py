"""Refusing images the network cannot segment meaningfully, with one line that names the case.

Reading (`MaskSAMCore.data.image_io`) already rejects missing, corrupt, 2D, 4D, vector and
NaN/Inf files. These checks cover what reading accepts but prediction cannot use, and arrays
handed in directly (the Slicer module passes arrays, not files).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.errors import InputError


def check_image(image: np.ndarray, geometry: ImageGeometry, channels: int, name: str,
                channel_files: Optional[Sequence[str]] = None) -> None:
    """image: (C, z, y, x). Raises `InputError` naming `name` (or, for a problem of one channel,
    that channel's entry of `channel_files`) for anything unusable."""
    if image.ndim != 4:
        raise InputError(f"{name}: expected a 3D volume per channel, got an array of shape {image.shape}")
    if image.shape[0] != channels:
        raise InputError(f"{name}: the model needs {channels} channel(s), the image has {image.shape[0]}")
    if tuple(image.shape[1:]) != geometry.shape_zyx:
        raise InputError(f"{name}: array shape {image.shape[1:]} does not match its geometry {geometry.shape_zyx}")
    thin = [axis for axis, n in zip("zyx", image.shape[1:]) if n < 2]
    if thin:
        size = "x".join(str(n) for n in geometry.size)
        raise InputError(f"{name}: has a single voxel along {', '.join(thin)} (size {size}); "
                         "MaskSAM segments 3D volumes")
    if not np.issubdtype(image.dtype, np.number):
        raise InputError(f"{name}: has non-numeric voxels ({image.dtype})")
    if np.issubdtype(image.dtype, np.floating):
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        if bad:
            raise InputError(f"{name}: contains {bad} NaN/Inf voxel(s)")
    for channel in range(image.shape[0]):
        low, high = float(image[channel].min()), float(image[channel].max())
        if low == high:
            which = f"channel {channel}" if image.shape[0] > 1 else "the image"
            where = channel_files[channel] if channel_files else name
            raise InputError(f"{where}: {which} is constant (every voxel is {low:g}); there is nothing to segment")
    if any(s <= 0 or not np.isfinite(s) for s in geometry.spacing):
        raise InputError(f"{name}: invalid voxel spacing {geometry.spacing}")
