"""Dataset mapping (paper §2.2): a multi-class label patch -> per-slice sets of binary targets.

MaskSAM predicts, for every slice of a patch, N masks each with a class. The ground truth of a
slice is therefore a *set*: one binary mask per label value present in that slice (background
included, as in the official code), with its class and its bounding box. The set size M_s varies
from slice to slice; Hungarian matching pairs each of the M_s targets with one of the N queries.

Slices are flattened batch-major: slice ``s = b * T + t`` of a label patch ``(B, T, H, W)``.

The binary masks are not materialised for every class: a `SliceTargets` keeps the label slices
and builds masks on demand for the (slice, class) pairs that are needed, which matters at the
real patch size (16 slices x 16 classes x 512 x 512 would be 268 MB of float masks per step).
Everything is vectorised over slices and classes; the only device->host transfer is the small
``(S, K)`` presence table.

Sparsely annotated datasets (nnU-Net's ``ignore`` label, value K) mark voxels nobody labelled.
They belong to no class: a slice's target set is the classes seen in its annotated voxels, and
`annotated` tells the losses which pixels they may judge (the paper assumes full annotation and
says nothing on this; the rules are in `MaskSAMCore.training.losses`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from MaskSAMCore.model.boxes import masks_to_boxes


def class_presence_and_boxes(labels: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Which classes occur in each slice, and their bounding boxes.

    Args:
        labels: (S, H, W) integer label slices, values in [0, num_classes).
        num_classes: K, background included.

    Returns:
        present: (S, K) bool.
        boxes: (S, K, 4) float32 ``(x0, y0, x1, y1)`` normalised to [0, 1], x along W, y along H,
            the far edge exclusive (`MaskSAMCore.model.boxes` convention, the same as the
            network's boxes): a class occupying columns c0..c1 gets ``x0 = c0 / W`` and
            ``x1 = (c1 + 1) / W``. Boxes of absent classes are zero.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (S, H, W), got shape {tuple(labels.shape)}")
    classes = torch.arange(num_classes, device=labels.device)
    one_hot = labels.unsqueeze(1) == classes.view(1, -1, 1, 1)  # (S, K, H, W) bool
    boxes, present = masks_to_boxes(one_hot)
    return present, boxes


@dataclass
class SliceTargets:
    """The ground-truth sets of every slice of a batch of label patches.

    Attributes:
        labels: (S, H, W) int64 label slices (S = B * T).
        present: (S, K) bool, class k occurs in slice s.
        boxes: (S, K, 4) float32 normalised boxes per (slice, class); zero where absent.
        classes: S CPU int64 tensors, the classes present in each slice in increasing order
            (the target set of that slice, M_s = len(classes[s])).
        num_classes: K.
        annotated: (S, H, W) bool, False at unannotated voxels; None when every voxel of the
            batch is annotated.
    """

    labels: Tensor
    present: Tensor
    boxes: Tensor
    classes: List[Tensor]
    num_classes: int
    annotated: Optional[Tensor] = None

    def fully_annotated(self) -> Tensor:
        """(S,) bool: every pixel of slice s is annotated."""
        if self.annotated is None:
            return torch.ones(self.num_slices, dtype=torch.bool, device=self.labels.device)
        return self.annotated.flatten(1).all(1)

    @property
    def num_slices(self) -> int:
        return self.labels.shape[0]

    @property
    def num_targets(self) -> int:
        """Total number of binary targets in the batch (sum of M_s)."""
        return int(sum(len(c) for c in self.classes))

    def masks(self, slice_index: Tensor, class_index: Tensor) -> Tensor:
        """Binary masks (M, H, W) float32 for M (slice, class) pairs given as two (M,) tensors."""
        slice_index = slice_index.to(self.labels.device)
        class_index = class_index.to(self.labels.device)
        return (self.labels[slice_index] == class_index.view(-1, 1, 1)).float()

    def slice_masks(self, s: int) -> Tensor:
        """The target masks (M_s, H, W) of slice `s`, in the order of ``classes[s]``."""
        classes = self.classes[s]
        return self.masks(torch.full_like(classes, s), classes)

    def slice_boxes(self, s: int) -> Tensor:
        """The target boxes (M_s, 4) of slice `s`, in the order of ``classes[s]``."""
        return self.boxes[s, self.classes[s].to(self.boxes.device)]


def build_targets(seg: Tensor, num_classes: int, ignore_label: Optional[int] = None) -> SliceTargets:
    """Map a label patch to per-slice target sets.

    Args:
        seg: (B, T, H, W) integer labels in [0, num_classes), or `ignore_label` at unannotated
            voxels (any integer dtype, any device).
        num_classes: K, background included.
        ignore_label: the value of unannotated voxels (K), or None for fully annotated data.

    Raises:
        ValueError: when a label value is outside [0, num_classes) and not `ignore_label` (the
            data layer checks datasets against dataset.json, so this is a programming error, not
            user input).
    """
    if seg.dim() != 4:
        raise ValueError(f"label patch must be (B, T, H, W), got shape {tuple(seg.shape)}")
    labels = seg.reshape(-1, seg.shape[-2], seg.shape[-1]).long()
    annotated = None if ignore_label is None else labels != ignore_label
    checked = labels if annotated is None else labels.masked_fill(~annotated, 0)
    low, high = int(checked.min()), int(checked.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"label values must be in [0, {num_classes}), found [{low}, {high}]")
    if annotated is not None and bool(annotated.all()):
        annotated = None   # the common case of a patch without unannotated voxels costs nothing more
    # unannotated voxels equal no class value, so they fall in no class's mask, presence or box
    present, boxes = class_presence_and_boxes(labels, num_classes)
    present_cpu = present.cpu()
    classes = [torch.nonzero(row, as_tuple=False).flatten() for row in present_cpu]
    return SliceTargets(labels=labels, present=present, boxes=boxes, classes=classes,
                        num_classes=num_classes, annotated=annotated)
