"""SAM's patch-wise convolutions as matrix products on channels-last tensors.

Two parts of SAM run once per prompt, that is B*T*N times per batch of windows: the mask-prompt
encoder (`PromptEncoder.mask_downscaling`: two 2x2/stride-2 convolutions with LayerNorm2d and a
1x1 convolution) and the mask decoder's up-scaling (`MaskDecoder.output_upscaling`: two 2x2/
stride-2 transposed convolutions with LayerNorm2d, then the product with a hypernetwork
output). Convolutions whose kernel equals their stride are exactly a reshape plus a matrix
product, and SAM's LayerNorm2d is a layer norm over channels, so both run here in channels-last
layout with SAM's own frozen weights — the same numbers (tests check it) without SAM's
channels-first transposes and 8-pass normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _patchify(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(M, H, W, C) -> (M, H/f, W/f, f*f*C)``, patch pixels ordered (row, col, channel)."""
    m, h, w, c = x.shape
    x = x.view(m, h // factor, factor, w // factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(m, h // factor, w // factor, factor * factor * c)


def _strided_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A conv with kernel == stride on ``(M, H, W, Cin)`` -> ``(M, H/k, W/k, Cout)``."""
    k = conv.kernel_size[0]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # (out, k*k*in)
    return F.linear(_patchify(x, k), weight.to(x.dtype), conv.bias.to(x.dtype))


def _layer_norm_2d(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SAM's LayerNorm2d on channels-last ``(..., C)``."""
    return F.layer_norm(x, (x.shape[-1],), norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps)


def embed_masks(prompt_encoder: nn.Module, masks: torch.Tensor) -> torch.Tensor:
    """``PromptEncoder._embed_masks`` in channels-last: ``(M, 1, 4h, 4w) -> (M, h, w, C)``."""
    down1, norm1, act1, down2, norm2, act2, project = prompt_encoder.mask_downscaling
    x = masks.permute(0, 2, 3, 1)
    x = act1(_layer_norm_2d(norm1, _strided_conv(down1, x)))
    x = act2(_layer_norm_2d(norm2, _strided_conv(down2, x)))
    weight = project.weight.view(project.out_channels, project.in_channels)
    return F.linear(x, weight.to(x.dtype), project.bias.to(x.dtype))


def upscaled_mask_logits(mask_decoder: nn.Module, tokens: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
    """SAM's mask from ``MaskDecoder.output_upscaling`` and one hypernetwork output.

    ``tokens (M, h, w, C)``, ``hyper (M, C/8)`` -> ``(M, 4h, 4w)``, i.e.
    ``(hyper . output_upscaling(tokens))`` per pixel. Both up-scalings are per-pixel linear maps,
    so they run on the input grid with each pixel's 2x2 and then 4x4 sub-pixels as extra axes; only
    the final one-channel mask is rearranged into the 4h x 4w grid, never the 32-channel tensors.
    """
    up1, norm, act1, up2, act2 = mask_decoder.output_upscaling
    m, h, w, _ = tokens.shape
    x = _per_pixel_transposed_conv(up1, tokens)                  # (M, h, w, 2, 2, C/4)
    x = act1(_layer_norm_2d(norm, x).to(x.dtype))            # autocast's norm returns float32
    x = act2(_per_pixel_transposed_conv(up2, x))                 # (M, h, w, 2, 2, 2, 2, C/8)
    masks = torch.bmm(x.reshape(m, -1, x.shape[-1]), hyper.to(x.dtype).unsqueeze(-1))
    # sub-pixel (a, b) of (i, j), then (c, d) of that -> row 4i + 2a + c, column 4j + 2b + d
    masks = masks.view(m, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
    return masks.reshape(m, 4 * h, 4 * w)


def _per_pixel_transposed_conv(conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """A 2x2/stride-2 transposed conv as a per-pixel product: ``(..., Cin) -> (..., 2, 2, Cout)``."""
    weight = conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.in_channels)  # (2*2*out, in)
    out = F.linear(x, weight.to(x.dtype), conv.bias.repeat(4).to(x.dtype))
    return out.view(*x.shape[:-1], 2, 2, conv.out_channels)
