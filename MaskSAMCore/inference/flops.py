"""Counting the floating-point work of one forward with PyTorch's own FLOP counter.

`torch.utils.flop_counter.FlopCounterMode` counts matrix products, convolutions and attention
(2 FLOPs per multiply-add) and ignores element-wise work, the usual convention for "model
TFLOP/s". The count is taken on one window (one flip), outside the timed run, and multiplied
by the flips and the windows, so the timed run is never slowed by the counter.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(function: Union[Callable[[torch.Tensor], object], torch.nn.Module], sample: torch.Tensor) -> int:
    """FLOPs of ``function(sample)`` (run once, results discarded)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        function(sample)
    return int(counter.get_total_flops())
