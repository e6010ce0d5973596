"""Test-time mirroring: predict every flip combination of a window and average (paper, appendix A).

All flips of a window batch go through the network in *one* forward call (stacked along the
batch axis) instead of eight calls one after another as nnU-Net does: one large batch keeps a
GPU busy, eight small ones mostly wait on kernel launches. When memory is short the flips can
be split into a few forwards (`flips_per_forward`) without changing the result.
"""

from __future__ import annotations

import itertools
from typing import Callable, List, Optional, Sequence, Tuple

import torch

# Spatial axes of a (B, C, T, H, W) patch: T (slices), H, W.
SPATIAL_AXES: Tuple[int, int, int] = (2, 3, 4)

Flip = Tuple[int, ...]


def flip_combinations(axes: Sequence[int] = SPATIAL_AXES) -> List[Flip]:
    """Every subset of `axes` as a flip, identity first: 2**len(axes) flips (8 for three axes)."""
    combos: List[Flip] = []
    for count in range(len(axes) + 1):
        combos.extend(itertools.combinations(tuple(axes), count))
    return combos


def _flip(tensor: torch.Tensor, dims: Flip) -> torch.Tensor:
    return tensor.flip(dims) if dims else tensor


def mirrored_predict(
    network: Callable[[torch.Tensor], torch.Tensor],
    patches: torch.Tensor,
    flips: Optional[Sequence[Flip]] = None,
    flips_per_forward: Optional[int] = None,
) -> torch.Tensor:
    """The network's scores averaged over flips of the input.

    patches: (B, C, T, H, W). network: (M, C, T, H, W) -> (M, K, T, H, W) for any M.
    flips: which flips to average (default all 8; ``[()]`` means no mirroring).
    flips_per_forward: how many flips share one forward call (default: all of them).
    Returns (B, K, T, H, W) float32: the mean over flips, each output flipped back.
    """
    flips = list(flips) if flips is not None else flip_combinations()
    if not flips:
        raise ValueError("mirrored_predict needs at least one flip (use [()] for none)")
    per_forward = len(flips) if not flips_per_forward else max(1, int(flips_per_forward))
    batch = patches.shape[0]
    total: Optional[torch.Tensor] = None
    for first in range(0, len(flips), per_forward):
        group = flips[first:first + per_forward]
        stacked = torch.cat([_flip(patches, dims) for dims in group]) if len(group) > 1 else _flip(patches, group[0])
        scores = network(stacked)
        for index, dims in enumerate(group):
            # Accumulate in float32 whatever precision the network computed in.
            unflipped = _flip(scores[index * batch:(index + 1) * batch], dims)
            if total is None:
                # A copy, so that adding in place never writes into the network's own tensors.
                total = unflipped.to(torch.float32, copy=True)
            else:
                total.add_(unflipped)
        del scores, stacked
    assert total is not None
    return total.div_(len(flips)) if len(flips) > 1 else total
