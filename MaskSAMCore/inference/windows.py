"""Where the sliding windows go, and how much each voxel of a window counts.

Everything here is pure geometry on the *preprocessed* volume (array order ``(z, y, x)``, where
z is the network's slice axis T). A volume smaller than the patch along an axis is treated as
if zero-padded symmetrically to the patch size ("padded coordinates"); `WindowGrid` records
that padding so the caller can crop it away again.

Gaussian importance: every window's prediction is weighted by a separable Gaussian centred on
the window, so that voxels seen near a window's centre (with the most context) count more than
those near its border. The per-axis sigma is ``max(patch / 8, SIGMA_FLOOR_VOXELS)``. nnU-Net
and the official MaskSAM code use ``patch / 8`` on every axis; on an 8-slice axis that is
sigma = 1 slice and the edge slices (3.5 slices from the centre, 3 from the two central ones)
get 0.0025 of the central weight - the window's outer slices are then practically thrown away,
which wastes half the overlapping predictions and underflows half-precision accumulators. With
the floor of 2 voxels the edge slices keep 0.22 of the central weight: the centre still
dominates wherever two windows overlap, but both views contribute. Long axes (the
512-pixel in-plane axes, sigma 64) are unaffected by the floor.

Because the windows form a Cartesian grid of start positions and the weight is a product of
per-axis Gaussians, the sum of weights that normalises the accumulated scores is the outer
product of three 1D sums (`axis_normalizer`). No weight volume has to be accumulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np

SIGMA_SCALE = 1.0 / 8.0
SIGMA_FLOOR_VOXELS = 2.0

Int3 = Tuple[int, int, int]


def window_starts(size: int, patch: int, step_fraction: float) -> List[int]:
    """Start indices of windows of length `patch` covering ``range(size)`` (nnU-Net's rule).

    The number of windows is the smallest that keeps the step at most ``patch * step_fraction``;
    the starts are then spread evenly from 0 to ``size - patch`` so the last window ends exactly
    at the border. A `size` at most `patch` gives the single start 0 (the axis is padded).
    """
    if patch < 1 or size < 1:
        raise ValueError(f"window_starts needs positive sizes, got size={size}, patch={patch}")
    if not 0.0 < step_fraction <= 1.0:
        raise ValueError(f"the window step must be a fraction in (0, 1], not {step_fraction}")
    if size <= patch:
        return [0]
    max_step = max(1.0, patch * step_fraction)
    count = int(math.ceil((size - patch) / max_step)) + 1
    spacing = (size - patch) / (count - 1)
    return [int(round(spacing * index)) for index in range(count)]


def gaussian_1d(length: int, sigma_scale: float = SIGMA_SCALE,
                sigma_floor: float = SIGMA_FLOOR_VOXELS) -> np.ndarray:
    """Importance weights (length,) float64 along one window axis, peak 1 at the centre.

    Symmetric about the window centre ``(length - 1) / 2`` so that flipping a window does not
    change its weights (mirroring and Gaussian weighting commute).
    """
    sigma = max(length * sigma_scale, sigma_floor)
    offsets = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.max()


def gaussian_importance(patch: Sequence[int], sigma_scale: float = SIGMA_SCALE,
                        sigma_floor: float = SIGMA_FLOOR_VOXELS) -> np.ndarray:
    """The separable importance map (T, H, W) float32 of one window, peak 1."""
    t, h, w = (gaussian_1d(n, sigma_scale, sigma_floor) for n in patch)
    return (t[:, None, None] * h[None, :, None] * w[None, None, :]).astype(np.float32)


def axis_normalizer(padded_size: int, patch: int, starts: Sequence[int],
                    weights: np.ndarray) -> np.ndarray:
    """Sum over windows of the 1D weight at each position, (padded_size,) float64 (all > 0)."""
    total = np.zeros(padded_size, dtype=np.float64)
    for start in starts:
        total[start:start + patch] += weights
    return total


@dataclass(frozen=True)
class Window:
    """One window: its start (z, y, x) in padded coordinates; it spans the patch size."""

    z: int
    y: int
    x: int


@dataclass
class WindowGrid:
    """All windows over one volume, sorted by z (then y, x), plus the padding bookkeeping.

    `shape` is the real volume's (Z, Y, X); `padded_shape` is at least the patch on every axis;
    `pad_before` is where the real volume starts inside the padded one.
    """

    shape: Int3
    patch: Int3
    step_fraction: float
    padded_shape: Int3 = field(init=False)
    pad_before: Int3 = field(init=False)
    starts: Tuple[List[int], List[int], List[int]] = field(init=False)
    windows: List[Window] = field(init=False)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.patch = tuple(int(p) for p in self.patch)  # type: ignore[assignment]
        if len(self.shape) != 3 or len(self.patch) != 3:
            raise ValueError(f"WindowGrid needs 3D shape and patch, got {self.shape} and {self.patch}")
        self.padded_shape = tuple(max(s, p) for s, p in zip(self.shape, self.patch))  # type: ignore[assignment]
        self.pad_before = tuple(  # type: ignore[assignment]
            (ps - s) // 2 for ps, s in zip(self.padded_shape, self.shape))
        self.starts = tuple(  # type: ignore[assignment]
            window_starts(ps, p, self.step_fraction) for ps, p in zip(self.padded_shape, self.patch))
        self.windows = [Window(z, y, x) for z in self.starts[0] for y in self.starts[1] for x in self.starts[2]]

    def __len__(self) -> int:
        return len(self.windows)

    def batches(self, window_batch: int) -> List[List[Window]]:
        """Consecutive groups of at most `window_batch` windows, in z order."""
        size = max(1, int(window_batch))
        return [self.windows[i:i + size] for i in range(0, len(self.windows), size)]

    def slab_depth(self, window_batch: int) -> int:
        """Slices an accumulation slab must hold so that any one batch fits inside it."""
        depth = self.patch[0]
        for batch in self.batches(window_batch):
            depth = max(depth, batch[-1].z - batch[0].z + self.patch[0])
        return depth

    def normalizers(self, sigma_scale: float = SIGMA_SCALE,
                    sigma_floor: float = SIGMA_FLOOR_VOXELS) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-axis sums of Gaussian weights (padded_shape[a],) float64 for a = z, y, x."""
        return tuple(  # type: ignore[return-value]
            axis_normalizer(ps, p, starts, gaussian_1d(p, sigma_scale, sigma_floor))
            for ps, p, starts in zip(self.padded_shape, self.patch, self.starts))

    def real_slice(self, axis: int) -> slice:
        """Where the real volume lies along `axis` in padded coordinates."""
        return slice(self.pad_before[axis], self.pad_before[axis] + self.shape[axis])
