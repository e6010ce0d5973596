"""Where mask losses are evaluated: importance-sampled points (Mask2Former) or every pixel.

Computing BCE and Dice on every pixel of every matched 512 x 512 mask costs memory for little
gain; Mask2Former instead evaluates them at P points per mask, of which a fraction (the
"importance") are the points where the prediction is least certain (logit closest to 0) among
``oversample * P`` random candidates, and the rest uniformly random. Points are continuous
coordinates; values are read with bilinear interpolation, for predictions and targets alike.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(maps: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of maps (M, H, W) at coords (M, P, 2) -> (M, P).

    Coordinates are ``(x, y)`` in [0, 1] of the map's extent (pixel edges, like boxes).
    """
    grid = (2.0 * coords - 1.0).unsqueeze(1)  # (M, 1, P, 2) in grid_sample's [-1, 1]
    values = F.grid_sample(maps.unsqueeze(1).float(), grid.to(torch.float32), mode="bilinear",
                           padding_mode="border", align_corners=False)
    return values[:, 0, 0, :]


@torch.no_grad()
def uncertain_point_coords(logits: Tensor, num_points: int, oversample: float,
                           importance: float) -> Tensor:
    """(M, P, 2) coordinates: the most uncertain of oversampled random points, plus random ones.

    Args:
        logits: (M, H, W) mask logits (uncertainty = -|logit|).
        num_points: P.
        oversample: candidates per point (>= 1).
        importance: fraction of the P points taken from the most uncertain candidates.
    """
    m = logits.shape[0]
    device = logits.device
    num_candidates = max(int(num_points * oversample), num_points)
    candidates = torch.rand(m, num_candidates, 2, device=device)
    uncertainty = -point_sample(logits, candidates).abs()
    num_uncertain = int(importance * num_points)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (M, num_uncertain)
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    random = torch.rand(m, num_points - num_uncertain, 2, device=device)
    return torch.cat([chosen, random], dim=1)


def mask_points(pred_logits: Tensor, target: Tensor, num_points: int, oversample: float,
                importance: float, annotated: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Prediction logits, target values and point weights where the mask loss is evaluated.

    Args:
        pred_logits: (M, H, W) matched mask logits.
        target: (M, H, W) binary float masks.
        annotated: (M, H, W) bool, False at unannotated pixels, or None (all annotated).

    Returns:
        (pred (M, P'), target (M, P'), weight (M, P') or None): every pixel when
        H * W <= num_points, else P' = P importance-sampled points; the weight is the annotated
        fraction at each point (0 or 1 at a pixel, in between at a sampled point on an edge).
    """
    m, height, width = pred_logits.shape
    if height * width <= num_points:
        weight = None if annotated is None else annotated.reshape(m, -1).float()
        return pred_logits.reshape(m, -1).float(), target.reshape(m, -1).float(), weight
    coords = uncertain_point_coords(pred_logits.detach(), num_points, oversample, importance)
    weight = None if annotated is None else point_sample(annotated.float(), coords)
    return point_sample(pred_logits, coords), point_sample(target, coords), weight
