"""3D mask head: SAM's per-slice low-resolution masks -> full-resolution 3D mask logits.

SAM's decoder predicts each slice's mask at a quarter of the input resolution (4h = H/4) and
independently of the neighbouring slices. The head refines each query's stack of T masks with
3D convolutions (so slices agree), using the prompt generator's auxiliary mask of the same query
as a second input channel when there is one, then up-samples bilinearly in-plane to H x W.
The refinement is residual and starts near zero: initially the output is SAM's mask, up-sampled.

The paper defines the final masks at the input's size, m_final in [0, 1]^(H x W) (§2.7), but never
says how SAM's 4h x 4w masks reach H x W; this head fills that gap (README, "Where this
implementation departs from the paper"). Feeding it the auxiliary mask is this project's choice,
not the paper's: that mask comes from the prompt generator's 3D decoder, which has
full-resolution skips, so it carries depth context and detail that SAM's per-slice 4h x 4w mask
lacks, for one extra input channel.
Working at 1/4 resolution keeps the head cheap for 24 queries x 8 slices x 512^2 windows.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from MaskSAMCore.model.adapters import init_near_zero


class MaskHead3D(nn.Module):
    """``forward(low_res (B, N, T, 4h, 4w), aux_low (B, T, N, 4h, 4w) or None, (H, W))
    -> (B, N, T, H, W)``; ``aux_low`` is the auxiliary mask pooled to SAM's mask size."""

    def __init__(self, hidden_channels: int = 16, use_aux: bool = True) -> None:
        super().__init__()
        self.use_aux = use_aux
        in_channels = 2 if use_aux else 1
        self.refine = nn.Sequential(
            nn.Conv3d(in_channels, hidden_channels, 3, padding=1),
            nn.GELU(),
            nn.Conv3d(hidden_channels, hidden_channels, 3, padding=1),
            nn.GELU(),
            nn.Conv3d(hidden_channels, 1, 1),
        )
        init_near_zero(self.refine[-1])

    def forward(self, low_res: torch.Tensor, aux: Optional[torch.Tensor],
                size: tuple) -> torch.Tensor:
        b, n, t, h, w = low_res.shape
        x = low_res.reshape(b * n, 1, t, h, w)
        if self.use_aux:
            if aux is None:
                raise ValueError("this mask head was built to use auxiliary masks")
            aux_by_query = aux.transpose(1, 2).reshape(b * n, 1, t, h, w)
            x = torch.cat([x, aux_by_query.to(x.dtype)], dim=1)
        refined = low_res.reshape(b * n, t, h, w) + self.refine(x)[:, 0]
        full = F.interpolate(refined, size=tuple(size), mode="bilinear", align_corners=False)
        return full.view(b, n, t, *size)
