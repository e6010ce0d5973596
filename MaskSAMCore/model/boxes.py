"""Box utilities shared by the prompt generator, the training targets and the losses.

Boxes are normalised ``(x0, y0, x1, y1)`` in [0, 1]: x along the last (W) axis, y along H, the
far edge exclusive (a mask covering columns 3..5 of W=10 has x0 = 0.3, x1 = 0.6). SAM's own
mask-to-box is inclusive (x1 = 5); the exclusive edge is kept for the training targets, the
learnable boxes and the mask-derived prompt boxes alike (why: `masksam.MaskSAM._decode`).
"""

from __future__ import annotations

from typing import Tuple

import torch


def masks_to_boxes(masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes of binary masks, vectorised (no loop, no host synchronisation).

    Args:
        masks: ``(..., H, W)`` bool (or 0/1) masks.
    Returns:
        boxes ``(..., 4)`` normalised xyxy (zeros for empty masks) and ``nonempty`` ``(...)`` bool.
    """
    masks = masks.bool()
    height, width = masks.shape[-2:]
    rows = masks.any(dim=-1)  # (..., H)
    cols = masks.any(dim=-2)  # (..., W)
    ys = torch.arange(height, device=masks.device)
    xs = torch.arange(width, device=masks.device)
    y0 = torch.where(rows, ys, height).amin(dim=-1)
    y1 = torch.where(rows, ys, -1).amax(dim=-1) + 1
    x0 = torch.where(cols, xs, width).amin(dim=-1)
    x1 = torch.where(cols, xs, -1).amax(dim=-1) + 1
    nonempty = rows.any(dim=-1)
    # Python-number scaling: a scale tensor made from a list would be copied to the GPU, and that
    # copy waits for all queued GPU work (a host synchronisation in every forward).
    boxes = torch.stack([x0 / width, y0 / height, x1 / width, y1 / height], dim=-1).float()
    boxes = torch.where(nonempty.unsqueeze(-1), boxes, torch.zeros_like(boxes))
    return boxes, nonempty


def scale_xyxy(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """``(..., 4)`` xyxy boxes with x multiplied by `width` and y by `height` (on the boxes'
    device, without copying a scale vector from the host)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0 * width, y0 * height, x1 * width, y1 * height], dim=-1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` centre/size -> corners, clamped to [0, 1]."""
    cx, cy, w, h = boxes.unbind(-1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    return corners.clamp(0.0, 1.0)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` xyxy -> ``(...)`` area."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise generalised IoU of xyxy boxes ``(..., 4)`` (broadcasting) -> ``(...)``."""
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    iou = inter / (union + eps)
    hull_tl = torch.minimum(a[..., :2], b[..., :2])
    hull_br = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (hull_br - hull_tl).clamp(min=0).prod(-1)
    return iou - (hull - union) / (hull + eps)
