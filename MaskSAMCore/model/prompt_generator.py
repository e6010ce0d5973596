"""The prompt generator (paper §2.3, Fig. 3b and 5): SAM's prompts made from SAM's own features.

A 3D convolutional decoder climbs from the encoder's neck output (1/p resolution, p = ViT patch)
to full resolution, doubling the in-plane resolution at each level and concatenating features of
an earlier encoder block brought to that level's resolution (deepest level: neck + last
selected block; the full-resolution level: the adapted input image). Its last layer gives N
auxiliary mask logits per voxel. Levels down to 1/4 resolution use two convolutions with layer
norm; the 1/2 and full-resolution levels one convolution (see `layers.LightConvBlock`: the paper
leaves the decoder's depth open, and these two levels would otherwise dominate inference time).
The output of every level is average-pooled per slice to 2x2 for the N learnable boxes and to
1x1 for the N auxiliary classifier tokens (each through an MLP, see `PooledHead`).

Where the paper is silent (§2.3 names the ViT feature maps, "every three" blocks and the final
output, §2.5, and says the decoder reaches "the same image size as the ground truth"):
- Which map feeds which level: all ViT maps are at 1/p, but a decoder from 1/16 to 1/1 has five
  levels. As in UNETR (the paper's [17]), shallower blocks feed higher resolutions (they keep more
  local detail) and the deepest map joins SAM's neck output, the encoder's final output, at 1/p:
  ViT-B neck + block 11 at 1/16, block 8 at 1/8, block 5 at 1/4, block 2 at 1/2.
- The full-resolution skip is the adapted input image: no ViT map holds anything finer than a
  patch, and the masks must be exact at the pixel (UNETR likewise feeds its input to its last level).
- The skip projections are transposed convolutions with kernel = stride (`TokenUpsampler`, UNETR's
  "deconvolution" in one step): they bring a 1/p map to its level and cut its width to the level's
  channels in one matrix product, where interpolation and a convolution would cost two passes.

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
    """Per-slice pooled features of all levels -> N vectors: ``(B, T, F) -> (B, T, N, out)``.

    §2.3 read literally: pool each level to (2, 2), concatenate, and "connect with an MLP layer to
    adjust the channel to N" - an MLP over channels at each of the 2x2 positions, giving N channels
    x 4 positions, i.e. the 4 box numbers of query n each read from one quadrant of the slice; the
    classifier tokens, made "the same way" at (1, 1), would then be N scalars. Used instead: all
    pooled values of a slice (4 x sum(C) for boxes, sum(C) for tokens) flattened into one MLP with
    N x out outputs. Every box coordinate then sees the whole slice (a box's far edge depends on
    where the organ is, not on one quadrant), and the tokens come out D wide, as they must to be
    summed with the global classifier tokens and joined to SAM's D-wide tokens. Two layers (GELU
    in between, hidden `pooled_hidden_dim`) rather than one linear layer: "an MLP layer" allows
    either, and DETR's box head, which the paper's matching follows, is an MLP too; unmeasured.
    """

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
            if not full_resolution:  # a ViT map brought from 1/p to this level (see the module docstring)
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
                skip = image.to(x.dtype)   # the only full-resolution input there is
            else:
                # Earlier (shallower) blocks feed higher resolutions, as in UNETR; reuse the
                # shallowest when a small backbone has fewer maps than levels.
                source = features[max(len(features) - 1 - level, 0)]
                skip = self.skip_projections[level - 1](self._by_volume(source))
            x = self.level_blocks[level](torch.cat([self.upsamplers[level - 1](x), skip], -1))
            outputs.append(x)

        box_pooled = torch.cat([pool_per_slice(o, 2) for o in outputs], dim=-1)    # (B, T, 4*sum(C))
        token_pooled = torch.cat([pool_per_slice(o, 1) for o in outputs], dim=-1)  # (B, T, sum(C))
        boxes = None
        if self.box_head is not None:
            # Centre and size through a sigmoid, as DETR: every output is a valid box in [0, 1]
            # (independent corners could come out with x1 < x0).
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
