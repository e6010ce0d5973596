"""Per-epoch validation on whole preprocessed cases: Dice per class and validation loss.

Every validation case is covered by windows of the training patch size with half overlap (no
mirroring, no Gaussian weighting: this is a fast pseudo-Dice for model selection, the predictor
does the full inference). The class scores of overlapping windows are averaged, the argmax is
compared with the case's labels, and, because each window has its labels at hand, the training
loss of each window gives the validation loss for free.

Dice is nnU-Net's pseudo-Dice: true/false positives and false negatives of each foreground class
are summed over all validated cases before the ratio is taken, so small cases do not dominate.
A class that is absent from every validated case and never predicted has Dice NaN and is left
out of the mean. Unannotated voxels (the ``ignore`` label) are left out of the counts. For a
region dataset the Dice is each region's (the union of its classes), as nnU-Net reports it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from MaskSAMCore.inference.windows import window_starts
from MaskSAMCore.progress import Progress
from MaskSAMCore.training.losses import MaskSAMLoss


@dataclass
class ValidationCase:
    """A preprocessed case: image (C, Z, Y, X) float32 and labels (Z, Y, X) integers."""

    name: str
    image: np.ndarray
    labels: np.ndarray


@dataclass
class ValidationResult:
    dice: Dict[str, float]   # foreground class name -> Dice (NaN when undefined)
    mean_dice: float         # mean over classes with a defined Dice
    loss: float              # mean training loss over all windows
    finite: bool = True      # False when a window's loss was NaN or Inf: a diverged network


def iter_windows(shape: Sequence[int], patch: Sequence[int]) -> Iterator[Tuple[slice, slice, slice]]:
    """Windows of `patch` covering `shape` with half overlap (the predictor's rule, without its
    Gaussian weighting: validation Dice only needs every voxel predicted)."""
    z_starts, y_starts, x_starts = (window_starts(s, p, 0.5) for s, p in zip(shape, patch))
    for z in z_starts:
        for y in y_starts:
            for x in x_starts:
                yield slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2])


def pad_to_patch(image: np.ndarray, labels: np.ndarray, patch: Sequence[int]
                 ) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int, int]]:
    """Zero-pad (image) / background-pad (labels) at the far end so every axis is >= patch."""
    shape = labels.shape
    pad = [(0, max(p - s, 0)) for s, p in zip(shape, patch)]
    if any(after for _, after in pad):
        image = np.pad(image, [(0, 0), *pad])
        labels = np.pad(labels, pad)
    return image, labels, tuple(shape)


class Validator:
    """Validates a model on whole cases.

    Args:
        cases: the validation cases.
        patch_size: (T, H, W) of the network.
        class_names: names of all K classes in label order (index 0 background).
        criterion: the training loss (for the validation loss).
        device: where the model runs.
        window_batch: windows per forward pass.
        structures: what the Dice scores: foreground structure name -> its class indices. By
            default each foreground class alone; for a region dataset each region, the union of
            its classes, as nnU-Net scores region datasets.

    Unannotated voxels are the criterion's ``ignore_label`` (the loss and the Dice leave out the same).
    """

    def __init__(self, cases: Sequence[ValidationCase], patch_size: Sequence[int],
                 class_names: Sequence[str], criterion: MaskSAMLoss, device: torch.device,
                 window_batch: int = 4, structures: Optional[Dict[str, Sequence[int]]] = None) -> None:
        self.cases = list(cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.class_names = list(class_names)
        self.criterion = criterion
        self.device = device
        self.window_batch = window_batch
        self.structures = {name: [int(k) for k in classes] for name, classes in (structures or {
            name: [k] for k, name in enumerate(self.class_names) if k > 0}).items()}

    def select(self, epoch: int, max_cases: Optional[int]) -> List[ValidationCase]:
        """All cases, or `max_cases` of them rotating with the epoch (every case gets its turn)."""
        if max_cases is None or max_cases >= len(self.cases):
            return self.cases
        first = (epoch * max_cases) % len(self.cases)
        return [self.cases[(first + i) % len(self.cases)] for i in range(max_cases)]

    @torch.no_grad()
    def run(self, model: nn.Module, epoch: int = 0, max_cases: Optional[int] = None,
            autocast_dtype: Optional[torch.dtype] = None) -> ValidationResult:
        was_training = model.training
        model.eval()
        num_classes = len(self.class_names)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # [true, predicted]
        losses: List[float] = []
        cases = self.select(epoch, max_cases)
        # Validating a fold of CTs takes minutes: a bar in a terminal and progress events for the
        # Slicer module, but no lines in a log file (they would repeat every epoch).
        bar = Progress("validate", total=len(cases), unit="case", enabled=sys.stderr.isatty()) if cases else None
        try:
            for case in cases:
                prediction, case_losses = self.predict_case(model, case, autocast_dtype)
                losses.extend(case_losses)
                confusion += confusion_matrix(prediction, case.labels, num_classes, self.criterion.ignore_label)
                if bar is not None:
                    bar.set_postfix(case.name)
                    bar.advance()
        finally:
            model.train(was_training)
            if bar is not None:
                bar.end_line()
        dice = {}
        for name, classes in self.structures.items():
            tp, fp, fn = structure_counts(confusion, classes)
            dice[name] = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn > 0 else math.nan
        defined = [d for d in dice.values() if not math.isnan(d)]
        return ValidationResult(dice=dice, mean_dice=float(np.mean(defined)) if defined else math.nan,
                                loss=float(np.mean(losses)) if losses else math.nan,
                                finite=all(math.isfinite(loss) for loss in losses))

    @torch.no_grad()
    def predict_case(self, model: nn.Module, case: ValidationCase,
                     autocast_dtype: Optional[torch.dtype]) -> Tuple[np.ndarray, List[float]]:
        """Argmax labels (Z, Y, X) of a case and the loss of each window batch with an annotated voxel."""
        image, labels, shape = pad_to_patch(case.image, case.labels, self.patch_size)
        num_classes = len(self.class_names)
        scores = torch.zeros((num_classes, *labels.shape), dtype=torch.float32)
        hits = torch.zeros(labels.shape, dtype=torch.float32)
        windows = list(iter_windows(labels.shape, self.patch_size))
        losses = []
        for start in range(0, len(windows), self.window_batch):
            batch = windows[start:start + self.window_batch]
            x = torch.from_numpy(np.stack([image[(slice(None), *w)] for w in batch])).to(self.device)
            seg = torch.from_numpy(np.stack([labels[w] for w in batch]).astype(np.int64)).to(self.device)
            with torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                output = model(x)
                semantic = model.semantic(output)  # (b, K, T, H, W)
            if self._annotated(seg):   # a batch of unannotated windows has no loss (not a loss of 0)
                losses.append(float(self.criterion(output, seg).total.detach()))
            semantic = semantic.float().cpu()
            for window, window_scores in zip(batch, semantic):
                scores[(slice(None), *window)] += window_scores
                hits[window] += 1
        prediction = (scores / hits.clamp(min=1)).argmax(0).numpy()
        return prediction[: shape[0], : shape[1], : shape[2]], losses

    def _annotated(self, seg: torch.Tensor) -> bool:
        """Whether a window batch's labels hold any annotated voxel."""
        ignore = self.criterion.ignore_label
        return ignore is None or bool((seg != ignore).any())


def confusion_matrix(prediction: np.ndarray, labels: np.ndarray, num_classes: int,
                     ignore_label: Optional[int] = None) -> np.ndarray:
    """(K, K) voxel counts [true class, predicted class] over the annotated voxels (those not
    `ignore_label`)."""
    prediction = prediction.astype(np.int64).ravel()
    labels = labels.astype(np.int64).ravel()
    if ignore_label is not None:
        annotated = labels != ignore_label
        prediction, labels = prediction[annotated], labels[annotated]
    joint = np.bincount(labels * num_classes + prediction, minlength=num_classes * num_classes)
    return joint.reshape(num_classes, num_classes)


def structure_counts(confusion: np.ndarray, classes: Sequence[int]) -> Tuple[int, int, int]:
    """(tp, fp, fn) of the union of `classes` from a (K, K) confusion matrix: a voxel is in the
    structure in truth (rows) or in prediction (columns) when its class is one of them."""
    inside = np.zeros(confusion.shape[0], dtype=bool)
    inside[list(classes)] = True
    tp = int(confusion[np.ix_(inside, inside)].sum())
    return tp, int(confusion[np.ix_(~inside, inside)].sum()), int(confusion[np.ix_(inside, ~inside)].sum())
