"""Sliding-window prediction of a whole preprocessed volume, with mirroring and OOM fallbacks.

    job = WindowJob(volume, network, patch=(8, 512, 512), num_classes=16, device=torch.device("cuda"))
    scores, finite = sliding_window_predict(job, WindowSettings())

The loop is: feeder (window batch on the device, prefetched) -> mirrored network call (all flips
in one forward) -> Gaussian-weighted accumulation in a slab -> finished slices to a host sink.
Nothing in it waits for the GPU: no ``.item()``, no ``.cpu()``; the only synchronisation is the
final check that every score was finite.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from MaskSAMCore.errors import Cancelled, MaskSAMError
from MaskSAMCore.inference import devices
from MaskSAMCore.inference.accumulator import SlabAccumulator
from MaskSAMCore.inference.mirroring import SPATIAL_AXES, flip_combinations, mirrored_predict
from MaskSAMCore.inference.restore_sink import ResampledLabelSink
from MaskSAMCore.inference.sinks import HostScoreSink, LabelSink, ScoresAndLabelsSink, Sink, _HostSink
from MaskSAMCore.inference.staging import WindowFeeder
from MaskSAMCore.inference.windows import WindowGrid
from MaskSAMCore.progress import Progress, print_message

Network = Callable[[torch.Tensor], torch.Tensor]
OUTPUTS = ("scores", "labels", "restored", "scores+labels", "scores+restored")


class OutOfMemory(MaskSAMError):
    """The GPU ran out of memory even with the most frugal settings."""


class NonFiniteScores(MaskSAMError):
    """The network produced NaN or Inf scores."""


@dataclass
class WindowSettings:
    """How the windows are predicted. `window_batch` windows share one forward (times the
    number of flips); `flips_per_forward` None means all flips in one forward. `mirror_axes` are
    the axes training mirrored (a model trained on left/right labels is never flipped left-right)."""

    step: float = 0.5
    mirror: bool = True
    window_batch: int = 1
    flips_per_forward: Optional[int] = None
    accumulate_on_host: bool = False
    pad_last_batch: bool = False
    mirror_axes: Tuple[int, ...] = (0, 1, 2)  # patch axes (T, H, W) that test-time mirroring flips

    @property
    def flips(self) -> list:
        """Every combination of flips over `mirror_axes` (8 for all three axes), identity first."""
        if not self.mirror:
            return [()]
        return flip_combinations(tuple(SPATIAL_AXES[axis] for axis in sorted(self.mirror_axes)))

    def more_frugal(self) -> Optional["WindowSettings"]:
        """The next setting to try after running out of GPU memory, or None if none is left."""
        if self.window_batch > 1:
            return dataclasses.replace(self, window_batch=self.window_batch // 2)
        flips_now = self.flips_per_forward or len(self.flips)
        if flips_now > 1:
            return dataclasses.replace(self, flips_per_forward=flips_now // 2)
        if not self.accumulate_on_host:
            return dataclasses.replace(self, accumulate_on_host=True)
        return None


@dataclass(frozen=True)
class WindowJob:
    """What `sliding_window_predict` predicts and what it returns; `WindowSettings` say how (an
    out-of-memory fallback changes those and keeps the job)."""

    volume: Union[np.ndarray, torch.Tensor]   # (C, Z, Y, X) float32 on the host
    network: Network                          # device tensor (M, C, T, H, W) -> (M, K, T, H, W) scores, any M
    patch: Sequence[int]                      # window size (T, H, W)
    num_classes: int                          # K
    device: torch.device                      # where the network runs
    output: str = "scores"                    # one of OUTPUTS (see `sliding_window_predict`)
    progress_stage: Optional[str] = "predict"             # the progress bar's stage; None: no bar
    should_cancel: Optional[Callable[[], bool]] = None    # asked before each window batch
    restore_shape: Optional[Sequence[int]] = None         # (Z', Y', X') for the "restored" outputs only
    case_name: str = "the image"                          # names the case in out-of-memory messages


def sliding_window_predict(job: WindowJob, settings: WindowSettings) -> Tuple[Any, bool]:
    """Predict every voxel of `job.volume` (C, Z, Y, X) with overlapping windows.

    job.output: "scores" -> (K, Z, Y, X) float16 normalised scores; "labels" -> (Z, Y, X) argmax
    (uint8, int16 beyond 256 classes); "restored" -> the argmax of the scores resampled
    (linearly) to `job.restore_shape`, computed slab by slab (see `restore_sink.py`);
    "scores+labels", "scores+restored" -> (scores, labels) from the same blocks (the labels as
    without the scores: `sinks.ScoresAndLabelsSink`).
    Returns (result, all_finite).
    """
    output, restore_shape, num_classes = job.output, job.restore_shape, job.num_classes
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
    if output.endswith("restored") != (restore_shape is not None):
        raise ValueError("restore_shape is needed for, and only for, output='restored'")
    device = torch.device(job.device)
    host_volume = torch.as_tensor(job.volume, dtype=torch.float32)
    if host_volume.ndim != 4:
        raise ValueError(f"volume must be (C, Z, Y, X), got shape {tuple(host_volume.shape)}")
    grid = WindowGrid(tuple(host_volume.shape[1:]), tuple(job.patch), settings.step)
    batches = grid.batches(settings.window_batch)
    accumulate_device = torch.device("cpu") if settings.accumulate_on_host else device
    sink = _sink(output, num_classes, grid.shape, restore_shape, accumulate_device)
    accumulator = SlabAccumulator(grid, num_classes, grid.slab_depth(settings.window_batch),
                                  accumulate_device, sink)
    feeder = WindowFeeder(host_volume, grid, batches, device,
                          pad_to=settings.window_batch if settings.pad_last_batch else None)
    bar = Progress(job.progress_stage, total=len(grid), unit="windows") if job.progress_stage else None
    flips = settings.flips
    try:
        with torch.inference_mode():
            for windows, patches in feeder:
                if job.should_cancel is not None and job.should_cancel():
                    raise Cancelled("prediction cancelled")
                scores = mirrored_predict(job.network, patches, flips, settings.flips_per_forward)
                accumulator.add(windows, scores)
                del scores, patches
                if bar is not None:
                    bar.advance(len(windows))
            finite = accumulator.finish()
            result = sink.result()
    except BaseException:
        feeder.close()
        sink.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    return result, finite


def _sink(output: str, num_classes: int, shape: Tuple[int, int, int], restore_shape: Optional[Sequence[int]],
          device: torch.device) -> Sink:
    """The sink for `output` (see `sliding_window_predict`), accumulating on `device`."""
    if output == "scores":
        return HostScoreSink(num_classes, shape, device)
    labels: _HostSink
    if output.endswith("restored"):
        assert restore_shape is not None
        labels = ResampledLabelSink(num_classes, shape, restore_shape, device)
    else:
        labels = LabelSink(num_classes, shape, device)
    if output.startswith("scores+"):
        return ScoresAndLabelsSink(HostScoreSink(num_classes, shape, device), labels)
    return labels


def predict_with_fallback(job: WindowJob, settings: WindowSettings) -> Tuple[Any, bool, WindowSettings]:
    """`sliding_window_predict`, retried with fewer windows per forward, fewer flips per forward,
    then host accumulation when the GPU runs out of memory. Returns (result, finite, settings
    that worked) so the caller can start the next case with them."""
    current = settings
    while True:
        try:
            result, finite = sliding_window_predict(job, current)
            return result, finite, current
        except BaseException as error:  # noqa: BLE001 - only OOM is handled, everything else re-raised
            if not devices.is_out_of_memory(error):
                raise
        # Only out here, where the error and its traceback (whose frames hold the failed attempt's
        # activations, slab and patches) are gone, can emptying the cache return that memory to
        # the driver - which cuBLAS and cuDNN, allocating outside PyTorch's cache, need.
        torch.cuda.empty_cache()  # a no-op where CUDA was never initialised
        fallback = current.more_frugal()
        if fallback is None:
            raise OutOfMemory(f"{job.case_name}: the GPU ran out of memory even with one window per forward; "
                              "close other GPU programs or use --device cpu")
        message = (f"{job.case_name}: GPU out of memory; retrying with window batch {fallback.window_batch}, "
                   f"{fallback.flips_per_forward or len(fallback.flips)} flips per forward"
                   f"{', accumulating on the host' if fallback.accumulate_on_host else ''}")
        print_message(message, event=True)
        current = fallback
