"""Resampling arrays between voxel grids that cover the same physical extent.

One axis at a time: along an axis of ``n_old`` voxels resampled to ``n_new``, output voxel ``i``
reads the input at the continuous index ``(i + 0.5) * n_old / n_new - 0.5`` (voxel edges stay
aligned, as in nnU-Net and skimage's ``resize``), through a sparse interpolation matrix of shape
``(n_new, n_old)``. This keeps every output shape exact, costs a few multiply-adds per voxel, never
needs float64 copies of a whole volume, and lets each axis have its own interpolation order
(nnU-Net's "separate z": cubic in-plane, linear or nearest along an anisotropic slice axis).
Axes whose length does not change are left untouched, so an unchanged grid is reproduced exactly.

Orders: 0 nearest neighbour, 1 linear, 3 cubic convolution (Keys, a = -0.5). Borders repeat the
edge voxel.

Label maps are never interpolated as numbers: each class is resampled as a 0/1 mask and the class
with the highest value wins (a running maximum, so memory stays at about two output-sized arrays
whatever the number of classes).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse

_KEYS_A = -0.5


@lru_cache(maxsize=64)
def _taps_and_weights(old_len: int, new_len: int, order: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per output voxel, the input voxels it reads (new_len, k) int64, clipped to the array,
    and their weights (new_len, k) float32 (see module doc)."""
    if old_len < 1 or new_len < 1:
        raise ValueError(f"cannot resample between lengths {old_len} and {new_len}")
    position = (np.arange(new_len, dtype=np.float64) + 0.5) * (old_len / new_len) - 0.5
    if order == 0:
        taps, weights = np.floor(position + 0.5)[:, None].astype(np.int64), np.ones((new_len, 1))
    elif order == 1:
        base = np.floor(position)
        frac = position - base
        taps = base[:, None].astype(np.int64) + np.arange(2)[None, :]
        weights = np.stack([1.0 - frac, frac], axis=1)
    elif order == 3:
        base = np.floor(position)
        frac = position - base
        offsets = np.arange(-1, 3)
        taps = base[:, None].astype(np.int64) + offsets[None, :]
        weights = _keys_kernel(frac[:, None] - offsets[None, :])
    else:
        raise ValueError(f"interpolation order must be 0, 1 or 3, not {order}")
    taps = np.clip(taps, 0, old_len - 1)  # edge voxels repeat beyond the border
    taps.setflags(write=False)
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return taps, weights


def _matrix(taps: np.ndarray, weights: np.ndarray, old_len: int) -> scipy.sparse.csr_matrix:
    rows = np.repeat(np.arange(taps.shape[0]), taps.shape[1])
    matrix = scipy.sparse.coo_matrix((weights.ravel(), (rows, taps.ravel())), shape=(taps.shape[0], old_len))
    return matrix.tocsr()  # sums the weights of taps clipped onto the same edge voxel


@lru_cache(maxsize=64)
def interpolation_matrix(old_len: int, new_len: int, order: int) -> scipy.sparse.csr_matrix:
    """Sparse (new_len, old_len) float32 matrix M with resampled = M @ samples (see module doc)."""
    taps, weights = _taps_and_weights(old_len, new_len, order)
    return _matrix(taps, weights, old_len)


def block_matrix(old_len: int, new_len: int, order: int, start: int, stop: int
                 ) -> Tuple[slice, slice, scipy.sparse.csr_matrix]:
    """The part of `interpolation_matrix` that reads input voxels [start, stop): (output rows
    that read any of them, input voxels those rows read, the matrix between the two). Output
    rows outside it get exactly 0 from an array that is 0 outside [start, stop)."""
    taps, weights = _taps_and_weights(old_len, new_len, order)
    touches = np.any((taps >= start) & (taps < stop) & (weights != 0), axis=1)
    rows = np.flatnonzero(touches)
    if rows.size == 0:
        return slice(0, 0), slice(0, 0), _matrix(taps[:0], weights[:0], 0)
    first, last = int(rows[0]), int(rows[-1]) + 1
    block_taps = taps[first:last]
    low, high = int(block_taps.min()), int(block_taps.max()) + 1
    return slice(first, last), slice(low, high), _matrix(block_taps - low, weights[first:last], high - low)


