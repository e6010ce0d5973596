"""Small layers shared by MaskSAM's trainable parts, written for GPU throughput.

Feature maps here are channels-last 5D tensors ``(B, T, h, w, C)``: convolutions then run on
cuDNN's NDHWC kernels, normalisation is a plain `layer_norm` over the last axis, and the
``(B*T, h, w, C)`` tokens of SAM's ViT convert to them with a free `view`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3d_channels_last(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Apply `conv` to ``(B, T, h, w, C)``; returns ``(B, T, h, w, C_out)``."""
    out = conv(x.permute(0, 4, 1, 2, 3))
    return out.permute(0, 2, 3, 4, 1)


class ChannelsLastConvBlock(nn.Module):
    """Two (3x3x3 conv, layer norm over channels, GELU) layers on ``(B, T, h, w, C)``.

    Per-voxel layer norm (as in ConvNeXt) instead of nnU-Net's instance norm: no batch statistics,
    no layout conversions, and cheap at full resolution; the paper does not prescribe one.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.LayerNorm(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.LayerNorm(out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(conv3d_channels_last(self.conv1, x)))
        return self.act(self.norm2(conv3d_channels_last(self.conv2, x)))


class LightConvBlock(nn.Module):
    """One 3x3x3 convolution and GELU on ``(B, T, h, w, C)``, for the high-resolution levels.

    At 1/2 and full resolution a decoder level touches 4-16x more voxels than all deeper levels
    together while holding few channels; there a second convolution and a normalisation cost
    more GPU time (memory traffic) than the whole ViT encoder, so these levels stay light.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(conv3d_channels_last(self.conv, x))


def pool_per_slice(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, T, h, w, C) -> (B, T, size*size*C)``: average of each slice over a size x size grid."""
    b, t, h, w, c = x.shape
    if h % size == 0 and w % size == 0:  # a plain reduction; GPUs' adaptive pooling is slow here
        pooled = x.view(b, t, size, h // size, size, w // size, c).mean(dim=(3, 5))
        return pooled.reshape(b, t, size * size * c)
    pooled = F.adaptive_avg_pool2d(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2), size)
    return pooled.permute(0, 2, 3, 1).reshape(b, t, size * size * c)


class TokenUpsampler(nn.Module):
    """Each voxel becomes an f x f in-plane block: ``(B, T, h, w, Cin) -> (B, T, f*h, f*w, Cout)``.

    The same map as a transposed convolution with kernel = stride = (1, f, f), computed as one
    matrix product and a pixel shuffle, which GPUs run far faster.
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.out_channels = out_channels
        self.linear = nn.Linear(in_channels, out_channels * factor * factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, _ = x.shape
        f = self.factor
        y = self.linear(x).view(b, t, h, w, f, f, self.out_channels)
        return y.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h * f, w * f, self.out_channels)
