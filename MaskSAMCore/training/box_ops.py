"""Box arithmetic for the box cost and loss: pairwise and element-wise generalised IoU.

Boxes are ``(x0, y0, x1, y1)`` with ``x1 >= x0`` and ``y1 >= y0``, normalised to [0, 1] of the
slice (x along W, y along H), exactly as `MaskSAMOutput.aux_boxes` and `targets.box_of_masks`.
Predicted boxes may be degenerate early in training (x1 < x0); widths and heights are clamped at
zero so that the IoU stays in [0, 1] and the GIoU in [-1, 1] instead of producing NaNs.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-7


def box_area(boxes: Tensor) -> Tensor:
    """Areas of boxes (..., 4) -> (...), zero for degenerate boxes."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _giou_from_corners(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of boxes `a` and `b` that broadcast against each other (..., 4) -> (...)."""
    area_a = box_area(a)
    area_b = box_area(b)
    inter_lo = torch.maximum(a[..., :2], b[..., :2])
    inter_hi = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (inter_hi - inter_lo).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / (union + _EPS)
    hull_lo = torch.minimum(a[..., :2], b[..., :2])
    hull_hi = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (hull_hi - hull_lo).clamp(min=0).prod(-1)
    return iou - (hull - union) / (hull + _EPS)


def generalized_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Element-wise GIoU of two equally shaped box tensors (..., 4) -> (...), in [-1, 1]."""
    return _giou_from_corners(boxes_a, boxes_b)


def pairwise_generalized_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """GIoU between every box of `boxes_a` (..., N, 4) and of `boxes_b` (..., M, 4) -> (..., N, M).

    Leading dimensions (e.g. slices) are batched.
    """
    return _giou_from_corners(boxes_a.unsqueeze(-2), boxes_b.unsqueeze(-3))
