"""Weights of the matching cost and of the loss terms (paper §2.7).

The same weights serve the Hungarian matching cost and the loss, as in DETR / Mask2Former: the
matcher then picks the assignment the loss would find cheapest.

How the defaults were chosen (on the phantom dataset, tiny preset, CPU; numbers in the training
report of the repository README):

- The official release weights (class 0.2, no-object 0.1, final mask BCE/Dice 1.2-1.5, auxiliary
  mask BCE/Dice 0.5, box L1 0.5, GIoU 0.2) and Mask2Former's (class 2, mask BCE 5, Dice 5,
  no-object 0.1) were both tried.
- What matters most for the semantic output ``sum_n softmax(cls)[:K] * sigmoid(mask)`` is that the
  unmatched queries learn "no object" quickly (otherwise their masks leak into the class scores),
  and that the final masks are sharp. A class weight well above the release's 0.2 (which makes
  the classifier learn an order of magnitude slower than the masks) gave clearly faster
  learning; a mask-heavy balance like Mask2Former's keeps the masks sharp.
- The auxiliary terms only have to give the prompt generator a sensible mask and box; they keep
  the release's relative weights (half of the final mask's), boxes L1 and GIoU as released.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict


@dataclass(frozen=True)
class LossWeights:
    """Multipliers of every matching-cost / loss term."""

    cls: float = 2.0             # cross-entropy over K + 1 classes (cost: -p(class))
    no_object: float = 0.1       # relative weight of the "no object" class inside the CE
    mask_bce: float = 5.0        # final masks: binary cross-entropy
    mask_dice: float = 5.0       # final masks: Dice loss
    aux_mask_bce: float = 2.0    # prompt generator's auxiliary masks: BCE
    aux_mask_dice: float = 2.0   # auxiliary masks: Dice loss
    box_l1: float = 0.5          # learnable boxes: L1 on normalised corners
    box_giou: float = 0.2        # learnable boxes: 1 - generalised IoU

    def to_dict(self) -> Dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "LossWeights":
        return cls(**{k: float(v) for k, v in data.items()})
