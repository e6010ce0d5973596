"""The settings a training run is started with (stored in checkpoint_latest and model.json)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from MaskSAMCore.training.weights import LossWeights


@dataclass
class TrainSettings:
    """How to train; `--resume` continues with the stored settings, not the command line's."""

    epochs: int = 1000                     # the paper: 1000 (AMOS, Synapse) or 500 (ACDC) x 250
    iters_per_epoch: int = 250
    batch_size: int = 2
    optimizer: str = "sgd"                 # "sgd" (paper) or "adamw" (official AMOS config)
    lr: float = 1e-2
    seed: int = 12345
    fold: str = "0"
    amp: bool = True                       # mixed precision, CUDA only
    val_cases_per_epoch: Optional[int] = None
    weights_scope: str = "trainable"       # "all" for --random-init (see checkpoint_io)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    num_points: int = 112 * 112            # points per mask for mask losses / matching costs
    mirror_axes: List[int] = field(default_factory=lambda: [0, 1, 2])  # patch axes augmentation flips

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["loss_weights"] = self.loss_weights.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("loss_weights"), dict):
            values["loss_weights"] = LossWeights.from_dict(values["loss_weights"])
        return cls(**values)