def _keys_kernel(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel at the given signed distances (in voxels)."""
    d = np.abs(distance)
    a = _KEYS_A
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def resample_axis(array: np.ndarray, axis: int, new_len: int, order: int) -> np.ndarray:
    """Resample `array` (any shape, float32 result) along one axis to `new_len` voxels."""
    array = np.asarray(array)
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    old_len = array.shape[axis]
    if old_len == new_len:
        return array
    return _apply_matrix(array, axis, interpolation_matrix(old_len, new_len, order))


def _apply_matrix(array: np.ndarray, axis: int, matrix: scipy.sparse.csr_matrix) -> np.ndarray:
    """matrix (n_out, n_in) applied along `axis` of a float32 array."""
    moved = np.moveaxis(array, axis, 0)
    rest = moved.shape[1:]
    out = matrix @ moved.reshape(moved.shape[0], -1)
    return np.moveaxis(np.asarray(out, dtype=np.float32).reshape((matrix.shape[0],) + rest), 0, axis)


def axis_order(shape: Sequence[int], new_shape: Sequence[int]) -> List[int]:
    """The order in which to resample the axes: most shrinking first, so later passes touch
    fewer voxels."""
    return sorted(range(len(shape)), key=lambda a: new_shape[a] / shape[a])


def resample_array(array: np.ndarray, new_shape: Sequence[int], orders: Sequence[int],
                   axes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Resample a 3D array to `new_shape` with one interpolation order per axis, axis by axis in
    the order `axes` (default `axis_order`). Always returns a new C-contiguous float32 array
    (never a view of the input, even when nothing changes)."""
    array = np.asarray(array)
    if len(new_shape) != array.ndim or len(orders) != array.ndim:
        raise ValueError(f"shape {tuple(new_shape)} / orders {tuple(orders)} do not match a {array.ndim}D array")
    out = array
    for axis in (axis_order(array.shape, new_shape) if axes is None else axes):
        out = resample_axis(out, axis, int(new_shape[axis]), orders[axis])
    if np.shares_memory(out, array):
        return np.array(out, dtype=np.float32, order="C")
    return np.ascontiguousarray(out, dtype=np.float32)


def image_orders(separate_z: bool, order: int = 3, order_z: int = 1) -> Tuple[int, int, int]:
    """Per-axis orders for an image whose axis 0 is the slice axis."""
    return (order_z if separate_z else order, order, order)


def label_orders(separate_z: bool) -> Tuple[int, int, int]:
    """Per-axis orders for one-hot label masks: linear, nearest along an anisotropic slice axis."""
    return (0 if separate_z else 1, 1, 1)


def resample_labels(labels: np.ndarray, new_shape: Sequence[int], separate_z: bool,
                    classes: Optional[Iterable[int]] = None) -> np.ndarray:
    """Resample a label map (z, y, x) to `new_shape` without inventing in-between classes:
    one 0/1 mask per class, interpolated, highest wins. Returns int16.

    The most frequent class (usually background) is resampled over the whole volume; every
    other class only over the block its voxels can reach, which gives the same result as
    resampling it everywhere and is many times faster for small organs. Ties go to the most
    frequent class, then to the lower value. `classes` defaults to the values present."""
    labels = np.asarray(labels)
    new_shape = tuple(int(s) for s in new_shape)
    if labels.shape == new_shape:
        return labels.astype(np.int16, copy=True)
    values, counts = _value_counts(labels, classes)
    if len(values) == 1:
        return np.full(new_shape, values[0], dtype=np.int16)
    orders = label_orders(separate_z)
    axes = axis_order(labels.shape, new_shape)
    base = values[int(np.argmax(counts))]
    best = resample_array(labels == base, new_shape, orders, axes)
    winner = np.full(new_shape, base, dtype=np.int16)
    for value in values:
        mask = labels == value
        if value == base or not mask.any():
            continue
        blocks = [block_matrix(labels.shape[a], new_shape[a], orders[a], *_extent(mask, a)) for a in range(3)]
        rows = tuple(b[0] for b in blocks)
        if any(r.stop == r.start for r in rows):
            # No output voxel reads this class (a structure on one thin slice between the slices
            # a downsampling keeps): it vanishes, as it would resampled over the whole volume.
            continue
        resampled = mask[tuple(b[1] for b in blocks)].astype(np.float32)
        for axis in axes:
            resampled = _apply_matrix(resampled, axis, blocks[axis][2])
        region_best, region_winner = best[rows], winner[rows]  # views into the full arrays
        region_winner[resampled > region_best] = value
        np.maximum(region_best, resampled, out=region_best)
    return winner


def _value_counts(labels: np.ndarray, classes: Optional[Iterable[int]]) -> Tuple[List[int], List[int]]:
    if labels.dtype != np.bool_ and labels.size and labels.min() < 0:
        found, found_counts = np.unique(labels, return_counts=True)
        table = dict(zip(found.tolist(), found_counts.tolist()))
    else:
        counts = np.bincount(labels.ravel().astype(np.int64, copy=False))
        table = {v: int(c) for v, c in enumerate(counts) if c}
    values = sorted(table if classes is None else set(int(c) for c in classes))
    return values, [table.get(v, 0) for v in values]


def _extent(mask: np.ndarray, axis: int) -> Tuple[int, int]:
    """[first, last + 1) of the True voxels of `mask` along `axis` (mask must have some)."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    present = np.flatnonzero(mask.any(axis=other))
    return int(present[0]), int(present[-1]) + 1


def argmax_of_resampled(scored_classes: Iterable[Tuple[np.ndarray, int]], new_shape: Sequence[int],
                        orders: Sequence[int]) -> np.ndarray:
    """Running argmax over classes: for each (score array, class value) pair, resample the score
    to `new_shape` and keep the class whose resampled score is highest (earlier wins ties).
    Peak memory: the best score (float32), the winner (int16) and one resampled score."""
    best: Optional[np.ndarray] = None
    winner = np.zeros(tuple(new_shape), dtype=np.int16)
    for score, value in scored_classes:
        resampled = resample_array(score, new_shape, orders)
        if best is None:
            best = resampled
            winner[...] = value
            continue
        better = resampled > best
        winner[better] = value
        np.maximum(best, resampled, out=best)
        del resampled, better
    if best is None:
        raise ValueError("no classes to resample")
    return winner


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> Tuple[int, ...]:
    """The shape covering the same extent at `target_spacing` (rounded, at least 1 voxel)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def is_anisotropic(spacing: Sequence[float], threshold: float = 3.0) -> bool:
    """nnU-Net's rule: the largest spacing is more than `threshold` times the smallest."""
    return max(spacing) > threshold * min(spacing)


def coarsest_axis(spacing: Sequence[float], tie_tolerance: float = 1e-3) -> int:
    """The axis with the largest spacing; spacings within `tie_tolerance` (relative) of the
    largest count as ties, which resolve to the lowest axis (z first)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    return int(np.flatnonzero(spacing >= spacing.max() * (1 - tie_tolerance))[0])
