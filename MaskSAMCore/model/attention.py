"""Fused attention for SAM's own attention modules.

SAM computes attention explicitly (``softmax(q k^T) v`` with the decomposed relative-position
terms added to the logits), which materialises every attention matrix and runs far below a
GPU's matrix throughput. These functions compute the same result with PyTorch's
`scaled_dot_product_attention`, reading the weights of SAM's modules as they are, so nothing of
SAM is re-trained and the frozen weights load unchanged (only SAM's relative-position lookup is
written again, to stay on the GPU). The tests check
equality with SAM's forward.

Relative positions without a bias matrix: SAM's bias for query i and key j is
``rel_h[i, row(j)] + rel_w[i, col(j)]`` with ``rel_h[i, a] = q_i . Rh[row(i), a]``. That equals the
dot product of ``[rel_h[i, :], rel_w[i, :]]`` with the one-hot vector of (row(j), col(j)), so
appending those h + w columns to the (pre-scaled) queries and the one-hot columns to the keys
puts the bias inside ``q' k'^T``. No (tokens x tokens) bias is ever stored, and the widened
head (64 + 2*32 = 128 for ViT-B at 512 px) still runs in the flash-attention kernel.

Projections folded into the tokens (the decoder's cross-attentions): SAM's mask decoder attends
between a few prompt tokens (L = 8) and the h*w image tokens of every (slice, query) row, so
projecting the image side (k and v, or q and the output) costs two (h*w x C x C/2) products per
row and writes two (h*w x C/2) tensors, the decoder's largest. The projections are linear, so
they move to the token side instead: ``q . (W_k x) = (W_k^T q) . x``, and the attention-weighted
sum of ``W_v x`` is ``W_v`` applied to the weighted sum of ``x``. Per row that leaves two
(h*w x C x H*L) products (H*L = 64 < C/2 = 128 for SAM) and no projected image tensor at all.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from MaskSAMCore.model.sam_import import DecoderAttention, EncoderAttention


def relative_position_table(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """SAM's ``get_rel_pos(size, size, rel_pos)``: ``(size, size, d)`` with entry [i, j] the
    embedding of offset i - j, from `rel_pos` ``(L, d)`` linearly resized to 2*size - 1 offsets.

    The same numbers, but the offsets are made on `rel_pos`'s device: SAM builds them on the host,
    and indexing a GPU tensor with them copies them over, which waits for every queued kernel
    (two host synchronisations per encoder block and forward).
    """
    offsets = 2 * size - 1
    if rel_pos.shape[0] != offsets:   # e.g. the global blocks at 512 px (tables made for 1024 px)
        rel_pos = F.interpolate(rel_pos.t().unsqueeze(0), size=offsets, mode="linear").squeeze(0).t()
    positions = torch.arange(size, device=rel_pos.device)
    return rel_pos[positions[:, None] - positions[None, :] + (size - 1)]


def _positions_in_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                       rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: Tuple[int, int]
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Widen q, k (and pad v) so that ``q' k'^T = scale * q k^T + relative-position bias``.

    q, k, v: ``(B, heads, h*w, d)``; returns q', k' ``(B, heads, h*w, d + h + w)`` and v padded
    to the same width (flash attention wants equal widths; the padding columns are dropped).
    """
    h, w = size
    batch, heads, tokens, dim = q.shape
    rh = relative_position_table(h, rel_pos_h).to(q.dtype)  # (h, h, d)
    rw = relative_position_table(w, rel_pos_w).to(q.dtype)  # (w, w, d)
    grid_q = q.reshape(batch, heads, h, w, dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rh).reshape(batch, heads, tokens, h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rw).reshape(batch, heads, tokens, w)
    rows = torch.arange(h, device=q.device).repeat_interleave(w)
    cols = torch.arange(w, device=q.device).repeat(h)
    one_hot = torch.cat([F.one_hot(rows, h), F.one_hot(cols, w)], dim=-1).to(k.dtype)  # (h*w, h+w)
    q_wide = torch.cat([q * scale, rel_h, rel_w], dim=-1)
    k_wide = torch.cat([k, one_hot.expand(batch, heads, tokens, h + w)], dim=-1)
    v_wide = F.pad(v, (0, h + w))
    return q_wide, k_wide, v_wide


def encoder_attention(attn: EncoderAttention, x: torch.Tensor) -> torch.Tensor:
    """Same as ``attn(x)`` for SAM's image-encoder `Attention`; ``x``: ``(B, h, w, C)``."""
    batch, h, w, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, heads, h*w, d)
    dim = v.shape[-1]
    if attn.use_rel_pos:
        q, k, v = _positions_in_keys(q, k, v, attn.scale, attn.rel_pos_h, attn.rel_pos_w, (h, w))
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :dim]
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    out = out.transpose(1, 2).reshape(batch, h, w, -1)
    return attn.proj(out)


