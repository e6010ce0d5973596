"""Fused attention for SAM's own attention modules.

SAM computes attention explicitly (``softmax(q k^T) v`` with the decomposed relative-position
terms added to the logits), which materialises every attention matrix and runs far below a
GPU's matrix throughput. These functions compute the same result with PyTorch's
`scaled_dot_product_attention`, reading the weights of SAM's modules as they are — the
relative positions become an additive bias — so nothing of SAM is re-implemented or re-trained
and the frozen weights load unchanged. The tests check equality with SAM's forward.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from MaskSAMCore.model.sam_import import DecoderAttention, EncoderAttention, get_rel_pos


def relative_position_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                           size: Tuple[int, int]) -> torch.Tensor:
    """SAM's decomposed relative-position logits as a bias.

    Args:
        q: queries ``(B, heads, h*w, d)`` (unscaled, as SAM uses them).
        rel_pos_h, rel_pos_w: ``(2h-1, d)``, ``(2w-1, d)`` (resized on the fly when they differ).
        size: ``(h, w)`` of the (window of) tokens; keys have the same size.
    Returns:
        ``(B, heads, h*w, h*w)`` bias to add to the attention logits.
    """
    h, w = size
    batch, heads, _, dim = q.shape
    rh = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (h, h, d)
    rw = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (w, w, d)
    grid_q = q.reshape(batch, heads, h, w, dim)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rh)  # (B, heads, h, w, kh)
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rw)  # (B, heads, h, w, kw)
    bias = bias_h.unsqueeze(-1) + bias_w.unsqueeze(-2)     # (B, heads, h, w, kh, kw)
    return bias.reshape(batch, heads, h * w, h * w)


def encoder_attention(attn: EncoderAttention, x: torch.Tensor) -> torch.Tensor:
    """Same as ``attn(x)`` for SAM's image-encoder `Attention`; ``x``: ``(B, h, w, C)``."""
    batch, h, w, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, heads, h*w, d)
    bias = None
    if attn.use_rel_pos:
        bias = relative_position_bias(q, attn.rel_pos_h, attn.rel_pos_w, (h, w))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
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
