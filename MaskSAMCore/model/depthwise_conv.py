"""The DConvAdapter's depthwise 3x3x3 convolution on channels-last features, three equal ways.

All take ``x``: ``(G, T, h, w, C)``, ``weight``: ``(C, 1, 3, 3, 3)``, ``bias``: ``(C,)`` and
return ``(G, T, h, w, C)`` equal to ``F.conv3d(..., padding=1, groups=C)`` (zero padding).
They differ only in which kernels do the work, and the best one depends on the device:

- `depthwise_conv3d_direct`: one `F.conv3d`. Fastest on CPUs (oneDNN), but cuDNN has no
  depthwise 3D kernel and falls back to a slow generic one.
- `depthwise_conv3d_by_slices`: one 2D depthwise convolution per depth tap over all ``G*T``
  slices (cuDNN's channels-last depthwise kernels; the slices of ``x`` are a free view), then
  two shifted adds along T. About 4 passes over the tensor, against ~27 for the next one.
- `depthwise_conv3d_shifted`: 27 shifted multiply-adds; torch.compile fuses them into a single
  kernel, so it is what a compiled model traces.

`depthwise_conv3d` picks one per call; see there for why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def depthwise_conv3d_direct(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One grouped `F.conv3d` on a channels-first view of ``x``."""
    channels_first = x.permute(0, 4, 1, 2, 3)  # (G, C, T, h, w)
    out = F.conv3d(channels_first, weight.to(x.dtype), bias.to(x.dtype), padding=1, groups=x.shape[-1])
    return out.permute(0, 2, 3, 4, 1)


def depthwise_conv3d_by_slices(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 2D depthwise convolution per depth tap, combined by shifting along T.

    Output slice t sums tap 0 applied to slice t-1, tap 1 to slice t and tap 2 to slice t+1
    (missing neighbours are the zero padding).
    """
    groups, depth, height, width, channels = x.shape
    slices = x.reshape(groups * depth, height, width, channels).permute(0, 3, 1, 2)  # NCHW view, channels-last
    kernel = weight.to(x.dtype)

    def tap(dz: int) -> torch.Tensor:
        out = F.conv2d(slices, kernel[:, :, dz], padding=1, groups=channels)
        return out.permute(0, 2, 3, 1).reshape(groups, depth, height, width, channels)

    out = tap(1) + bias.to(x.dtype)
    out[:, 1:] += tap(0)[:, :-1]
    out[:, :-1] += tap(2)[:, 1:]
    return out


def depthwise_conv3d_shifted(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """27 shifted multiply-adds over a zero-padded copy of ``x``."""
    depth, height, width = x.shape[1:4]
    padded = F.pad(x, (0, 0, 1, 1, 1, 1, 1, 1))
    taps = weight.to(x.dtype).reshape(weight.shape[0], 27)
    out = bias.to(x.dtype).expand_as(x).clone()
    index = 0
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                out.addcmul_(padded[:, dz:dz + depth, dy:dy + height, dx:dx + width], taps[:, index])
                index += 1
    return out


def depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The depthwise 3x3x3 convolution, by the implementation that suits where it runs.

    - CPU: `depthwise_conv3d_direct` (3 to 20x faster here than the other two, benchmarks (e)).
    - Traced by torch.compile: `depthwise_conv3d_shifted`, which Inductor fuses into one kernel
      (measured on an H100 as the compiled model's best).
    - Eager CUDA: `depthwise_conv3d_by_slices`. The shifted sum launched 27 strided kernels per
      call (an H100 profile put 17% of an eager forward in them) and cuDNN's grouped 3D path is a
      generic fallback; 2D depthwise convolutions in channels-last are what cuDNN optimises.
      ``benchmarks/depthwise_conv.py`` times the three on a GPU.
    """
    if not x.is_cuda:
        return depthwise_conv3d_direct(x, weight, bias)
    if torch.compiler.is_compiling():
        return depthwise_conv3d_shifted(x, weight, bias)
    return depthwise_conv3d_by_slices(x, weight, bias)
