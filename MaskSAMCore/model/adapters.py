"""The trainable adapters injected into SAM's frozen transformer blocks (paper §2.4, Fig. 4).

Every adapter takes features laid out by slice, ``(G, T, *spatial, C)`` — G groups (the batch,
or batch x queries in the decoder), T adjacent slices, any spatial/token axes, C channels — and
returns the *residual branch* of the same shape; the caller adds it where the paper puts it.
That keeps the depth axis explicit: a depth layer never mixes windows or queries by mistake.

- `Adapter` (vanilla): FC-down, GELU, FC-up.
- `DConvAdapter`: a depthwise 3D convolution over (T, h, w) with a skip, between down and up.
  Needs spatial axes ``(G, T, h, w, C)``; used for image embeddings.
- `DMLPAdapter`: an inverted-bottleneck MLP over the depth axis T with a skip, between down and up
  (or after FC-up / before FC-down for the table-4 ablations B6/B7); used for prompt tokens.

The last layer of every branch starts near zero (`init_near_zero`), so at initialisation the
adapted model computes (almost exactly) what frozen SAM computes, yet every weight gets a gradient
from the first step (an exactly-zero output layer would starve the layers before it).
"""

from __future__ import annotations

import torch
from torch import nn

from MaskSAMCore.model.depthwise_conv import depthwise_conv3d


NEAR_ZERO_STD = 1e-3


def init_near_zero(layer: nn.Module) -> None:
    """Weights ~ N(0, 1e-3), bias 0: the branch starts as (almost) the identity/zero residual."""
    nn.init.normal_(layer.weight, std=NEAR_ZERO_STD)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def bottleneck_width(dim: int, ratio: float) -> int:
    """The hidden width of an adapter on `dim` features."""
    return max(4, int(round(dim * ratio)))


class DepthMLP(nn.Module):
    """x + MLP over the depth axis: ``(G, T, ..., C) -> (G, T, ..., C)``, hidden width ratio*T."""

    def __init__(self, num_slices: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = max(2, int(round(num_slices * ratio)))
        self.expand = nn.Linear(num_slices, hidden)
        self.act = nn.GELU()  # the paper says "an activation layer"; GELU as in the adapter around it
        self.project = nn.Linear(hidden, num_slices)
        init_near_zero(self.project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth_last = x.movedim(1, -1)  # (G, ..., C, T)
        mixed = self.project(self.act(self.expand(depth_last)))
        return x + mixed.movedim(-1, 1)


class DepthwiseConv3d(nn.Module):
    """x + depthwise 3x3x3 convolution over (T, h, w): ``(G, T, h, w, C) -> (G, T, h, w, C)``."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        # The paper gives no kernel size. 3 is the smallest that mixes each token with its
        # neighbours along all three axes; stacked over 12 encoder blocks (and the decoder) the
        # reach already spans the T = 8 slices and far in-plane, so a bigger kernel buys little.
        self.conv = nn.Conv3d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        init_near_zero(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"DepthwiseConv3d expects (G, T, h, w, C), got shape {tuple(x.shape)}")
        return x + depthwise_conv3d(x, self.conv.weight, self.conv.bias)


class Adapter(nn.Module):
    """Vanilla bottleneck adapter; returns the residual branch ``(..., C) -> (..., C)``."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        width = bottleneck_width(dim, ratio)
        self.down = nn.Linear(dim, width)
        # The paper's "activation layer" is unnamed; GELU is the activation of SAM's ViT MLP
        # (the features adapted here) and of Med-SA's released adapter code.
        self.act = nn.GELU()
        self.up = nn.Linear(width, dim)
        init_near_zero(self.up)

    def middle(self, hidden: torch.Tensor) -> torch.Tensor:
        """What sits between FC-down and FC-up; identity for the vanilla adapter."""
        return hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.middle(self.act(self.down(x))))


class DConvAdapter(Adapter):
    """3D depth-convolution adapter (Fig. 4b): down, GELU, depthwise 3D conv with skip, up.

    Input and output ``(G, T, h, w, C)``.
    """

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__(dim, ratio)
        self.depth_conv = DepthwiseConv3d(self.down.out_features)

    def middle(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.depth_conv(hidden)


class DMLPAdapter(Adapter):
    """3D depth-MLP adapter (Fig. 4a): down, GELU, depth MLP over T with skip, up.

    Input and output ``(G, T, ..., C)``. `position` moves the depth MLP for the ablations:
    ``"middle"`` (the paper's DMLPAdapter, B8), ``"after_up"`` (B6), ``"before_down"`` (B7).
    """

    def __init__(self, dim: int, num_slices: int, ratio: float = 0.25,
                 depth_ratio: float = 4.0, position: str = "middle") -> None:
        super().__init__(dim, ratio)
        if position not in ("middle", "after_up", "before_down"):
            raise ValueError(f"unknown depth-MLP position {position!r}")
        self.position = position
        self.depth_mlp = DepthMLP(num_slices, depth_ratio)

    def middle(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.depth_mlp(hidden) if self.position == "middle" else hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.position == "before_down":
            x = self.depth_mlp(x)
        out = super().forward(x)
        if self.position == "after_up":
            out = self.depth_mlp(out)
        return out


def image_adapter(kind: str, dim: int, num_slices: int, ratio: float, depth_ratio: float,
                  depth_mlp_position: str) -> Adapter:
    """The adapter for image embeddings ``(G, T, h, w, C)`` under an ablation setting."""
    if kind == "depth_conv":
        return DConvAdapter(dim, ratio)
    if kind == "depth_mlp":
        return DMLPAdapter(dim, num_slices, ratio, depth_ratio, depth_mlp_position)
    return Adapter(dim, ratio)


def token_adapter(kind: str, dim: int, num_slices: int, ratio: float, depth_ratio: float,
                  depth_mlp_position: str) -> Adapter:
    """The adapter for prompt tokens ``(G, T, ..., C)`` under an ablation setting."""
    if kind in ("depth_conv", "depth_mlp"):
        return DMLPAdapter(dim, num_slices, ratio, depth_ratio, depth_mlp_position)
    return Adapter(dim, ratio)
