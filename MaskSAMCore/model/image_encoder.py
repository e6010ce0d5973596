"""SAM's ViT image encoder, run slice by slice on 3D patches, with depth-aware adapters (§2.5).

`AdaptedImageEncoder` *is* SAM's `ImageEncoderViT` (same submodules and parameter names, so
official checkpoints load into it); each block is SAM's `Block` with DConvAdapters added (Fig. 4c).
A learnable depth positional embedding is added to the tokens. Attention uses SAM's own weights
through PyTorch's fused kernel (`attention.encoder_attention`).

How many adapters per block is a reading of an ambiguous sentence: "We insert an adapter behind
the multi-head attention block and parallel MLP block" (§2.4) reads either as one adapter that
sits after attention and runs parallel to the MLP (fed the post-attention features), or as two
adapters, one behind attention and one parallel to the MLP (Med-SA's layout; the adapter paper
the authors cite [20] also puts two in each layer). The singular "an adapter", §1's "inject one
of them into each transformer block" and §2.5's "DConvAdapter blocks into each attention block"
favour one, so the default `encoder_adapters = 1` builds one; `encoder_adapters = 2` builds the
other reading (the extra adapter, `attn_adapter`, is added with a skip to the attention output
before SAM's residual sum). Table 5's 14 M trainable parameters cannot decide between them: the
paper gives no adapter or prompt-generator widths, and this project picked its widths to land
near 14 M (`config.py`). Which reading trains better is unmeasured on real data.

Shapes: the encoder sees ``B*T`` slices ``(B*T, 3, H, W)``; tokens are ``(B*T, h, w, D)`` with
h = H / patch; the neck gives ``(B*T, 256, h, w)``.
"""

from __future__ import annotations

from functools import partial
from typing import List, Tuple

import torch
from torch import nn

from MaskSAMCore.model.adapters import image_adapter
from MaskSAMCore.model.attention import encoder_attention
from MaskSAMCore.model.config import MaskSAMConfig
from MaskSAMCore.model.depth_embedding import DepthPositionalEmbedding
from MaskSAMCore.model.sam_import import EncoderBlock, ImageEncoderViT, window_partition, window_unpartition


class AdaptedBlock(EncoderBlock):
    """SAM's transformer block plus an adapter after attention, parallel to the MLP, and with
    ``encoder_adapters == 2`` a second one behind attention."""

    def __init__(self, config: MaskSAMConfig, window_size: int, input_size: Tuple[int, int]) -> None:
        b = config.backbone
        super().__init__(
            dim=b.encoder_embed_dim,
            num_heads=b.encoder_num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=window_size,
            input_size=input_size,
        )
        self.num_slices = config.num_slices
        self.adapter = image_adapter(config.adapter, b.encoder_embed_dim, config.num_slices,
                                     config.adapter_ratio, config.depth_mlp_ratio,
                                     config.depth_mlp_position)
        self.attn_adapter = (image_adapter(config.adapter, b.encoder_embed_dim, config.num_slices,
                                           config.adapter_ratio, config.depth_mlp_ratio,
                                           config.depth_mlp_position)
                             if config.encoder_adapters == 2 else None)

    def _by_slice(self, x: torch.Tensor) -> torch.Tensor:
        """``(B*T, h, w, D) -> (B, T, h, w, D)``: adapters see whole slices grouped by volume,
        never attention windows."""
        return x.view(-1, self.num_slices, *x.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B*T, h, w, D) -> (B*T, h, w, D)``."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, padded = window_partition(x, self.window_size)
            x = encoder_attention(self.attn, x)
            x = window_unpartition(x, self.window_size, padded, (height, width))
        else:
            x = encoder_attention(self.attn, x)
        if self.attn_adapter is not None:
            x = x + self.attn_adapter(self._by_slice(x)).view_as(x)
        x = shortcut + x
        normed = self.norm2(x)
        return x + self.mlp(normed) + self.adapter(self._by_slice(normed)).view_as(normed)


class AdaptedImageEncoder(ImageEncoderViT):
    """SAM's ViT with adapters and a depth positional embedding.

    ``forward(x: (B*T, 3, H, W)) -> (neck (B*T, 256, h, w), [features (B*T, h, w, D), ...])``
    where the features are the outputs of the blocks `config.feature_block_indexes` names (ViT-B:
    every third block, as in the paper).
    """

    def __init__(self, config: MaskSAMConfig) -> None:
        b = config.backbone
        # depth=0: SAM's constructor builds patch embedding, position embedding and neck; the
        # blocks are added below as adapted blocks (same names, so checkpoints still load).
        height, width = config.embedding_hw
        super().__init__(
            img_size=config.image_hw[0],
            patch_size=b.patch_size,
            in_chans=3,
            embed_dim=b.encoder_embed_dim,
            depth=0,
            num_heads=b.encoder_num_heads,
            mlp_ratio=4.0,
            out_chans=b.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_abs_pos=True,
            use_rel_pos=True,
            window_size=b.window_size,
            global_attn_indexes=b.encoder_global_attn_indexes,
        )
        # SAM's constructor makes a square embedding; MaskSAM allows H != W.
        self.pos_embed = nn.Parameter(torch.zeros(1, height, width, b.encoder_embed_dim))
        grid = (height, width)
        for index in range(b.encoder_depth):
            window = 0 if index in b.encoder_global_attn_indexes else b.window_size
            self.blocks.append(AdaptedBlock(config, window, grid if window == 0 else (window, window)))
        self.depth_pos_embed = DepthPositionalEmbedding(
            config.num_slices, b.encoder_embed_dim, enabled=config.depth_pos_embed
        )
        self.feature_block_indexes = config.feature_block_indexes

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:  # type: ignore[override]
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.depth_pos_embed(x)
        features: List[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.feature_block_indexes:
                features.append(x)
        neck = self.neck(x.permute(0, 3, 1, 2))
        return neck, features