def decoder_attention(attn: DecoderAttention, q: torch.Tensor, k: torch.Tensor,
                      v: torch.Tensor) -> torch.Tensor:
    """Same as ``attn(q=q, k=k, v=v)`` for SAM's two-way-transformer `Attention`.

    ``q``: ``(B, Nq, C)``, ``k`` and ``v``: ``(B, Nk, C)``; returns ``(B, Nq, C)``.
    """
    heads = attn.num_heads
    q = attn._separate_heads(attn.q_proj(q), heads)
    k = attn._separate_heads(attn.k_proj(k), heads)
    v = attn._separate_heads(attn.v_proj(v), heads)
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.out_proj(attn._recombine_heads(out))


def _heads(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """A projection's ``(H*d, C)`` weight as ``(H, d, C)`` (row h*d + j is head h, channel j)."""
    return weight.view(heads, -1, weight.shape[-1])


def token_to_image_attention(attn: DecoderAttention, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor) -> torch.Tensor:
    """Same as ``attn(q=q, k=k, v=v)`` when the few queries are tokens and the keys an image.

    ``q``: ``(M, L, C)`` tokens; ``k``, ``v``: ``(M, P, C)`` image tokens; returns ``(M, L, C)``.
    k_proj's bias adds the same number to every key of a query, which softmax cancels.
    """
    rows, length, _ = q.shape
    heads = attn.num_heads
    q_heads = attn.q_proj(q).view(rows, length, heads, -1)                        # (M, L, H, d)
    scale = q_heads.shape[-1] ** -0.5
    w_k = _heads(attn.k_proj.weight, heads).to(q_heads.dtype)
    q_in_image = torch.einsum("mlhd,hdc->mhlc", q_heads * scale, w_k).flatten(1, 2)  # (M, H*L, C)
    weights = torch.bmm(q_in_image, k.transpose(1, 2)).softmax(dim=-1)           # (M, H*L, P)
    pooled = torch.bmm(weights.to(v.dtype), v).view(rows, heads, length, -1)      # (M, H, L, C)
    w_v = _heads(attn.v_proj.weight, heads).to(pooled.dtype)
    values = torch.einsum("mhlc,hdc->mlhd", pooled, w_v).flatten(2)               # (M, L, H*d)
    return attn.out_proj(values + attn.v_proj.bias.to(values.dtype))


def image_to_token_attention(attn: DecoderAttention, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor) -> torch.Tensor:
    """Same as ``attn(q=q, k=k, v=v)`` when the queries are an image and the keys a few tokens.

    ``q``: ``(M, P, C)`` image tokens; ``k``, ``v``: ``(M, L, C)`` tokens; returns ``(M, P, C)``.
    """
    rows, length, _ = k.shape
    heads = attn.num_heads
    k_heads = attn.k_proj(k).view(rows, length, heads, -1)                        # (M, L, H, d)
    v_heads = attn.v_proj(v).view(rows, length, heads, -1)
    scale = k_heads.shape[-1] ** -0.5
    w_q = _heads(attn.q_proj.weight, heads).to(k_heads.dtype)
    k_in_image = torch.einsum("mlhd,hdc->mhlc", k_heads * scale, w_q).flatten(1, 2)  # (M, H*L, C)
    q_bias = attn.q_proj.bias.view(heads, -1).to(k_heads.dtype)
    logit_bias = torch.einsum("mlhd,hd->mhl", k_heads * scale, q_bias).flatten(1)    # (M, H*L)
    # Tokens-first logits: the softmax runs over each head's L tokens with the P image tokens
    # contiguous, several times faster than a softmax over rows of only L = 8 numbers.
    logits = torch.baddbmm(logit_bias.unsqueeze(-1), k_in_image, q.transpose(1, 2))  # (M, H*L, P)
    weights = logits.view(rows, heads, length, -1).softmax(dim=2).flatten(1, 2)
    w_out = attn.out_proj.weight.view(-1, heads, v_heads.shape[-1]).to(v_heads.dtype)  # (C, H, d)
    v_out = torch.einsum("mlhd,chd->mhlc", v_heads, w_out)                           # (M, H, L, C)
    # Each head's weights sum to 1, so out_proj's bias is the weighted sum of bias / H per value:
    # folded in, the product writes the output once (a separate bias would copy it first).
    v_out = (v_out + attn.out_proj.bias.to(v_out.dtype) / heads).flatten(1, 2)
    return torch.bmm(weights.transpose(1, 2).to(v_out.dtype), v_out)                # (M, P, C)
