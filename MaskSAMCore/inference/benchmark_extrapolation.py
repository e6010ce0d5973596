"""`masksam benchmark --max-windows N`: the whole predictor, but the real network only for the first N windows.

A mirrored ViT-B run takes hours on a CPU. Instead of timing N forwards by themselves and guessing
the rest, the case goes through `Predictor.predict_prepared` as `masksam predict` runs it: the
same feeder, accumulation, sink (slab-wise restoring with --resample), label export and host
memory. Only the network is a stand-in: the real one for the first N windows (all their flips),
zero scores after that. The network seconds are then the measured loop, with the real forwards'
time scaled from the timed patches to all of them. What the stand-in cannot show: a later
window's own cost (all windows are the same size, so none is expected) and the GPU memory of
more than N windows (the window batch is the same for all, so no more is expected either).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import torch

from MaskSAMCore.inference.predictor import PreparedCase, Predictor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FirstPatchesOnly(torch.nn.Module):
    """The model's `segment` for the first `budget` patches (windows x flips), zero scores after
    that; the real forwards are timed one by one (synchronised, so a GPU's queue is not hidden)."""

    def __init__(self, model: torch.nn.Module, budget: int, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.budget = budget
        self.device = device
        self.timed_patches = 0
        self.skipped_patches = 0
        self.seconds = 0.0

    def segment(self, patches: torch.Tensor) -> torch.Tensor:
        if self.timed_patches >= self.budget:
            self.skipped_patches += patches.shape[0]
            return patches.new_zeros((patches.shape[0], self.config.num_classes, *patches.shape[2:]),
                                     dtype=torch.float32)
        _sync(self.device)
        start = time.perf_counter()
        scores = self.model.segment(patches)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        self.timed_patches += patches.shape[0]
        return scores

    def compile_blocks(self) -> None:
        """Nothing to do: the wrapped model's blocks were compiled when its predictor was made."""

    def extrapolated_seconds(self, loop_seconds: float) -> float:
        """The loop's seconds with the real forwards' time scaled to every patch."""
        total = self.timed_patches + self.skipped_patches
        return loop_seconds - self.seconds + self.seconds * total / max(self.timed_patches, 1)


@dataclass
class Extrapolation:
    timings: Dict[str, float]
    windows: int


def extrapolated_run(predictor: Predictor, prepared: PreparedCase, max_windows: int, output: Path) -> Extrapolation:
    """`predictor.predict_prepared(prepared, output)` with the real network for the first
    `max_windows` windows only; timings as predict's, the network seconds extrapolated."""
    settings = predictor.window_settings()
    network = FirstPatchesOnly(predictor.model, max_windows * len(settings.flips), predictor.device)
    stand_in = Predictor(network, predictor.plan, predictor.class_names, predictor.device, predictor.options,
                         name=predictor.name, mirror_axes=predictor.mirror_axes, regions=predictor.regions,
                         modality=predictor.modality)
    stand_in.settings = settings   # as chosen on the warm-up: no second measurement on a GPU
    result = stand_in.predict_prepared(prepared, output)
    timings: Dict[str, Any] = dict(result.timings)
    timings["network_s"] = network.extrapolated_seconds(timings["network_s"])
    return Extrapolation(timings, result.windows)
