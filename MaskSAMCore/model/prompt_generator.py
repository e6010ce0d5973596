"""The prompt generator (paper §2.3, Fig. 3b and 5): SAM's prompts made from SAM's own features.

A 3D convolutional decoder climbs from the encoder's neck output (1/p resolution, p = ViT patch)
to full resolution, doubling the in-plane resolution at each level and concatenating features of
an earlier encoder block brought to that level's resolution (deepest level: neck + last
selected block; the full-resolution level: the adapted input image). Its last layer gives N
auxiliary mask logits per voxel. Levels down to 1/4 resolution use two convolutions with layer
norm; the 1/2 and full-resolution levels one convolution (see `layers.LightConvBlock`: the paper
leaves the decoder's depth open, and these two levels would otherwise dominate inference time). The output of every level is average-pooled per slice to 2x2 for
the N learnable boxes and to 1x1 for the N auxiliary classifier tokens (each through an MLP).

All convolutions are 3D with in-plane-only up-sampling, so neighbouring slices inform each other
while the through-plane resolution is kept. Feature maps are channels-last ``(B, T, h, w, C)``
(see `layers.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn

from MaskSAMCore.model.boxes import cxcywh_to_xyxy
from MaskSAMCore.model.config import MaskSAMConfig
from MaskSAMCore.model.layers import (
    ChannelsLastConvBlock,
    LightConvBlock,
    TokenUpsampler,
    pool_per_slice,
)


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

    aux_mask_logits: Optional[torch.Tensor]  # (B, N, T, H, W) (a view), None in prompt mode "box"
    aux_low_res: Optional[torch.Tensor]      # (B, T, N, 4h, 4w) the same, average-pooled to SAM's mask size
    learned_boxes: Optional[torch.Tensor]    # (B, T, N, 4) xyxy in [0, 1], None in prompt mode "mask"
    class_tokens: torch.Tensor               # (B, T, N, D) auxiliary classifier tokens


class PromptGenerator(nn.Module):
    """``forward(neck, features, image) -> Prompts``.

    Args (to `forward`):
        neck: ``(B*T, 256, h, w)`` SAM neck output.
        features: encoder block outputs ``[(B*T, h, w, D), ...]``, shallow to deep.
        image: ``(B, T, H, W, 3)`` the adapted input image, channels-last (full-resolution skip).
    """

    def __init__(self, config: MaskSAMConfig) -> None:
        super().__init__()
        b = config.backbone
        self.num_slices = config.num_slices
        self.low_res_factor = b.patch_size // 4  # full resolution -> SAM's mask size (4h)
        self.make_masks = config.prompt_mode != "box"
        self.make_boxes = config.prompt_mode != "mask"
        channels: Sequence[int] = config.prompt_generator_channels
        self.levels = len(channels)
        enc_dim = b.encoder_embed_dim
        # Level 0 (1/p): neck + projected deepest feature.
        self.deep_projection = nn.Linear(enc_dim, channels[0])
        self.level_blocks = nn.ModuleList(
            [ChannelsLastConvBlock(b.prompt_embed_dim + channels[0], channels[0])])
        self.upsamplers = nn.ModuleList()
        self.skip_projections = nn.ModuleList()
        for level in range(1, self.levels):
            self.upsamplers.append(TokenUpsampler(channels[level - 1], channels[level], 2))
            full_resolution = level == self.levels - 1
            if not full_resolution:
                self.skip_projections.append(TokenUpsampler(enc_dim, channels[level], 2 ** level))
            in_channels = channels[level] + (3 if full_resolution else channels[level])
            light = 2 ** (self.levels - 1 - level) < 4  # 1/2 and full resolution
            block = LightConvBlock if light else ChannelsLastConvBlock
            self.level_blocks.append(block(in_channels, channels[level]))
        self.mask_out = nn.Linear(channels[-1], config.num_queries) if self.make_masks else None
        total = sum(channels)
        self.box_head = (PooledHead(4 * total, config.pooled_hidden_dim, config.num_queries, 4)
                         if self.make_boxes else None)
        self.token_head = PooledHead(total, config.pooled_hidden_dim, config.num_queries,
                                     b.prompt_embed_dim)

    def _by_volume(self, slices: torch.Tensor) -> torch.Tensor:
        """``(B*T, h, w, C) -> (B, T, h, w, C)``."""
        return slices.view(-1, self.num_slices, *slices.shape[1:])

    def forward(self, neck: torch.Tensor, features: List[torch.Tensor], image: torch.Tensor) -> Prompts:
        neck_last = self._by_volume(neck.permute(0, 2, 3, 1).contiguous())
        x = self.level_blocks[0](torch.cat([neck_last, self.deep_projection(self._by_volume(features[-1]))], -1))
        outputs = [x]
        for level in range(1, self.levels):
            if level == self.levels - 1:
                skip = image.to(x.dtype)
            else:
                # Earlier blocks feed higher resolutions; reuse the shallowest when there are few.
                source = features[max(len(features) - 1 - level, 0)]
                skip = self.skip_projections[level - 1](self._by_volume(source))
            x = self.level_blocks[level](torch.cat([self.upsamplers[level - 1](x), skip], -1))
            outputs.append(x)

        box_pooled = torch.cat([pool_per_slice(o, 2) for o in outputs], dim=-1)    # (B, T, 4*sum(C))
        token_pooled = torch.cat([pool_per_slice(o, 1) for o in outputs], dim=-1)  # (B, T, sum(C))
        boxes = None
        if self.box_head is not None:
            boxes = cxcywh_to_xyxy(torch.sigmoid(self.box_head(box_pooled).float()))
        masks = low_res = None
        if self.mask_out is not None:
            logits = self.mask_out(outputs[-1])                                  # (B, T, H, W, N)
            b, t, height, width, n = logits.shape
            f = self.low_res_factor
            low_res = logits.view(b, t, height // f, f, width // f, f, n).mean(dim=(3, 5))
            low_res = low_res.permute(0, 1, 4, 2, 3).contiguous()                 # (B, T, N, 4h, 4w)
            masks = logits.permute(0, 4, 1, 2, 3)                                # (B, N, T, H, W) view
        return Prompts(aux_mask_logits=masks, aux_low_res=low_res, learned_boxes=boxes,
                       class_tokens=self.token_head(token_pooled))
