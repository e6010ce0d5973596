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
        """queries ``(M, L, C)``, keys ``(M, h*w, C)`` -> updated (queries, keys)."""

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
        k = keys + key_pe
        out = decoder_attention(self.cross_attn_token_to_image, q, k, keys)
        queries = self.norm2(queries + out + adapt_tokens(self.adapter_token_to_image, out))

        queries = self.norm3(queries + self.mlp(queries) + adapt_tokens(self.adapter_mlp, queries))

        q = queries + query_pe
        k = keys + key_pe
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

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,  # type: ignore[override]
                point_embedding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """image_embedding/image_pe ``(M, C, h, w)``, point_embedding ``(M, L, C)``."""
        size = (image_embedding.shape[2], image_embedding.shape[3])
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, self.layout, size)
        out = decoder_attention(self.final_attn_token_to_image, queries + point_embedding,
                                keys + key_pe, keys)
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
            dense_prompt_embeddings: ``(M, C, h, w)`` mask-prompt embeddings.
            class_tokens: ``(M, C)`` global + auxiliary classifier tokens.
        Returns:
            class embeddings ``(M, C)`` and low-resolution mask logits ``(M, 4h, 4w)``.
        """
        rows = sparse_prompt_embeddings.shape[0]
        per_slice = rows // image_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(rows, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat([class_tokens.unsqueeze(1), output_tokens, sparse_prompt_embeddings], dim=1)

        src = torch.repeat_interleave(image_embeddings, per_slice, dim=0) + dense_prompt_embeddings
        volumes = image_embeddings.shape[0] // image_pe.shape[0]
        pos = torch.repeat_interleave(image_pe, per_slice, dim=0).repeat(volumes, 1, 1, 1)
        batch, channels, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)

        class_embedding = hs[:, 0, :]
        first_mask_token = hs[:, 2, :]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(batch, channels, h, w))
        hyper = self.output_hypernetworks_mlps[0](first_mask_token)  # (M, C/8)
        masks = torch.einsum("mc,mchw->mhw", hyper, upscaled)
        return class_embedding, masks
