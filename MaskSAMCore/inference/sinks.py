"""Where finished slices of the sliding-window result go: host arrays filled without stalling the GPU.

A sink receives normalised score blocks (K, n, Y, X) for consecutive real slices and stores
them on the host, either as float16 scores (`HostScoreSink`, for probability output, which needs
every class) or as an argmax label map (`LabelSink`, when preprocessing did not resample: K times
less host memory). A third kind, `restore_sink.ResampledLabelSink`, resamples the scores to the
input grid on the device before the argmax. `ScoresAndLabelsSink` feeds one block to a score
sink and a label sink, so that the label map written beside probabilities is the float32 argmax
a run without them writes, not an argmax of float16 scores (which rounding can tip at near-ties).

On a CUDA device the block is reduced/cast on the GPU, copied into pinned host memory with
``non_blocking=True``, and a background thread waits for that copy's event and moves the data
into the (pageable) result array. The window loop therefore never waits for the GPU.
"""

from __future__ import annotations

import queue
import threading
from typing import Optional, Tuple, Union

import numpy as np
import torch

_STOP = object()


class _HostSink:
    """Common machinery: a result array on the host and (on CUDA) a copy-completion thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self._asynchronous = self.device.type == "cuda"
        self._queue: "queue.Queue[object]" = queue.Queue()
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        if self._asynchronous:
            self._thread = threading.Thread(target=self._drain, name="masksam-sink", daemon=True)
            self._thread.start()

    # -- to implement --------------------------------------------------------------------------
    def _reduce(self, block: torch.Tensor) -> torch.Tensor:
        """block (K, n, Y, X) float32 -> what is stored for these n slices (on block's device)."""
        raise NotImplementedError

    def _store(self, z_start: int, data: np.ndarray) -> None:
        """Write reduced data for slices z_start.. into the result array."""
        raise NotImplementedError

    # -- common --------------------------------------------------------------------------------
    def put(self, z_start: int, block: torch.Tensor) -> None:
        """Take normalised scores (K, n, Y, X) of real slices ``z_start .. z_start + n``."""
        self._send(z_start, self._reduce(block))

    def _send(self, z_start: int, reduced: torch.Tensor) -> None:
        """Store `reduced` (on any device) at `z_start` of the result, without waiting for a GPU."""
        if not self._asynchronous or reduced.device.type != "cuda":
            self._store(z_start, reduced.cpu().numpy())
            return
        staging = torch.empty(reduced.shape, dtype=reduced.dtype, pin_memory=True)
        staging.copy_(reduced, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(reduced.device))
        self._queue.put((z_start, staging, done))

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # keep emptying the queue so that put() never blocks
            z_start, staging, done = item  # type: ignore[misc]
            try:
                done.synchronize()
                self._store(z_start, staging.numpy())
            except BaseException as exc:  # noqa: BLE001 - re-raised in finish()
                self._error = exc

    def finish(self) -> None:
        """Wait until every block is stored; re-raise an error of the copy thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the copy thread without waiting for a result (after an error or cancel)."""
        if self._thread is not None:
            self._error = self._error or RuntimeError("sink closed")
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None


class HostScoreSink(_HostSink):
    """Collects scores as a host array (K, Z, Y, X) float16 (normalised scores lie in [0, N])."""

    def __init__(self, num_classes: int, shape: Tuple[int, int, int], device: torch.device) -> None:
        self.scores = np.zeros((num_classes, *shape), dtype=np.float16)
        super().__init__(device)

    def _reduce(self, block: torch.Tensor) -> torch.Tensor:
        return block.to(torch.float16)

    def _store(self, z_start: int, data: np.ndarray) -> None:
        self.scores[:, z_start:z_start + data.shape[1]] = data

    def result(self) -> np.ndarray:
        self.finish()
        return self.scores


class LabelSink(_HostSink):
    """Collects the argmax over classes as a host label map (Z, Y, X), uint8 (int16 if K > 256)."""

    def __init__(self, num_classes: int, shape: Tuple[int, int, int], device: torch.device) -> None:
        self.torch_dtype = torch.uint8 if num_classes <= 256 else torch.int16
        self.labels = np.zeros(shape, dtype=np.uint8 if num_classes <= 256 else np.int16)
        super().__init__(device)

    def _reduce(self, block: torch.Tensor) -> torch.Tensor:
        return block.argmax(dim=0).to(self.torch_dtype)

    def _store(self, z_start: int, data: np.ndarray) -> None:
        self.labels[z_start:z_start + data.shape[0]] = data

    def result(self) -> np.ndarray:
        self.finish()
        return self.labels


class ScoresAndLabelsSink:
    """Both float16 scores (K, Z, Y, X) and a label map from the same float32 blocks.

    `labels` is the sink a run without probabilities would use (`LabelSink`, or
    `restore_sink.ResampledLabelSink` when preprocessing resampled), so adding probabilities
    cannot change the label map. Costs one more label map on the host (uint8: 1/32 of the float16
    scores of 16 classes) instead of float32 scores (twice the float16 ones: 10 GB for a
    512 x 512 x 600 CT of 16 classes), which would also keep the argmax of the float32 path."""

    def __init__(self, scores: HostScoreSink, labels: _HostSink) -> None:
        self.scores = scores
        self.labels = labels

    def put(self, z_start: int, block: torch.Tensor) -> None:
        self.labels.put(z_start, block)
        self.scores.put(z_start, block)

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        """(scores (K, Z, Y, X) float16, the label sink's result)."""
        return self.scores.result(), self.labels.result()

    def close(self) -> None:
        self.scores.close()
        self.labels.close()


Sink = Union[_HostSink, ScoresAndLabelsSink]   # what the accumulator hands finished slices to
