"""Fused attention for SAM's own attention modules.

SAM computes attention explicitly (``softmax(q k^T) v`` with the decomposed relative-position
terms added to the logits), which materialises every attention matrix and runs far below a
GPU's matrix throughput. These functions compute the same result with PyTorch's
`scaled_dot_product_attention`, reading the weights of SAM's modules as they are, so nothing of
SAM is re-implemented or re-trained and the frozen weights load unchanged. The tests check
equality with SAM's forward.

Relative positions without a bias matrix: SAM's bias for query i and key j is
``rel_h[i, row(j)] + rel_w[i, col(j)]`` with ``rel_h[i, a] = q_i . Rh[row(i), a]``. That equals the
dot product of ``[rel_h[i, :], rel_w[i, :]]`` with the one-hot vector of (row(j), col(j)), so
appending those h + w columns to the (pre-scaled) queries and the one-hot columns to the keys
puts the bias inside ``q' k'^T``. No (tokens x tokens) bias is ever stored, and the widened
head (64 + 2*32 = 128 for ViT-B at 512 px) still runs in the flash-attention kernel.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from MaskSAMCore.model.sam_import import DecoderAttention, EncoderAttention, get_rel_pos


def _positions_in_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                       rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: Tuple[int, int]
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Widen q, k (and pad v) so that ``q' k'^T = scale * q k^T + relative-position bias``.

    q, k, v: ``(B, heads, h*w, d)``; returns q', k' ``(B, heads, h*w, d + h + w)`` and v padded
    to the same width (flash attention wants equal widths; the padding columns are dropped).
    """
    h, w = size
    batch, heads, tokens, dim = q.shape
    rh = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (h, h, d)
    rw = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (w, w, d)
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
