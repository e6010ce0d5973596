"""The training loss of MaskSAM (paper §2.7, following DETR / MaskFormer / Mask2Former).

Given the Hungarian matching of queries to the targets of each slice:

- classes: cross-entropy over K + 1 classes for *every* query; matched queries target their
  class, all others "no object" (weighted by ``weights.no_object`` so that the many unmatched
  queries do not drown the few matched ones);
- final masks and auxiliary masks (matched queries only): BCE + Dice at importance-sampled
  points (`point_sampling`), or at every pixel for small patches;
- learnable boxes (matched queries only): L1 + (1 - GIoU).

Mask and box terms are summed over matched pairs and divided by the number of targets in the
batch, averaged over DDP ranks (so every rank uses the same normaliser, as in DETR).

Unannotated voxels (nnU-Net's ``ignore`` label; the paper assumes full annotation, so these rules
are this project's, following what each term can know):

- masks are judged on annotated pixels only (BCE and Dice weighted by `SliceTargets.annotated`);
- "no object" says a slice holds nothing more, which only a fully annotated slice can say: in a
  partly annotated slice only the matched queries get a class loss, in a slice without any
  annotated pixel no query does;
- a box drawn around the annotated part of a structure may be too small: boxes are learnt from
  fully annotated slices only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from MaskSAMCore.model.boxes import generalized_box_iou
from MaskSAMCore.training.distributed import mean_across_ranks
from MaskSAMCore.training.matcher import HungarianMatcher, Matches
from MaskSAMCore.training.point_sampling import mask_points
from MaskSAMCore.training.slice_view import SlicePredictions, select_masks
from MaskSAMCore.training.targets import SliceTargets, build_targets
from MaskSAMCore.training.weights import LossWeights


@dataclass
class LossResult:
    """The weighted total (a scalar with gradient) and each unweighted term (detached floats)."""

    total: Tensor
    terms: Dict[str, float] = field(default_factory=dict)
    num_targets: int = 0


def dice_loss(pred_logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """Per-mask Dice loss (M,) of logits (M, P) against binary targets (M, P), smoothed by 1;
    with `weight` (M, P) each point counts by its weight (0: not at all)."""
    prob = pred_logits.sigmoid()
    if weight is not None:
        prob, target = prob * weight, target * weight
    numerator = 2 * (prob * target).sum(-1)
    denominator = prob.sum(-1) + target.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def bce_loss(pred_logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """Per-mask mean binary cross-entropy (M,) of logits (M, P) against targets (M, P); with
    `weight` (M, P) the weighted mean (0 for a mask without weight)."""
    loss = F.binary_cross_entropy_with_logits(pred_logits, target, reduction="none")
    if weight is None:
        return loss.mean(-1)
    return (loss * weight).sum(-1) / weight.sum(-1).clamp(min=1e-6)


class MaskSAMLoss:
    """Matching + loss for one batch.

    Args:
        num_classes: K, background included.
        weights: term multipliers (also the matching cost weights).
        num_points: P, points per mask for the mask losses and the matching cost.
        oversample: candidate points per sampled point (importance sampling); 2 as in the
            official MaskSAM release (Mask2Former's default is 3).
        importance: fraction of points taken where the prediction is least certain.
        across_ranks: normalise by the number of targets averaged over DDP ranks (training, where
            every rank computes the loss); False for a loss computed on one rank only (validation),
            which must not wait for the others.
        ignore_label: the label value of unannotated voxels (K), or None (fully annotated data).
    """

    def __init__(self, num_classes: int, weights: LossWeights = LossWeights(),
                 num_points: int = 112 * 112, oversample: float = 2.0, importance: float = 0.75,
                 across_ranks: bool = True, ignore_label: Optional[int] = None) -> None:
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.across_ranks = across_ranks
        self.weights = weights
        self.num_points = num_points
        self.oversample = oversample
        self.importance = importance
        self.matcher = HungarianMatcher(weights, num_points)

    def class_weights(self, device: torch.device) -> Tensor:
        """(K+1,) CE weights: 1 for every class, `no_object` for the last column."""
        weight = torch.ones(self.num_classes + 1, device=device)
        weight[-1] = self.weights.no_object
        return weight

    def __call__(self, output: Any, seg: Tensor) -> LossResult:
        """Loss of a `MaskSAMOutput` against label patches seg (B, T, H, W)."""
        targets = build_targets(seg.to(output.mask_logits.device), self.num_classes, self.ignore_label)
        predictions = SlicePredictions.from_output(output)
        matches = self.matcher(predictions, targets)
        return self.loss(predictions, targets, matches)

    def loss(self, predictions: SlicePredictions, targets: SliceTargets, matches: Matches) -> LossResult:
        w = self.weights
        device = predictions.class_logits.device
        count = torch.tensor(float(len(matches)), device=device)
        normaliser = (mean_across_ranks(count) if self.across_ranks else count).clamp(min=1.0)

        terms: Dict[str, Tensor] = {}
        fully_annotated = targets.fully_annotated().to(device)   # (S,) slices that may be judged whole
        terms["cls"] = self._class_loss(predictions.class_logits, fully_annotated, matches)
        gt_masks = targets.masks(matches.slice_index, matches.class_index)
        annotated = (None if targets.annotated is None
                     else targets.annotated[matches.slice_index.to(targets.labels.device)])  # (M, H, W)
        terms["mask_bce"], terms["mask_dice"] = self._mask_losses(
            predictions.mask_logits, gt_masks, annotated, matches, normaliser)
        total = (w.cls * terms["cls"] + w.mask_bce * terms["mask_bce"]
                 + w.mask_dice * terms["mask_dice"])
        if predictions.aux_mask_logits is not None:
            terms["aux_bce"], terms["aux_dice"] = self._mask_losses(
                predictions.aux_mask_logits, gt_masks, annotated, matches, normaliser)
            total = total + w.aux_mask_bce * terms["aux_bce"] + w.aux_mask_dice * terms["aux_dice"]
        if predictions.boxes is not None:
            terms["box_l1"], terms["box_giou"] = self._box_losses(
                predictions.boxes, targets, fully_annotated, matches, normaliser)
            total = total + w.box_l1 * terms["box_l1"] + w.box_giou * terms["box_giou"]
        # one device->host transfer for all the logged values
        values = torch.stack([v.detach().float() for v in terms.values()]).tolist()
        return LossResult(total=total, terms=dict(zip(terms.keys(), values)), num_targets=len(matches))

    def _class_loss(self, class_logits: Tensor, fully_annotated: Tensor, matches: Matches) -> Tensor:
        """Weighted-mean CE over the S * N queries that may be judged (all of them when every
        pixel is annotated); unmatched queries target "no object" (K)."""
        num_slices, num_queries, _ = class_logits.shape
        device = class_logits.device
        target = torch.full((num_slices, num_queries), self.num_classes, dtype=torch.long, device=device)
        target[matches.slice_index, matches.query_index] = matches.class_index
        judged = fully_annotated.view(-1, 1).expand(num_slices, num_queries).clone()
        judged[matches.slice_index, matches.query_index] = True
        weight = self.class_weights(device)[target] * judged   # (S, N)
        loss = F.cross_entropy(class_logits.float().reshape(-1, self.num_classes + 1), target.reshape(-1),
                               reduction="none")
        # F.cross_entropy's weighted mean, over the judged queries only (0 if there are none)
        return (loss * weight.reshape(-1)).sum() / weight.sum().clamp(min=1e-6)

    def _mask_losses(self, mask_logits: Tensor, gt_masks: Tensor, annotated: Optional[Tensor],
                     matches: Matches, normaliser: Tensor) -> Tuple[Tensor, Tensor]:
        """(BCE, Dice) summed over matched masks / normaliser; zero (with graph) if none.
        annotated: (M, H, W) bool of each match's slice, or None when every pixel is annotated."""
        if len(matches) == 0:
            zero = mask_logits.sum() * 0.0
            return zero, zero
        pred = select_masks(mask_logits, matches.slice_index, matches.query_index)
        pred_points, gt_points, weight = mask_points(pred, gt_masks, self.num_points, self.oversample,
                                                     self.importance, annotated)
        pred_points = pred_points.float()
        return (bce_loss(pred_points, gt_points, weight).sum() / normaliser,
                dice_loss(pred_points, gt_points, weight).sum() / normaliser)

    def _box_losses(self, boxes: Tensor, targets: SliceTargets, fully_annotated: Tensor, matches: Matches,
                    normaliser: Tensor) -> Tuple[Tensor, Tensor]:
        """(L1, 1 - GIoU) of matched boxes in fully annotated slices, summed / normaliser; zero
        (with graph) if none."""
        if len(matches) == 0:
            zero = boxes.sum() * 0.0
            return zero, zero
        pred = boxes[matches.slice_index, matches.query_index].float()
        gt = targets.boxes[matches.slice_index, matches.class_index].float()
        learnt = fully_annotated[matches.slice_index].float()  # (M,)
        # L1 on the corners (the paper names no box format; DETR uses centre/size): the corners
        # are what SAM's box prompt takes, and each is penalised on its own.
        l1 = ((pred - gt).abs().sum(-1) * learnt).sum() / normaliser
        giou = ((1 - generalized_box_iou(pred, gt)) * learnt).sum() / normaliser
        return l1, giou

