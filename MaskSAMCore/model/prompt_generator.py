"""The prompt generator (paper §2.3, Fig. 3b and 5): SAM's prompts made from SAM's own features.

A 3D convolutional decoder climbs from the encoder's neck output (1/p resolution, p = ViT patch)
to full resolution, doubling the in-plane resolution at each level and concatenating features of
an earlier encoder block brought to that level's resolution (deepest level: neck + last
selected block; the full-resolution level: the adapted input image). Its last 1x1x1 convolution
gives N auxiliary mask logits. The output of every level is average-pooled per slice to 2x2 for
the N learnable boxes and to 1x1 for the N auxiliary classifier tokens (each through an MLP).

All convolutions are 3D with in-plane-only up-sampling, so neighbouring slices inform each other
while the through-plane resolution is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from MaskSAMCore.model.boxes import cxcywh_to_xyxy
from MaskSAMCore.model.config import MaskSAMConfig


class ConvBlock3d(nn.Module):
    """Two (3x3x3 conv, instance norm, GELU) layers: ``(B, Cin, T, h, w) -> (B, Cout, T, h, w)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.GELU(),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PooledHead(nn.Module):
    """Per-slice pooled features of all levels -> N vectors: ``(B, T, F) -> (B, T, N, out)``."""

    def __init__(self, in_features: int, hidden: int, num_queries: int, out_features: int) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.out_features = out_features
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, num_queries * out_features)
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.mlp(pooled)
        return out.view(*pooled.shape[:2], self.num_queries, self.out_features)


@dataclass
class Prompts:
    """What the prompt generator produces for a patch of B volumes, T slices, N queries."""

    aux_mask_logits: Optional[torch.Tensor]  # (B, N, T, H, W), None in prompt mode "box"
    learned_boxes: Optional[torch.Tensor]    # (B, T, N, 4) xyxy in [0, 1], None in prompt mode "mask"
    class_tokens: torch.Tensor               # (B, T, N, D) auxiliary classifier tokens


class PromptGenerator(nn.Module):
    """``forward(neck, features, image) -> Prompts``.

    Args (to `forward`):
        neck: ``(B*T, 256, h, w)`` SAM neck output.
        features: encoder block outputs ``[(B*T, h, w, D), ...]``, shallow to deep.
        image: ``(B, 3, T, H, W)`` the adapted input image (full-resolution skip).
    """

    def __init__(self, config: MaskSAMConfig) -> None:
        super().__init__()
        b = config.backbone
        self.num_slices = config.num_slices
        self.num_queries = config.num_queries
        self.make_masks = config.prompt_mode != "box"
        self.make_boxes = config.prompt_mode != "mask"
        channels: Sequence[int] = config.prompt_generator_channels
        self.levels = len(channels)
        enc_dim = b.encoder_embed_dim
        # Level 0 (1/p): neck + projected deepest feature.
        self.deep_projection = nn.Conv3d(enc_dim, channels[0], 1)
        self.level_blocks = nn.ModuleList([ConvBlock3d(b.prompt_embed_dim + channels[0], channels[0])])
        self.upsamplers = nn.ModuleList()
        self.skip_projections = nn.ModuleList()
        for level in range(1, self.levels):
            self.upsamplers.append(
                nn.ConvTranspose3d(channels[level - 1], channels[level], (1, 2, 2), stride=(1, 2, 2))
            )
            if level == self.levels - 1:
                skip: nn.Module = nn.Conv3d(3, channels[level], 3, padding=1)
            else:
                factor = 2 ** level
                skip = nn.ConvTranspose3d(enc_dim, channels[level], (1, factor, factor),
                                          stride=(1, factor, factor))
            self.skip_projections.append(skip)
            self.level_blocks.append(ConvBlock3d(2 * channels[level], channels[level]))
        self.mask_out = nn.Conv3d(channels[-1], config.num_queries, 1) if self.make_masks else None
        total = sum(channels)
        self.box_head = (PooledHead(4 * total, config.pooled_hidden_dim, config.num_queries, 4)
                         if self.make_boxes else None)
        self.token_head = PooledHead(total, config.pooled_hidden_dim, config.num_queries,
                                     b.prompt_embed_dim)

    def _to_volume(self, slices: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """``(B*T, h, w, C)`` or ``(B*T, C, h, w)`` -> ``(B, C, T, h, w)``."""
        if channels_last:
            slices = slices.permute(0, 3, 1, 2)
        bt, c, h, w = slices.shape
        return slices.reshape(bt // self.num_slices, self.num_slices, c, h, w).transpose(1, 2)

    def forward(self, neck: torch.Tensor, features: List[torch.Tensor], image: torch.Tensor) -> Prompts:
        deep = self._to_volume(features[-1], channels_last=True)
        x = self.level_blocks[0](torch.cat([self._to_volume(neck, False), self.deep_projection(deep)], 1))
        outputs = [x]
        for level in range(1, self.levels):
            if level == self.levels - 1:
                skip = self.skip_projections[level - 1](image)
            else:
                # Earlier blocks feed higher resolutions; reuse the shallowest when there are few.
                source = features[max(len(features) - 1 - level, 0)]
                skip = self.skip_projections[level - 1](self._to_volume(source, channels_last=True))
            x = self.level_blocks[level](torch.cat([self.upsamplers[level - 1](x), skip], 1))
            outputs.append(x)

        box_pooled = torch.cat([F.adaptive_avg_pool3d(o, (self.num_slices, 2, 2)).permute(0, 2, 1, 3, 4)
                                .flatten(2) for o in outputs], dim=-1)          # (B, T, 4*sum(C))
        token_pooled = torch.cat([o.mean(dim=(3, 4)).transpose(1, 2) for o in outputs], dim=-1)
        boxes = None
        if self.box_head is not None:
            boxes = cxcywh_to_xyxy(torch.sigmoid(self.box_head(box_pooled).float()))
        masks = self.mask_out(outputs[-1]) if self.mask_out is not None else None
        return Prompts(aux_mask_logits=masks, learned_boxes=boxes, class_tokens=self.token_head(token_pooled))
