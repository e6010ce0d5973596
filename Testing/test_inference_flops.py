"""The FLOP count behind `masksam benchmark`'s TFLOP/s: attention is counted on the CPU too."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from MaskSAMCore.inference.flops import count_flops


def _written_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None) -> torch.Tensor:
    """`scaled_dot_product_attention` as its two matrix products, which every counter counts."""
    logits = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if attn_mask is not None:
        logits = logits + attn_mask
    return logits.softmax(-1) @ v


@pytest.mark.parametrize("value_width", [32, 16])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_on_the_cpu_counts_as_its_two_matrix_products(value_width, masked):
    """On the CPU attention runs as `_scaled_dot_product_flash_attention_for_cpu` (equal widths)
    or the math fallback (a narrower value); PyTorch's own counter left the former at 0 FLOPs."""
    q, k = torch.randn(2, 4, 64, 32), torch.randn(2, 4, 48, 32)
    v = torch.randn(2, 4, 48, value_width)
    mask = torch.randn(64, 48) if masked else None
    fused = count_flops(lambda x: F.scaled_dot_product_attention(x, k, v, attn_mask=mask), q)
    explicit = count_flops(lambda x: _written_out(x, k, v, attn_mask=mask), q)
    assert fused == pytest.approx(explicit, rel=0.01)
    assert fused == 2 * 2 * 4 * 64 * 48 * (32 + value_width)


def test_the_count_of_a_network_on_the_cpu_includes_its_attention(monkeypatch):
    """The tiny network counted as the benchmark counts it, against the same network with every
    attention written out as matrix products (the same products, so the same count exactly:
    attention is under 1 % of the tiny network's work, too little for a tolerance)."""
    from MaskSAMCore.model.builder import build_masksam
    from MaskSAMCore.model.config import preset

    torch.manual_seed(0)
    model = build_masksam(preset("tiny", num_classes=3)).eval()
    config = model.config
    sample = torch.zeros((1, config.in_channels, int(config.num_slices), *config.image_hw))
    counted = count_flops(model.segment, sample)
    monkeypatch.setattr(F, "scaled_dot_product_attention", _written_out)
    explicit = count_flops(model.segment, sample)
    assert counted == explicit
