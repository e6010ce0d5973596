"""Modality adapter: C medical channels -> the 3 channels SAM's encoder expects (paper §2.5 i).

An inverted bottleneck of 1x1x1 convolutions (per-voxel expansion, GELU, projection) learns the
mapping from any number of modalities. It is added to the channel mean replicated three times,
and its projection starts near zero, so at initialisation SAM sees the normalised image as a
grey-scale picture — the input it was pre-trained on — rather than noise. It is deliberately
per-voxel: it runs at full resolution on every slice of every window, where a spatial kernel
costs more GPU time than SAM's whole encoder gains from it (measured on an H100); spatial context
is the encoder's job.
"""

from __future__ import annotations

import torch
from torch import nn

from MaskSAMCore.model.adapters import init_near_zero


class ModalityAdapter(nn.Module):
    """``(B, C, T, H, W) -> (B, T, H, W, 3)`` (channels-last, ready for SAM's patch embedding)."""

    def __init__(self, in_channels: int, hidden_channels: int = 8, out_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.expand = nn.Linear(in_channels, hidden_channels)
        self.act = nn.GELU()
        self.project = nn.Linear(hidden_channels, out_channels)
        init_near_zero(self.project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, T, H, W), got shape {tuple(x.shape)}"
            )
        voxels = x.permute(0, 2, 3, 4, 1)                                    # (B, T, H, W, C)
        grey = voxels.mean(dim=-1, keepdim=True).expand(*voxels.shape[:-1], self.out_channels)
        hidden = self.act(self.expand(voxels))
        return grey + self.project(hidden)
