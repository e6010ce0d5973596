"""Overlap and surface-distance metrics of one predicted structure against its ground truth.

Conventions (also written into every evaluation report):

- Dice = 2 |P & G| / (|P| + |G|). Both masks empty -> undefined (``None``): the structure is
  absent and correctly not predicted, which says nothing about segmentation quality, so such
  pairs are left out of every mean (nnU-Net's convention). One empty, the other not -> 0.
- HD95 (mm) = the larger of the two directed 95th percentiles of distances between the
  surface voxels of P and G (surface = voxels of the mask with a 6-neighbour outside it),
  measured with the image spacing, so anisotropic voxels count in millimetres (on a sheared
  grid, a CT gantry tilt's, between the voxel centres in space instead). Both empty ->
  ``None``; exactly one empty -> the length of the image's (longest) diagonal in mm, the worst
  distance possible in that image, so a missed or hallucinated structure is penalised, not skipped.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

_SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def dice(prediction: np.ndarray, truth: np.ndarray) -> Optional[float]:
    """Dice of two boolean masks of one shape; None when both are empty."""
    predicted = int(np.count_nonzero(prediction))
    actual = int(np.count_nonzero(truth))
    if predicted + actual == 0:
        return None
    overlap = int(np.count_nonzero(np.logical_and(prediction, truth)))
    return 2.0 * overlap / (predicted + actual)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image's diagonal in mm: shape and spacing in the same axis order."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def grid_diagonal_mm(shape: Sequence[int], steps: np.ndarray) -> float:
    """Length in mm of the longest corner-to-corner diagonal of a grid of `shape` voxels whose
    voxel steps (3, 3) are the columns of `steps`, in the same axis order. The four diagonals are
    as long on an orthogonal grid; on a sheared one (a gantry tilt's) one leans with the slices and
    one against them, and the longer is the worst distance possible in the image."""
    edges = np.asarray(steps, float) * np.asarray(shape, float)   # each column: one whole edge
    return float(max(np.linalg.norm(edges @ np.array(signs, float))
                     for signs in ((1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1))))


def _bounding_box(mask: np.ndarray) -> Optional[Tuple[slice, ...]]:
    """The smallest box (as slices) holding every True voxel of a mask; None for an empty one.
    Each axis is searched within the box found along the previous ones, so a small structure
    costs one pass over the whole image, not three."""
    box: List[slice] = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask[tuple(box)].any(axis=other))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with at least one 6-neighbour outside it (the mask is zero-padded)."""
    eroded = ndimage.binary_erosion(mask, structure=_SIX_NEIGHBOURS, border_value=0)
    return np.logical_and(mask, np.logical_not(eroded))


def _surface_voxels(mask: np.ndarray, box: Tuple[slice, ...]) -> np.ndarray:
    """Indices (n, 3) of the surface voxels of a mask (a voxel on the image's border is one),
    found within its bounding box `box` plus one voxel of background on every side: the cost is
    the structure's size, not the image's, and a stray voxel far away adds one voxel, not a box."""
    surface = _surface(np.pad(mask[box], 1))
    return np.argwhere(surface) - 1 + np.array([axis.start for axis in box])


def sheared(steps: Optional[np.ndarray]) -> bool:
    """Whether voxel steps (3, 3), one mm vector per array axis (columns), are not orthogonal."""
    if steps is None:
        return False
    gram = steps.T @ steps
    return bool(np.abs(gram - np.diag(np.diag(gram))).max() > 1e-6 * np.diag(gram).max())


def hausdorff95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                steps: Optional[np.ndarray] = None, diagonal_mm: Optional[float] = None) -> Optional[float]:
    """HD95 in mm of two boolean 3D masks; spacing (3,) in the masks' axis order (z, y, x) mm.
    `steps`: the grid's (3, 3) mm vector of one voxel along array axes z, y, x (columns), needed
    only for a sheared grid, where the spacing alone would ignore the lean between slices.
    `diagonal_mm`: the image's diagonal, where the masks cover only part of the image (two
    segmentations cropped to their segments); by default the masks' grid's own."""
    box_p, box_t = _bounding_box(prediction), _bounding_box(truth)
    if box_p is None and box_t is None:
        return None
    if box_p is None or box_t is None:
        if diagonal_mm is not None:
            return float(diagonal_mm)
        if sheared(steps):
            return grid_diagonal_mm(prediction.shape, steps)
        return image_diagonal_mm(prediction.shape, spacing)
    # Nearest surface voxels by k-d trees over their centres in mm: exactly the distances a
    # Euclidean distance transform gives, at the cost of the surfaces alone (a transform over the
    # box around both costs the box: seconds and gigabytes for a 512 x 512 x 300 scan).
    if not sheared(steps):   # the spacing alone, so an oblique grid's rounding does not enter
        steps = np.diag(np.asarray(spacing, float))
    points_p = _surface_voxels(prediction, box_p) @ np.asarray(steps, float).T
    points_t = _surface_voxels(truth, box_t) @ np.asarray(steps, float).T
    forward = np.percentile(cKDTree(points_t).query(points_p)[0], 95)
    backward = np.percentile(cKDTree(points_p).query(points_t)[0], 95)
    return float(max(forward, backward))
