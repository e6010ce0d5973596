"""Hungarian matching between the N queries of a slice and its M ground-truth targets (§2.7).

The cost of pairing query i with target j is

    w_cls * (-p_i(c_j))
  + w_aux_bce * BCE(aux_mask_i, m_j) + w_aux_dice * Dice(aux_mask_i, m_j)
  + w_l1 * |box_i - box_j|_1 + w_giou * (1 - GIoU(box_i, box_j))
  + w_bce * BCE(mask_i, m_j) + w_dice * Dice(mask_i, m_j)

with the mask terms evaluated at P random pixels shared by predictions and targets (Mask2Former;
all pixels when a slice has fewer than P), of which unannotated ones (the ``ignore`` label) count
for nothing. Terms whose prediction is absent (ablation prompt
modes) are dropped. Because a slice holds each class at most once, the costs are computed for all
K classes of all S slices at once with batched matrix products, moved to the host in one
transfer, and each slice's Hungarian problem uses the columns of the classes it contains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from MaskSAMCore.model.boxes import generalized_box_iou
from MaskSAMCore.training.slice_view import SlicePredictions, masks_at_pixels
from MaskSAMCore.training.targets import SliceTargets
from MaskSAMCore.training.weights import LossWeights

# Stand-in for a non-finite cost (a diverging network): keeps scipy working; the loss of that
# step is non-finite too and the trainer skips it.
_LARGE_COST = 1e8


@dataclass
class Matches:
    """The matched (slice, query, class) triples of a batch, all (M,) int64 on the model's device."""

    slice_index: Tensor
    query_index: Tensor
    class_index: Tensor

    def __len__(self) -> int:
        return int(self.slice_index.numel())


def optimal_assignment(cost: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of the M columns (targets) to N >= M rows (queries).

    Returns (rows, cols), each (M,), sorted by column.
    """
    cost = np.nan_to_num(np.asarray(cost, dtype=np.float64), nan=_LARGE_COST,
                         posinf=_LARGE_COST, neginf=-_LARGE_COST)
    rows, cols = linear_sum_assignment(cost)
    order = np.argsort(cols)
    return rows[order], cols[order]


def pairwise_mask_costs(pred_logits: Tensor, target: Tensor, weight: Optional[Tensor] = None
                        ) -> Tuple[Tensor, Tensor]:
    """Mean BCE and Dice loss between every prediction and every target at shared points.

    Args:
        pred_logits: (S, N, P) mask logits.
        target: (S, K, P) binary {0, 1} float targets.
        weight: (S, P) weight of each point (0 at unannotated pixels), or None (all 1).

    Returns:
        (bce, dice), each (S, N, K).
    """
    pred_logits = pred_logits.float()
    if weight is None:
        weight = torch.ones(pred_logits.shape[0], pred_logits.shape[-1], device=pred_logits.device)
    weight = weight.float().unsqueeze(1)  # (S, 1, P)
    target = target.float() * weight
    points = weight.sum(-1, keepdim=True).clamp(min=1.0)  # (S, 1, 1)
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x) = softplus(x) - t * x, so the sum over
    # points is a row sum minus one matrix product.
    bce = ((F.softplus(pred_logits) * weight).sum(-1).unsqueeze(-1)
           - torch.bmm(pred_logits, target.transpose(1, 2))) / points
    prob = pred_logits.sigmoid() * weight
    numerator = 2 * torch.bmm(prob, target.transpose(1, 2))
    denominator = prob.sum(-1).unsqueeze(-1) + target.sum(-1).unsqueeze(-2)
    dice = 1 - (numerator + 1) / (denominator + 1)
    return bce, dice


class HungarianMatcher:
    """Computes `Matches` for a batch (no gradients).

    Args:
        weights: cost multipliers (the loss weights).
        num_points: P, pixels sampled per slice for the mask costs (112 * 112 as Mask2Former).
    """

    def __init__(self, weights: LossWeights = LossWeights(), num_points: int = 112 * 112) -> None:
        self.weights = weights
        self.num_points = num_points

    def sample_pixels(self, num_slices: int, height: int, width: int, device: torch.device) -> Tensor:
        """(S, P) flat pixel indices: every pixel when the slice is small, else P random ones."""
        pixels = height * width
        if pixels <= self.num_points:
            return torch.arange(pixels, device=device).expand(num_slices, pixels)
        return torch.randint(pixels, (num_slices, self.num_points), device=device)

    @torch.no_grad()
    def cost_matrix(self, predictions: SlicePredictions, targets: SliceTargets) -> Tensor:
        """(S, N, K) matching cost of every query against every class, present or not."""
        w = self.weights
        num_slices = targets.num_slices
        height, width = predictions.spatial_shape
        device = predictions.mask_logits.device
        classes = torch.arange(targets.num_classes, device=device)

        probs = predictions.class_logits.float().softmax(-1)[..., : targets.num_classes]
        cost = -w.cls * probs  # (S, N, K)

        pixels = self.sample_pixels(num_slices, height, width, device)
        target_points = (torch.gather(targets.labels.reshape(num_slices, -1), 1, pixels)
                         .unsqueeze(1) == classes.view(1, -1, 1)).float()  # (S, K, P)
        weight = (None if targets.annotated is None
                  else torch.gather(targets.annotated.reshape(num_slices, -1), 1, pixels))  # (S, P)
        bce, dice = pairwise_mask_costs(masks_at_pixels(predictions.mask_logits, pixels), target_points, weight)
        cost = cost + w.mask_bce * bce + w.mask_dice * dice
        if predictions.aux_mask_logits is not None:
            bce, dice = pairwise_mask_costs(masks_at_pixels(predictions.aux_mask_logits, pixels),
                                            target_points, weight)
            cost = cost + w.aux_mask_bce * bce + w.aux_mask_dice * dice
        if predictions.boxes is not None:
            pred_boxes = predictions.boxes.float()
            l1 = torch.cdist(pred_boxes, targets.boxes.float(), p=1)
            giou = generalized_box_iou(pred_boxes.unsqueeze(-2), targets.boxes.float().unsqueeze(-3))  # (S, N, K)
            cost = cost + w.box_l1 * l1 + w.box_giou * (1 - giou)
        return cost

    @torch.no_grad()
    def __call__(self, predictions: SlicePredictions, targets: SliceTargets) -> Matches:
        device = predictions.class_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            cost = self.cost_matrix(predictions, targets).cpu().numpy()
        slices, queries, classes = [], [], []
        for s, present in enumerate(targets.classes):
            if len(present) == 0:
                continue
            columns = present.numpy()
            rows, cols = optimal_assignment(cost[s][:, columns])
            slices.append(np.full(len(rows), s))
            queries.append(rows)
            classes.append(columns[cols])

        def as_tensor(parts: list) -> Tensor:
            values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            return torch.as_tensor(values, dtype=torch.long, device=device)

        return Matches(as_tensor(slices), as_tensor(queries), as_tensor(classes))
