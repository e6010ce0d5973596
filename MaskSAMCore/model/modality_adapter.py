"""Modality adapter: C medical channels -> the 3 channels SAM's encoder expects (paper §2.5 i).

An inverted-bottleneck stack of 3D convolutions (1x1x1 expand, depthwise 3x3x3, 1x1x1 project)
learns the mapping from any number of modalities. It is added to the channel mean replicated
three times, and its projection starts near zero, so at initialisation SAM sees the normalised
image as a grey-scale picture — the input it was pre-trained on — rather than noise.
"""

from __future__ import annotations

import torch
from torch import nn

from MaskSAMCore.model.adapters import init_near_zero


class ModalityAdapter(nn.Module):
    """``(B, C, T, H, W) -> (B, 3, T, H, W)``."""

    def __init__(self, in_channels: int, hidden_channels: int = 32, out_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.expand = nn.Conv3d(in_channels, hidden_channels, kernel_size=1)
        self.mix = nn.Conv3d(hidden_channels, hidden_channels, kernel_size=3, padding=1,
                             groups=hidden_channels)
        self.act = nn.GELU()
        self.project = nn.Conv3d(hidden_channels, out_channels, kernel_size=1)
        init_near_zero(self.project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, T, H, W), got shape {tuple(x.shape)}"
            )
        grey = x.mean(dim=1, keepdim=True).expand(-1, self.out_channels, -1, -1, -1)
        hidden = self.act(self.mix(self.act(self.expand(x))))
        return grey + self.project(hidden)
