"""Cutting window batches out of the host volume and getting them onto the device ahead of time.

On CUDA a background thread gathers batch i+1 (and i+2) into pinned host memory and starts its
copy to the GPU on a separate stream while the GPU computes batch i; the compute stream only
waits for that copy on the GPU side (`wait_event`), so the window loop never blocks the host.
On the CPU the gather is done in the loop itself (the cores are busy computing anyway).

Windows are in padded coordinates (see `windows.py`): parts of a window outside the real
volume are filled with zeros, the value of the normalised image's mean intensity.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from MaskSAMCore.inference.windows import Window, WindowGrid

_DONE = object()
PREFETCH_BATCHES = 2


def gather_windows(volume: torch.Tensor, grid: WindowGrid, windows: Sequence[Window],
                   out: torch.Tensor) -> torch.Tensor:
    """Copy `windows` of volume (C, Z, Y, X) into out (B >= len(windows), C, T, H, W).

    Rows of `out` beyond len(windows) (padding of a last, short batch) are zeroed.
    """
    patch = grid.patch
    padded = grid.padded_shape != grid.shape
    if padded or out.shape[0] > len(windows):
        out.zero_()
    for index, window in enumerate(windows):
        source, target = [], []
        for axis, start in enumerate((window.z, window.y, window.x)):
            real_start = start - grid.pad_before[axis]
            low = max(real_start, 0)
            high = min(real_start + patch[axis], grid.shape[axis])
            source.append(slice(low, high))
            target.append(slice(low - real_start, high - real_start))
        out[index][(slice(None), *target)] = volume[(slice(None), *source)]
    return out


class WindowFeeder:
    """Yields ``(windows, patches)`` for each batch, patches (B, C, T, H, W) float32 on `device`.

    volume: (C, Z, Y, X) float32 CPU tensor (the preprocessed case). batches: window batches in
    z order. pad_to: if given, every yielded tensor has this many rows (a short last batch is
    zero-padded) so that a compiled network always sees one shape.
    """

    def __init__(self, volume: torch.Tensor, grid: WindowGrid, batches: List[List[Window]],
                 device: torch.device, pad_to: Optional[int] = None) -> None:
        self.volume = volume
        self.grid = grid
        self.batches = batches
        self.device = torch.device(device)
        self.pad_to = pad_to
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _rows(self, windows: Sequence[Window]) -> int:
        return max(len(windows), self.pad_to or 0)

    def _empty(self, rows: int, pin: bool) -> torch.Tensor:
        channels = self.volume.shape[0]
        return torch.empty((rows, channels, *self.grid.patch), dtype=self.volume.dtype, pin_memory=pin)

    def __iter__(self) -> Iterator[Tuple[List[Window], torch.Tensor]]:
        if self.device.type != "cuda":
            for windows in self.batches:
                patches = gather_windows(self.volume, self.grid, windows, self._empty(self._rows(windows), False))
                yield windows, patches.to(self.device)
            return
        yield from self._iterate_cuda()

    # -- CUDA: background gather + copy stream -------------------------------------------------
    def _iterate_cuda(self) -> Iterator[Tuple[List[Window], torch.Tensor]]:
        ready: "queue.Queue[object]" = queue.Queue(maxsize=PREFETCH_BATCHES)
        copy_stream = torch.cuda.Stream(device=self.device)
        self._stop.clear()
        self._thread = threading.Thread(target=self._produce, args=(ready, copy_stream),
                                        name="masksam-feeder", daemon=True)
        self._thread.start()
        compute_stream = torch.cuda.current_stream(self.device)
        try:
            while True:
                item = ready.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                windows, patches, copied = item  # type: ignore[misc]
                compute_stream.wait_event(copied)
                # The tensor was allocated on the copy stream; tell the allocator it is used here.
                patches.record_stream(compute_stream)
                yield windows, patches
        finally:
            self.close()

    def _produce(self, ready: "queue.Queue[object]", copy_stream: "torch.cuda.Stream") -> None:
        try:
            with torch.cuda.device(self.device), torch.inference_mode():
                for windows in self.batches:
                    if self._stop.is_set():
                        return
                    staging = gather_windows(self.volume, self.grid, windows,
                                             self._empty(self._rows(windows), True))
                    with torch.cuda.stream(copy_stream):
                        patches = staging.to(self.device, non_blocking=True)
                        copied = torch.cuda.Event()
                        copied.record(copy_stream)
                    self._put(ready, (windows, patches, copied))
            self._put(ready, _DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self._put(ready, exc)

    def _put(self, ready: "queue.Queue[object]", item: object) -> None:
        while not self._stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Stop the background thread (after the last batch, an error or a cancel)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
