"""What `masksam evaluate` scores of one file (`LabelMasks`, or a Slicer segmentation's
`SegmentationMasks`), and how it tells two files' grids apart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from MaskSAMCore.data.image_io import ImageGeometry, read_label
from MaskSAMCore.data.slicer_segmentation import (SegmentationMasks, is_slicer_segmentation, place_on_grid,
                                                  segmentation_masks, union_grid)

Structure = Tuple[int, ...]   # the label values one scored structure is made of: a class has one


def _numbers(values: Sequence[float]) -> str:
    """``0, 0, 0.2``: numbers for a message, to 4 significant digits, without ``-0``."""
    return ", ".join(f"{float(np.round(v, 9)) + 0.0:.4g}" for v in values)


def grid_differences_text(grid: ImageGeometry, truth: ImageGeometry, names: Sequence[str]) -> str:
    """``origin off by (0, 0, 0.2) mm = (0, 0, 0.057) voxels; spacing (...) vs (...)``: how `grid`
    differs from the ground truth's. An origin is given as the shift: 4 digits of two coordinates
    1.2 m from the world's origin would print a 0.2 mm shift as the same number twice."""
    parts = []
    for name in names:
        if name == "origin":
            shift = np.subtract(grid.origin, truth.origin)
            try:   # in the ground truth's voxels, along its axes
                voxels = f" = ({_numbers(np.linalg.solve(steps_zyx(truth)[:, ::-1], shift))}) voxels"
            except np.linalg.LinAlgError:
                voxels = ""
            parts.append(f"origin off by ({_numbers(shift)}) mm{voxels}")
        else:
            parts.append(f"{name} ({_numbers(getattr(grid, name))}) vs ({_numbers(getattr(truth, name))})")
    return "; ".join(parts)


@dataclass
class LabelMasks:
    """What is scored of a label map: each structure is the voxels holding any of its values."""

    grid: ImageGeometry
    labels: np.ndarray

    def mask(self, structure: Structure) -> np.ndarray:
        """The voxels of a structure (those holding any of its values)."""
        if len(structure) == 1:   # a class: one comparison, twice as fast as np.isin
            return self.labels == structure[0]
        return np.isin(self.labels, structure)

    def reordered_to(self, grid: ImageGeometry, path: Path) -> "LabelMasks":
        """This label map on `grid` where it holds exactly `grid`'s voxels stored in another axis
        order (an axis reversed, as some converters write a left-handed scan, or two swapped):
        the same points, so the same scores; else as it is, and its grid differences are told."""
        if self.grid.same_grid(grid) or int(np.prod(self.grid.size)) != int(np.prod(grid.size)):
            return self
        union = union_grid(grid, self.grid)   # as many voxels, all on grid's lattice and inside it
        if union is None or not union.same_grid(grid):
            return self
        placed = place_on_grid(self.labels, self.grid, grid, path)
        return LabelMasks(grid, placed) if placed is not None else self

    def values(self, where: Optional[np.ndarray] = None) -> set:
        """The label values found at `where` (everywhere by default)."""
        return distinct_values(self.labels if where is None else self.labels[where])


_SLAB = 1 << 20   # voxels counted at once by `distinct_values`: bincount's int64 copy of them is 8 MB


def distinct_values(labels: np.ndarray) -> set:
    """The values of a label map (whole numbers >= 0, as `read_label` reads them), counted slab
    by slab: np.unique would sort or hash a copy of the whole map, three times slower."""
    flat = labels.reshape(-1)
    seen = np.zeros(0, bool)
    for start in range(0, flat.size, _SLAB):
        counts = np.bincount(flat[start:start + _SLAB])
        if counts.size > seen.size:
            seen = np.concatenate([seen, np.zeros(counts.size - seen.size, bool)])
        seen[:counts.size] |= counts > 0
    return set(np.flatnonzero(seen).tolist())


def read_label_masks(path: Path, names: Dict[str, Structure],
                     grid: Optional[ImageGeometry] = None) -> Union[LabelMasks, SegmentationMasks]:
    """A label map, or a segmentation's segments matched to `names` (on `grid` where Slicer cropped it)."""
    if is_slicer_segmentation(path):
        return segmentation_masks(path, names, grid)
    labels, own = read_label(path)
    return LabelMasks(own, labels)


def steps_zyx(grid: ImageGeometry) -> np.ndarray:
    """One voxel step along array axes z, y, x in mm (columns)."""
    return (grid.direction_matrix * np.asarray(grid.spacing, float))[:, ::-1]


def recorded_scan(*masks: Union[LabelMasks, SegmentationMasks]) -> Optional[ImageGeometry]:
    """The scan's grid the first of these Slicer segmentations to record one records (the ground
    truth's, given first); None where none does."""
    return next((m.reference for m in masks if isinstance(m, SegmentationMasks) and m.reference), None)
