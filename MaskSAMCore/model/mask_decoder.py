"""SAM's mask decoder with classifier tokens and depth adapters (paper §2.6, Fig. 3c).

`MaskSAMDecoder` *is* SAM's `MaskDecoder` (same submodules, so checkpoints load) and its
transformer is SAM's `TwoWayTransformer` whose blocks gain, per block:
a DMLPAdapter after token self-attention, one after token->image attention, one parallel to the
token MLP, and a DConvAdapter after image->token attention. One prompt per query per slice:
the decoder runs on ``M = B*T*N`` (volume, slice, query) triples at once, ordered volume-major,
and the adapters regroup them by (volume, query) to see the T slices of a query together.

Output tokens per prompt: ``[classifier, iou, mask_0..mask_3, box corner 0, box corner 1]``;
the classifier token (learnable global token + auxiliary token from the prompt generator)
becomes the class embedding, mask token 0 (SAM's single-mask output) gives the mask.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from MaskSAMCore.model.adapters import image_adapter, token_adapter
from MaskSAMCore.model.attention import decoder_attention
from MaskSAMCore.model.config import MaskSAMConfig
from MaskSAMCore.model.sam_fast_paths import upscale_embedding
from MaskSAMCore.model.sam_import import MaskDecoder, TwoWayAttentionBlock, TwoWayTransformer


class SliceLayout:
    """How the M = B*T*N decoder rows map to (volume, slice, query)."""

    def __init__(self, num_slices: int, num_queries: int) -> None:
        self.num_slices = num_slices
        self.num_queries = num_queries

    def tokens_by_slice(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, L, C) -> (B, T, N, L, C)`` (depth on axis 1 for the adapters)."""
        return x.view(-1, self.num_slices, self.num_queries, *x.shape[1:])

    def image_by_slice(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """``(M, h*w, C) -> (B*N, T, h, w, C)``."""
        grouped = x.view(-1, self.num_slices, self.num_queries, size[0], size[1], x.shape[-1])
        return grouped.transpose(1, 2).reshape(-1, self.num_slices, size[0], size[1], x.shape[-1])

    def add_image_pe(self, keys: torch.Tensor, image_pe: torch.Tensor) -> torch.Tensor:
        """``keys (M, h*w, C) + image_pe (T, h*w, C)`` broadcast per slice, without repeating the PE."""
        grouped = keys.view(-1, self.num_slices, self.num_queries, *keys.shape[1:])
        return (grouped + image_pe.unsqueeze(1)).view_as(keys)

    def image_from_slices(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `image_by_slice`: ``(B*N, T, h, w, C) -> (M, h*w, C)``."""
        bn, t, h, w, c = x.shape
        grouped = x.view(-1, self.num_queries, t, h * w, c).transpose(1, 2)
        return grouped.reshape(-1, h * w, c)


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
        out = decoder_attention(self.cross_attn_token_to_image, q, k, keys)
        queries = self.norm2(queries + out + adapt_tokens(self.adapter_token_to_image, out))

        queries = self.norm3(queries + self.mlp(queries) + adapt_tokens(self.adapter_mlp, queries))

        q = queries + query_pe
        out = decoder_attention(self.cross_attn_image_to_token, k, q, queries)
        adapted = self.adapter_image_to_token(layout.image_by_slice(out, size))
        keys = self.norm4(keys + out + layout.image_from_slices(adapted))
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
        self.layout = SliceLayout(config.num_slices, config.num_queries)

    def forward(self, image_tokens: torch.Tensor, image_pe: torch.Tensor,  # type: ignore[override]
                point_embedding: torch.Tensor, size: Tuple[int, int] = (0, 0)
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """image_tokens ``(M, h*w, C)``, image_pe ``(T, h*w, C)``, point_embedding ``(M, L, C)``.

        Returns the updated (tokens ``(M, L, C)``, image tokens ``(M, h*w, C)``)."""
        keys = image_tokens
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe, self.layout, size)
        out = decoder_attention(self.final_attn_token_to_image, queries + point_embedding,
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
            sparse_prompt_embeddings: ``(M, 2, C)`` box-corner embeddings, M = B*T*N.
            dense_prompt_embeddings: ``(M, h, w, C)`` mask-prompt embeddings (channels-last), or
                one ``(C,)`` vector for every position (SAM's "no mask" embedding).
            class_tokens: ``(M, C)`` global + auxiliary classifier tokens.
        Returns:
            class embeddings ``(M, C)`` and low-resolution mask logits ``(M, 4h, 4w)``.
        """
        slices, channels, h, w = image_embeddings.shape
        rows = sparse_prompt_embeddings.shape[0]
        per_slice = rows // slices
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(rows, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat([class_tokens.unsqueeze(1), output_tokens, sparse_prompt_embeddings], dim=1)

        # Each slice's tokens, once per prompt of that slice, plus the prompt's dense embedding.
        image_tokens = image_embeddings.flatten(2).transpose(1, 2).unsqueeze(1)  # (B*T, 1, hw, C)
        if dense_prompt_embeddings.dim() == 1:
            dense = dense_prompt_embeddings.view(1, 1, 1, channels)
        else:
            dense = dense_prompt_embeddings.view(slices, per_slice, h * w, channels)
        src = (image_tokens + dense).expand(slices, per_slice, h * w, channels).reshape(rows, h * w, channels)
        pe_tokens = image_pe.flatten(2).transpose(1, 2)                          # (T, hw, C)
        hs, keys = self.transformer(src, pe_tokens, tokens, (h, w))

        class_embedding = hs[:, 0, :]
        first_mask_token = hs[:, 2, :]
        upscaled = upscale_embedding(self, keys.view(rows, h, w, channels))    # (M, 4h, 4w, C/8)
        hyper = self.output_hypernetworks_mlps[0](first_mask_token)            # (M, C/8)
        masks = torch.einsum("mc,mhwc->mhw", hyper.to(upscaled.dtype), upscaled)
        return class_embedding, masks
