"""Counting the floating-point work of one forward with PyTorch's own FLOP counter.

`torch.utils.flop_counter.FlopCounterMode` counts matrix products, convolutions and attention
(2 FLOPs per multiply-add) and ignores element-wise work, the usual convention for "model
TFLOP/s". The count is taken on one window (one flip), outside the timed run, and multiplied
by the flips and the windows, so the timed run is never slowed by the counter.

Attention on the CPU: `scaled_dot_product_attention` runs there as
``aten._scaled_dot_product_flash_attention_for_cpu``, which PyTorch's counter has no formula for
(it counts the CUDA kernels only), so without `CPU_ATTENTION` a CPU count misses every attention
product (12 % of ViT-B's work at 512 px). The math fallback (other head widths, 3-d inputs) is
written in matrix products and counted as such.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Sequence, Union

import torch
from torch.utils.flop_counter import FlopCounterMode


def attention_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int],
                    *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``softmax(q k^T) v`` for q ``(..., L, E)``, k ``(..., S, E)``, v ``(..., S, Ev)``:
    the two products, 2 FLOPs per multiply-add, as PyTorch counts its CUDA attention kernels (the
    softmax, the scaling and a mask are element-wise and left out, as everywhere in the counter).
    Leading dimensions are batch x query heads (keys may have fewer heads, shared by the queries)."""
    *leading, queries, head = query_shape
    keys, value_head = key_shape[-2], value_shape[-1]
    return 2 * math.prod(leading) * queries * keys * (head + value_head)


# Op packets whose FLOPs the counter would otherwise miss; the formula is given the shapes.
CPU_ATTENTION: Dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops,
}


def flop_counter() -> FlopCounterMode:
    """PyTorch's counter with attention on the CPU counted too (for every count in MaskSAM)."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


def count_flops(function: Union[Callable[[torch.Tensor], object], torch.nn.Module], sample: torch.Tensor) -> int:
    """FLOPs of ``function(sample)`` (run once, results discarded)."""
    counter = flop_counter()
    with torch.inference_mode(), counter:
        function(sample)
    return int(counter.get_total_flops())
