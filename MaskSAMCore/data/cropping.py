"""Cropping a volume to the region where its image is non-zero, and pasting results back.

Many MR images (and some skull-stripped or masked CTs) are zero outside the body; cropping that
away saves preprocessing, training and inference time. A bounding box is a list of
``[start, stop)`` index pairs, one per spatial axis in array order (z, y, x).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

BoundingBox = List[List[int]]


def nonzero_bbox(image: np.ndarray) -> BoundingBox:
    """Bounding box of voxels that are non-zero in any channel of `image` (C, z, y, x).
    The whole extent when the image is zero everywhere (nothing is cropped then)."""
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            return [[0, n] for n in mask.shape]
        box.append([int(present[0]), int(present[-1]) + 1])
    return box


def bbox_slices(box: BoundingBox) -> Tuple[slice, ...]:
    return tuple(slice(start, stop) for start, stop in box)


def bbox_shape(box: BoundingBox) -> Tuple[int, ...]:
    return tuple(stop - start for start, stop in box)


def paste_into(cropped: np.ndarray, box: BoundingBox, full_shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """A `full_shape` array filled with `fill`, with `cropped` placed at `box`."""
    if tuple(cropped.shape) != bbox_shape(box):
        raise ValueError(f"cropped shape {cropped.shape} does not fit bounding box {box}")
    full = np.full(tuple(full_shape), fill, dtype=cropped.dtype)
    full[bbox_slices(box)] = cropped
    return full
