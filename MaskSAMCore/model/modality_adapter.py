"""Modality adapter: C medical channels -> the 3 channels SAM's encoder expects (paper §2.5 i).

An inverted bottleneck of 1x1x1 convolutions (per-voxel expansion, GELU, projection) learns the
mapping from any number of modalities. It is added to the channel mean replicated three times,
and its projection starts near zero, so at initialisation SAM sees the normalised image as a
grey-scale picture — the input it was pre-trained on — rather than noise.

It is per-voxel for speed: it runs at full resolution on every slice of every window, where each
spatial tap adds memory traffic. The per-voxel version takes 5.6 ms per 8 windows of 8 x 512 x 512
against 92 ms for the ViT-B encoder (H100, eager; `benchmarks/results/h100_network_stages_profile.txt`).
A spatial kernel (the first version had a depthwise 3x3x3) was not timed against it, and whether
one would improve accuracy is unmeasured; spatial context is left to the encoder.
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
