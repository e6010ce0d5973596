"""Learnable depth positional embedding (paper §2.5 ii, §2.6 ii).

SAM's positional embeddings are 2D. MaskSAM adds one learnable vector per slice position
t = 0..T-1 of a patch, to the encoder's tokens and to the decoder's image positional encoding,
so the otherwise slice-wise SAM knows where in the slab each slice lies. Starts at zero (SAM's
behaviour); T is fixed by the configuration and stored in the model folder.
"""

from __future__ import annotations

import torch
from torch import nn


class DepthPositionalEmbedding(nn.Module):
    """Adds ``embedding[t]`` to every slice ``t`` of ``(G*T, ..., C)`` (channels last) or of
    ``(G*T, C, ...)`` (channels first, ``channels_first=True``)."""

    def __init__(self, num_slices: int, dim: int, enabled: bool = True) -> None:
        super().__init__()
        self.num_slices = num_slices
        self.enabled = enabled
        self.embedding = nn.Parameter(torch.zeros(num_slices, dim)) if enabled else None

    def forward(self, x: torch.Tensor, channels_first: bool = False) -> torch.Tensor:
        if self.embedding is None:
            return x
        groups = x.shape[0] // self.num_slices
        if groups * self.num_slices != x.shape[0]:
            raise ValueError(
                f"leading dimension {x.shape[0]} is not a multiple of {self.num_slices} slices"
            )
        extra_dims = x.dim() - 2
        if channels_first:
            emb = self.embedding.view(1, self.num_slices, -1, *([1] * extra_dims))
        else:
            emb = self.embedding.view(1, self.num_slices, *([1] * extra_dims), -1)
        shaped = x.view(groups, self.num_slices, *x.shape[1:])
        return (shaped + emb.to(x.dtype)).view_as(x)
