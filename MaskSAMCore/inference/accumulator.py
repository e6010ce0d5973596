"""Gaussian-weighted accumulation of window scores in a slab that moves along the slice axis.

Windows arrive sorted by their z start. Once a batch starting at slice z arrives, no later
window touches slices below z, so those slices are *finished*: they are normalised by the
separable sum of weights (see `windows.py`), cropped to the real (unpadded) volume and handed
to a sink (`sinks.py`, `restore_sink.py`). Only a slab of `depth` slices (one batch's z extent)
is ever held on the accumulation device, so GPU memory does not grow with the number of slices.

The slab is float32 (K x depth x Y x X; 16 x 36 x 512 x 512 is 0.6 GB): at that size half
precision buys little and would need nnU-Net's scaled-Gaussian/Inf-check workaround, because the
product of three per-axis Gaussians reaches 1e-8 at window corners.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from MaskSAMCore.inference.sinks import Sink
from MaskSAMCore.inference.windows import Window, WindowGrid, gaussian_importance


class SlabAccumulator:
    """Accumulates (B, K, T, H, W) window scores into a moving (K, depth, Y, X) slab.

    grid: the window grid (padded coordinates). depth: slab slices, at least
    ``grid.slab_depth(window_batch)``. device: where the slab lives (the compute device, or
    the CPU as a fallback when GPU memory is short). sink: receives finished real slices.
    """

    def __init__(self, grid: WindowGrid, num_classes: int, depth: int, device: torch.device,
                 sink: Sink) -> None:
        self.grid = grid
        self.device = torch.device(device)
        self.sink = sink
        self.depth = max(int(depth), grid.patch[0])
        _, padded_y, padded_x = grid.padded_shape
        self.slab = torch.zeros((num_classes, self.depth, padded_y, padded_x), dtype=torch.float32,
                                device=self.device)
        self.gaussian = torch.from_numpy(gaussian_importance(grid.patch)).to(self.device)
        norm_z, norm_y, norm_x = grid.normalizers()
        self.inverse_norm_z = torch.from_numpy(1.0 / norm_z).to(self.device, torch.float32)
        # Only the real in-plane region is ever emitted, so keep just that part.
        y_real, x_real = grid.real_slice(1), grid.real_slice(2)
        plane = np.outer(1.0 / norm_y[y_real], 1.0 / norm_x[x_real])
        self.inverse_norm_yx = torch.from_numpy(plane).to(self.device, torch.float32)
        self.z0 = 0              # padded z index of slab slice 0
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)

    def add(self, windows: Sequence[Window], scores: torch.Tensor) -> None:
        """Add the scores (B >= len(windows), K, T, H, W) of `windows` (sorted by z).

        Scores may live on another device than the slab (host-accumulation fallback).
        """
        if not windows:
            return
        self._advance_to(windows[0].z)
        patch_t, patch_h, patch_w = self.grid.patch
        if scores.device != self.device:
            scores = scores.to(self.device)
        # One flag per case instead of a host sync per window: checked once in finish().
        self.finite &= torch.isfinite(scores[:len(windows)]).all()
        for index, window in enumerate(windows):
            z = window.z - self.z0
            if z + patch_t > self.depth:
                raise ValueError("window batch spans more slices than the accumulation slab")
            region = self.slab[:, z:z + patch_t, window.y:window.y + patch_h, window.x:window.x + patch_w]
            region.addcmul_(scores[index], self.gaussian)

    def finish(self) -> bool:
        """Emit every remaining slice; True when all scores were finite."""
        self._advance_to(self.grid.padded_shape[0])
        return bool(self.finite.item())

    def _advance_to(self, z_new: int) -> None:
        """Emit padded slices ``z0 .. z_new`` and shift the slab so that it starts at z_new."""
        count = z_new - self.z0
        if count <= 0:
            return
        # Window starts are at most one patch apart and the last window ends at the border,
        # so the slab (at least one patch deep) always holds every unfinished slice.
        if count > self.depth:
            raise ValueError(f"slab of {self.depth} slices cannot advance by {count}")
        self._emit(count)
        keep = self.depth - count
        # Shift in chunks of `count` slices: each copy's source and destination are disjoint.
        for start in range(0, keep, count):
            width = min(count, keep - start)
            self.slab[:, start:start + width].copy_(self.slab[:, start + count:start + count + width])
        self.slab[:, keep:].zero_()
        self.z0 = z_new

    def _emit(self, count: int) -> None:
        """Normalise slab slices 0..count, crop them to the real volume, pass them to the sink."""
        real_z = self.grid.real_slice(0)
        first = max(self.z0, real_z.start)
        last = min(self.z0 + count, real_z.stop)
        if first >= last:
            return
        y_real, x_real = self.grid.real_slice(1), self.grid.real_slice(2)
        block = self.slab[:, first - self.z0:last - self.z0, y_real, x_real]
        block = block * self.inverse_norm_z[first:last, None, None] * self.inverse_norm_yx
        self.sink.put(first - real_z.start, block)
