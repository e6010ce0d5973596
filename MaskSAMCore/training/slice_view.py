"""Per-slice views of the network's outputs, without copying the big mask tensors.

`MaskSAMOutput` stores masks as ``(B, N, T, H, W)`` and classes/boxes as ``(B, T, N, ...)``.
Matching and losses work per slice ``s = b * T + t``. Reshaping the masks to ``(S, N, H, W)``
would copy hundreds of MB at the real patch size, so `SlicePredictions` indexes into the original
tensor instead: only the sampled points or the matched masks are ever gathered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor


@dataclass
class SlicePredictions:
    """The outputs needed by matching and losses, addressed by slice.

    Attributes:
        class_logits: (S, N, K+1) class logits, last column "no object".
        mask_logits: (B, N, T, H, W) final mask logits (the network's own tensor).
        aux_mask_logits: (B, N, T, H, W) auxiliary mask logits, or None (prompt mode "box").
        boxes: (S, N, 4) learnable normalised boxes, or None (prompt mode "mask").
    """

    class_logits: Tensor
    mask_logits: Tensor
    aux_mask_logits: Optional[Tensor]
    boxes: Optional[Tensor]

    @classmethod
    def from_output(cls, output: Any) -> "SlicePredictions":
        """Wrap a `MaskSAMOutput` (or anything with the same four attributes)."""
        b, t, n, k1 = output.class_logits.shape
        # The box loss judges the learnable boxes (§2.7's b_aux), not the averaged prompt boxes:
        # their mask-derived half has no gradient, so only the learnable half could learn anyway.
        boxes = output.aux_boxes
        return cls(
            class_logits=output.class_logits.reshape(b * t, n, k1),
            mask_logits=output.mask_logits,
            aux_mask_logits=output.aux_mask_logits,
            boxes=None if boxes is None else boxes.reshape(b * t, n, 4),
        )

    @property
    def spatial_shape(self) -> tuple:
        return tuple(self.mask_logits.shape[-2:])


def masks_at_pixels(mask_logits: Tensor, pixel_index: Tensor) -> Tensor:
    """Mask logits of every query at chosen pixels of each slice.

    Args:
        mask_logits: (B, N, T, H, W).
        pixel_index: (S, P) int64 flat pixel indices (y * W + x) per slice, S = B * T.

    Returns:
        (S, N, P) logits in the dtype of `mask_logits`.
    """
    b, n, t, h, w = mask_logits.shape
    p = pixel_index.shape[-1]
    flat = mask_logits.reshape(b, n, t, h * w)  # a view: the last two axes are contiguous
    index = pixel_index.view(b, 1, t, p).expand(b, n, t, p)
    picked = torch.gather(flat, 3, index)  # (B, N, T, P)
    return picked.permute(0, 2, 1, 3).reshape(b * t, n, p)


def select_masks(mask_logits: Tensor, slice_index: Tensor, query_index: Tensor) -> Tensor:
    """The (M, H, W) masks of M (slice, query) pairs from (B, N, T, H, W) logits."""
    t = mask_logits.shape[2]
    return mask_logits[slice_index // t, query_index, slice_index % t]
