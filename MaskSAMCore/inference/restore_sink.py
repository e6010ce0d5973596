"""Resampling the scores back to the input's grid *while* the windows are still being predicted.

`restore_scores_argmax` (data layer) takes the whole (K, T', H', W') score array on the host:
for a 600 x 512 x 512 CT with 16 classes that is 5 GB of float16 plus per-class float32 copies,
and a minute of single-threaded resampling. This sink does the same computation slab by slab on
the accumulation device as finished slices arrive: every block is resampled in-plane
(bilinear), slices of the output grid are interpolated linearly between the two network slices
around them, and only their argmax (uint8) goes to the host. The interpolation is the data
layer's order-1 resampling (voxel edges aligned, ``src = (dst + 0.5) * n_old / n_new - 0.5``,
edge voxels repeated), which is exactly PyTorch's ``align_corners=False`` linear mode; ties go
to the lower class in both. Host memory: the label map; device memory: about two slabs.

The result is on the *cropped, transposed* grid (``properties["shape_after_transpose"]``);
`finish_labels` transposes it back, pastes it into the full image and undoes the reorientation
to LPS voxel order.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from MaskSAMCore.data.preprocessing import to_original_grid
from MaskSAMCore.inference.sinks import _HostSink


def linear_taps(old_len: int, new_len: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along one axis: (lower tap, upper tap, weight of the upper tap)."""
    position = (np.arange(new_len, dtype=np.float64) + 0.5) * (old_len / new_len) - 0.5
    position = np.clip(position, 0.0, old_len - 1)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, old_len - 1)
    return lower, upper, (position - lower).astype(np.float32)


class ResampledLabelSink(_HostSink):
    """Labels (Zc, Yc, Xc) on the cropped, transposed input grid from network-grid score blocks.

    num_classes: K. network_shape: (T', H', W') of the preprocessed volume. target_shape:
    (Zc, Yc, Xc) = ``properties["shape_after_transpose"]``. Blocks must arrive in z order.
    """

    def __init__(self, num_classes: int, network_shape: Sequence[int], target_shape: Sequence[int],
                 device: torch.device) -> None:
        self.num_classes = num_classes
        self.network_shape = tuple(int(n) for n in network_shape)
        self.target_shape = tuple(int(n) for n in target_shape)
        self.torch_dtype = torch.uint8 if num_classes <= 256 else torch.int16
        self.labels = np.zeros(self.target_shape, dtype=np.uint8 if num_classes <= 256 else np.int16)
        self.lower, self.upper, self.weight = linear_taps(self.network_shape[0], self.target_shape[0])
        # The taps on the device once per case: copying host arrays there for every block would
        # wait for the GPU (a copy from pageable memory synchronises) inside the window loop.
        self.device_taps = tuple(torch.from_numpy(taps).to(device) for taps in (self.lower, self.upper, self.weight))
        self.next_output = 0          # first output slice not computed yet
        self.buffer = None            # in-plane resampled network slices (K, n, Yc, Xc) float32
        self.buffer_start = 0         # network index of buffer slice 0
        super().__init__(device)

    def put(self, z_start: int, block: torch.Tensor) -> None:
        if z_start != self.buffer_start + (0 if self.buffer is None else self.buffer.shape[1]):
            raise ValueError("ResampledLabelSink needs consecutive blocks in z order")
        plane = self._resample_in_plane(block)
        self.buffer = plane if self.buffer is None else torch.cat([self.buffer, plane], dim=1)
        available = self.buffer_start + self.buffer.shape[1]
        ready = self.next_output
        while ready < self.target_shape[0] and self.upper[ready] < available:
            ready += 1
        if ready > self.next_output:
            self._emit_outputs(self.next_output, ready)
            self.next_output = ready
        # Keep only the network slices that outputs still to come will read.
        if self.next_output < self.target_shape[0]:
            keep_from = min(int(self.lower[self.next_output]), available)
            drop = keep_from - self.buffer_start
            if drop > 0:
                self.buffer = self.buffer[:, drop:]
                self.buffer_start = keep_from

    def _resample_in_plane(self, block: torch.Tensor) -> torch.Tensor:
        """(K, n, H', W') -> (K, n, Yc, Xc) float32, bilinear with aligned voxel edges."""
        size = self.target_shape[1:]
        if tuple(block.shape[2:]) == size:
            return block.float()
        planes = F.interpolate(block.float().transpose(0, 1), size=size, mode="bilinear", align_corners=False)
        return planes.transpose(0, 1)

    def _emit_outputs(self, first: int, last: int) -> None:
        lower, upper, weight = (taps[first:last] for taps in self.device_taps)
        below = self.buffer.index_select(1, lower - self.buffer_start)
        above = self.buffer.index_select(1, upper - self.buffer_start)
        weight = weight[None, :, None, None]
        scores = below + (above - below) * weight          # (K, m, Yc, Xc)
        self._send(first, scores.argmax(dim=0).to(self.torch_dtype))

    def _store(self, z_start: int, data: np.ndarray) -> None:
        self.labels[z_start:z_start + data.shape[0]] = data

    def result(self) -> np.ndarray:
        self.finish()
        if self.next_output != self.target_shape[0]:
            raise RuntimeError(f"only {self.next_output} of {self.target_shape[0]} output slices were produced")
        return self.labels


def finish_labels(cropped_t: np.ndarray, properties: Dict[str, object]) -> np.ndarray:
    """Labels on the cropped, transposed grid -> the full original grid (z, y, x), background outside
    (and the preprocessing's reorientation to LPS voxel order undone)."""
    return to_original_grid(cropped_t, properties)
