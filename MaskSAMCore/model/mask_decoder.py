"""SAM's mask decoder with classifier tokens and depth adapters (paper §2.6, Fig. 3c).

`MaskSAMDecoder` *is* SAM's `MaskDecoder` (same submodules, so checkpoints load) and its
transformer is SAM's `TwoWayTransformer` whose blocks gain, per block:
a DMLPAdapter after token self-attention, one after token->image attention, one parallel to the
token MLP, and a DConvAdapter after image->token attention. One prompt per query per slice:
the decoder runs on ``M = B*N*T`` (volume, query, slice) triples at once, ordered so that the T
slices of a query are adjacent rows, which is how the depth adapters see them.

Both cross-attentions between tokens and image use `attention.token_to_image_attention` and
`image_to_token_attention`: the same results as SAM's modules with the projections moved to the
token side, so no projected copy of the per-row image tokens is ever made (see attention.py).

Output tokens per prompt: ``[classifier, iou, mask_0..mask_3, box corner 0, box corner 1]``;
the classifier token (learnable global token + auxiliary token from the prompt generator)
becomes the class embedding, mask token 0 (SAM's single-mask output) gives the mask.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from MaskSAMCore.model.adapters import image_adapter, token_adapter
from MaskSAMCore.model.attention import (
    decoder_attention,
    image_to_token_attention,
    token_to_image_attention,
)
from MaskSAMCore.model.config import MaskSAMConfig
from MaskSAMCore.model.sam_fast_paths import upscaled_mask_logits
from MaskSAMCore.model.sam_import import MaskDecoder, TwoWayAttentionBlock, TwoWayTransformer


class SliceLayout:
    """How the M = B*N*T decoder rows map to (volume, query, slice).

    Rows are ordered volume, then query, then slice, so the T slices of one query are adjacent
    and the depth adapters see them through a free `view` (no copy of the decoder's largest
    tensors)."""

    def __init__(self, num_slices: int) -> None:
        self.num_slices = num_slices

    def tokens_by_slice(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, L, C) -> (B*N, T, L, C)`` (depth on axis 1 for the adapters)."""
        return x.view(-1, self.num_slices, *x.shape[1:])

    def image_by_slice(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """``(M, h*w, C) -> (B*N, T, h, w, C)``."""
        return x.view(-1, self.num_slices, size[0], size[1], x.shape[-1])

    def add_image_pe(self, keys: torch.Tensor, image_pe: torch.Tensor) -> torch.Tensor:
        """``keys (M, h*w, C) + image_pe (T, h*w, C)`` broadcast per slice, without repeating the PE."""
        return (keys.view(-1, *image_pe.shape) + image_pe).view_as(keys)


class AdaptedTwoWayBlock(TwoWayAttentionBlock):
    """SAM's two-way attention block with MaskSAM's four adapters."""

    def __init__(self, config: MaskSAMConfig, skip_first_layer_pe: bool) -> None:
        b = config.backbone
        super().__init__(embedding_dim=b.prompt_embed_dim, num_heads=b.decoder_num_heads,
                         mlp_dim=b.decoder_mlp_dim, activation=nn.ReLU,
                         attention_downsample_rate=2, skip_first_layer_pe=skip_first_layer_pe)
        args = (config.adapter, b.prompt_embed_dim, config.num_slices, config.adapter_ratio,
                config.depth_mlp_ratio, config.depth_mlp_position)
        self.adapter_self_attn = token_adapter(*args)
        self.adapter_token_to_image = token_adapter(*args)
        self.adapter_mlp = token_adapter(*args)
        self.adapter_image_to_token = image_adapter(*args)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,  # type: ignore[override]
                key_pe: torch.Tensor, layout: SliceLayout, size: Tuple[int, int]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """queries ``(M, L, C)``, keys ``(M, h*w, C)``, key_pe ``(T, h*w, C)`` -> (queries, keys)."""

        def adapt_tokens(adapter: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return adapter(layout.tokens_by_slice(x)).view_as(x)

        if self.skip_first_layer_pe:
            out = decoder_attention(self.self_attn, queries, queries, queries)
            queries = out + adapt_tokens(self.adapter_self_attn, out)
        else:
            q = queries + query_pe
            out = decoder_attention(self.self_attn, q, q, queries)
            queries = queries + out + adapt_tokens(self.adapter_self_attn, out)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = layout.add_image_pe(keys, key_pe)  # keys do not change until the last attention: reuse
        out = token_to_image_attention(self.cross_attn_token_to_image, q, k, keys)
        queries = self.norm2(queries + out + adapt_tokens(self.adapter_token_to_image, out))

        queries = self.norm3(queries + self.mlp(queries) + adapt_tokens(self.adapter_mlp, queries))

        q = queries + query_pe
        out = image_to_token_attention(self.cross_attn_image_to_token, k, q, queries)
        adapted = self.adapter_image_to_token(layout.image_by_slice(out, size)).view_as(out)
        # Under autocast the norm returns float32; the image tokens stay in the compute dtype,
        # which halves the memory traffic of the decoder's largest tensors.
        keys = self.norm4(keys + out + adapted).to(out.dtype)
        return queries, keys


class AdaptedTwoWayTransformer(TwoWayTransformer):
    """SAM's `TwoWayTransformer` built from `AdaptedTwoWayBlock`s (same parameter names)."""

    def __init__(self, config: MaskSAMConfig) -> None:
        b = config.backbone
        super().__init__(depth=0, embedding_dim=b.prompt_embed_dim, num_heads=b.decoder_num_heads,
                         mlp_dim=b.decoder_mlp_dim, activation=nn.ReLU, attention_downsample_rate=2)
        self.depth = b.decoder_depth
        for index in range(b.decoder_depth):
            self.layers.append(AdaptedTwoWayBlock(config, skip_first_layer_pe=(index == 0)))
        self.layout = SliceLayout(config.num_slices)

    def forward(self, image_tokens: torch.Tensor, image_pe: torch.Tensor,  # type: ignore[override]
                point_embedding: torch.Tensor, size: Tuple[int, int] = (0, 0)
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """image_tokens ``(M, h*w, C)``, image_pe ``(T, h*w, C)``, point_embedding ``(M, L, C)``.

        Returns the updated (tokens ``(M, L, C)``, image tokens ``(M, h*w, C)``)."""
        keys = image_tokens
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe, self.layout, size)
        # No adapter here: §2.6 lists the adapters of each two-way block, and SAM's final
        # token->image attention sits after the blocks, outside any of them.
        out = token_to_image_attention(self.final_attn_token_to_image, queries + point_embedding,
                                       self.layout.add_image_pe(keys, image_pe), keys)
        return self.norm_final_attn(queries + out), keys


class MaskSAMDecoder(MaskDecoder):
    """SAM's `MaskDecoder` with a classifier token in front of its output tokens."""

    def __init__(self, config: MaskSAMConfig) -> None:
        b = config.backbone
        super().__init__(transformer_dim=b.prompt_embed_dim,
                         transformer=AdaptedTwoWayTransformer(config),
                         num_multimask_outputs=3, activation=nn.GELU,
                         iou_head_depth=3, iou_head_hidden_dim=256)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,  # type: ignore[override]
                sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                class_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode all prompts of all slices in one call.

        Args:
            image_embeddings: ``(B*T, C, h, w)``; each slice is shared by its N prompts.
            image_pe: ``(T, C, h, w)`` positional encoding (SAM's + depth), the same per volume.
            sparse_prompt_embeddings: ``(M, 2, C)`` box-corner embeddings, M = B*N*T rows
                ordered (volume, query, slice).
            dense_prompt_embeddings: ``(M, h, w, C)`` mask-prompt embeddings (channels-last), or
                one ``(C,)`` vector for every position (SAM's "no mask" embedding).
            class_tokens: ``(M, C)`` global + auxiliary classifier tokens.
        Returns:
            class embeddings ``(M, C)`` and low-resolution mask logits ``(M, 4h, 4w)``.
        """
        slices, channels, h, w = image_embeddings.shape
        depth = self.transformer.layout.num_slices
        rows = sparse_prompt_embeddings.shape[0]
        volumes, queries = slices // depth, rows // slices
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(rows, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat([class_tokens.unsqueeze(1), output_tokens, sparse_prompt_embeddings], dim=1)

        # Each slice's tokens, once per prompt of that slice, plus the prompt's dense embedding,
        # made once in the compute dtype (bf16 under autocast) since every block reads them.
        dtype = compute_dtype(image_embeddings)
        image_tokens = image_embeddings.flatten(2).transpose(1, 2).to(dtype)   # (B*T, hw, C)
        image_tokens = image_tokens.view(volumes, 1, depth, h * w, channels)
        if dense_prompt_embeddings.dim() == 1:
            dense = dense_prompt_embeddings.to(dtype).view(1, 1, 1, 1, channels)
        else:
            dense = dense_prompt_embeddings.to(dtype).view(volumes, queries, depth, h * w, channels)
        src = (image_tokens + dense).expand(volumes, queries, depth, h * w, channels).reshape(rows, h * w, channels)
        pe_tokens = image_pe.flatten(2).transpose(1, 2).to(dtype)               # (T, hw, C)
        hs, keys = self.transformer(src, pe_tokens, tokens, (h, w))

        class_embedding = hs[:, 0, :]
        hyper = self.output_hypernetworks_mlps[0](hs[:, 2, :])                 # first mask token: (M, C/8)
        masks = upscaled_mask_logits(self, keys.view(rows, h, w, channels), hyper)
        return class_embedding, masks


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products run in here: autocast's when it is on, else ``x.dtype``."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
