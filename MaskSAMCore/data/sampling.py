"""Cutting training patches out of memory-mapped preprocessed cases.

Where a patch goes follows nnU-Net: a random position where the patch overlaps the volume
(along an axis where the volume is smaller than the patch, the volume is centred in it), or, for a
patch forced to contain foreground, centred on a random voxel of a random foreground class present
in the case (from the stored class locations). Outside the volume, images are padded with 0 (the
normalised mean, what the sliding-window predictor pads with too) and labels with 0 (background,
as the predictor's padding is: the model learns that what lies outside a scan is no structure).

Only the region a patch needs is read from the memory map, so a patch costs the same whatever
the size of the case.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from MaskSAMCore.data.augmentation import (AugmentationSettings, apply_spatial, augment_intensity,
                                           draw_mirror_axes, draw_spatial_transform, mirror, region_margin)
from MaskSAMCore.data.store import PreprocessedCase, load_case

OPEN_CASES = 64  # memory maps kept open per process (each holds a file descriptor)


def patch_start(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator,
                centre_on: Optional[Sequence[int]] = None) -> np.ndarray:
    """Start (3,) of a patch in volume coordinates; may be negative or run past the end where the
    volume is smaller than the patch."""
    shape, patch = np.asarray(shape), np.asarray(patch)
    need = np.maximum(patch - shape, 0)
    low = -(need // 2)
    high = shape + need // 2 + need % 2 - patch
    if centre_on is None:
        return np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])
    return np.clip(np.asarray(centre_on) - patch // 2, low, high)


def extract_region(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """The box [start, start + size) of the last three axes of `array`, padded with `fill`
    where it leaves the array. Reads only the overlapping part (cheap on a memory map)."""
    spatial = array.shape[-3:]
    out = np.full(array.shape[:-3] + tuple(int(s) for s in size), fill, dtype=array.dtype)
    src, dst = [], []
    for axis in range(3):
        lo = max(int(start[axis]), 0)
        hi = min(int(start[axis]) + int(size[axis]), spatial[axis])
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(start[axis]), hi - int(start[axis])))
    lead = (slice(None),) * (array.ndim - 3)
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


class PatchSampler:
    """Draws augmented (data (C, T, H, W) float32, seg (T, H, W) int16) patches from a folder
    of preprocessed cases. Cheap to create; cases are opened lazily and kept in a small cache."""

    def __init__(self, folder: "os.PathLike[str] | str", case_names: Sequence[str], patch_size: Sequence[int],
                 settings: Optional[AugmentationSettings], planar: bool) -> None:
        if not case_names:
            raise ValueError("no cases to sample from")
        self.folder = Path(folder)
        self.case_names = list(case_names)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.settings = settings or AugmentationSettings.none()
        self.planar = planar
        self._cache: "OrderedDict[str, PreprocessedCase]" = OrderedDict()

    def case(self, name: str) -> PreprocessedCase:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        case = load_case(self.folder, name, mmap=True)
        self._cache[name] = case
        if len(self._cache) > OPEN_CASES:
            self._cache.popitem(last=False)
        return case

    def sample(self, rng: np.random.Generator, force_foreground: bool) -> Tuple[np.ndarray, np.ndarray]:
        """One patch: pick a case, a position (see module docstring), then augment."""
        case = self.case(self.case_names[int(rng.integers(len(self.case_names)))])
        centre = self._foreground_voxel(case, rng) if force_foreground else None
        start = patch_start(case.seg.shape, self.patch_size, rng, centre_on=centre)

        matrix = draw_spatial_transform(rng, self.settings, self.planar)
        margin = np.asarray(region_margin(self.patch_size, matrix))
        size = np.asarray(self.patch_size) + 2 * margin
        data = extract_region(case.data, start - margin, size, fill=0.0).astype(np.float32, copy=False)
        seg = extract_region(case.seg, start - margin, size, fill=0)
        if matrix is not None:
            order = self.settings.image_order
            data = np.stack([apply_spatial(channel, matrix, self.patch_size, order) for channel in data])
            seg = apply_spatial(seg, matrix, self.patch_size, order=0)

        data = augment_intensity(data, rng, self.settings, self.planar)
        data, seg = mirror(data, seg, draw_mirror_axes(rng, self.settings))
        return np.ascontiguousarray(data, dtype=np.float32), np.ascontiguousarray(seg)

    @staticmethod
    def _foreground_voxel(case: PreprocessedCase, rng: np.random.Generator) -> Optional[np.ndarray]:
        """A random voxel (t, h, w) of a random foreground class present in the case, or None."""
        locations = case.locations
        if locations.size == 0:
            return None
        classes = np.unique(locations[:, 0])
        chosen = classes[int(rng.integers(len(classes)))]
        rows = locations[locations[:, 0] == chosen]
        return rows[int(rng.integers(len(rows))), 1:]
