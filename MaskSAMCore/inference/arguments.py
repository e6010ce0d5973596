"""What ``masksam predict``, ``evaluate``, ``benchmark`` and ``demo`` are asked to do, as plain values.

The inference counterparts of `training.arguments.TrainArguments`: the command line builds one
from its parsed words (`cli.command_arguments`), and Python code builds one directly::

    run_predict(PredictArguments("model/", "scans/", "labels/", fast=True))

Each field is named after its option (``--no-mirror`` sets `mirror` False, ``--continue`` is
`continue_run`); `check_values` makes the range checks the parser makes, for values built in
Python. No torch here: the command line imports this module before it knows what it will run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from MaskSAMCore.errors import MaskSAMError

PathLike = Union[str, Path]


def _check_at_least(minimum: int, **values: Optional[int]) -> None:
    for name, value in values.items():
        if value is not None and value < minimum:
            raise MaskSAMError(f"--{name.replace('_', '-')} must be at least {minimum}, not {value}")


def _check_window_options(step: Optional[float], window_batch: Optional[int]) -> None:
    """--step and --window-batch, which predict and benchmark share."""
    if step is not None and not 0 < step <= 1:
        raise MaskSAMError(f"--step must be a fraction of the patch size in (0, 1], not {step:g}")
    _check_at_least(1, window_batch=window_batch)


@dataclass(frozen=True)
class PredictArguments:
    """``masksam predict MODEL_DIR INPUT OUTPUT``. None means "the default": `step` is 0.5, or
    1.0 with `fast`; `window_batch` is chosen from the memory of the device."""

    model_dir: PathLike
    input: PathLike
    output: PathLike
    series: Optional[str] = None
    all_series: bool = False
    sam_checkpoint: Optional[PathLike] = None
    checkpoint: str = "final"
    mirror: bool = True
    step: Optional[float] = None
    fast: bool = False
    window_batch: Optional[int] = None
    probabilities: bool = False
    output_ending: Optional[str] = None
    continue_run: bool = False
    device: str = "auto"

    def check_values(self) -> None:
        _check_window_options(self.step, self.window_batch)
        if self.checkpoint not in ("final", "best", "latest"):
            raise MaskSAMError(f"--checkpoint must be final, best or latest, not {self.checkpoint!r}")


@dataclass(frozen=True)
class EvaluateArguments:
    """``masksam evaluate PREDICTION GROUND_TRUTH``: files or folders of label maps. Without
    `dataset_json` the class names come from the dataset the ground truth lies in."""

    prediction: PathLike
    ground_truth: PathLike
    dataset_json: Optional[PathLike] = None
    output: Optional[PathLike] = None

    def check_values(self) -> None:
        """Nothing to check before the files are read (kept for a uniform interface)."""


@dataclass(frozen=True)
class BenchmarkArguments:
    """``masksam benchmark``: a synthetic volume of `shape` (z, y, x) through the full predictor,
    with a random network of `preset` and `classes` (None: vit_b, 16) or the model in `model_dir`."""

    preset: Optional[str] = None
    model_dir: Optional[PathLike] = None
    shape: Sequence[int] = (300, 512, 512)
    classes: Optional[int] = None
    mirror: bool = True
    step: Optional[float] = None
    fast: bool = False
    window_batch: Optional[int] = None
    compare_nnunet: bool = False
    repeat: int = 1
    resample: bool = False
    max_windows: Optional[int] = None
    output: Optional[PathLike] = None
    device: str = "auto"

    def check_values(self) -> None:
        _check_window_options(self.step, self.window_batch)
        if len(self.shape) != 3:
            raise MaskSAMError(f"--shape needs three sizes (z, y, x), not {len(self.shape)}")
        _check_at_least(2, shape=min(self.shape), classes=self.classes)
        _check_at_least(1, repeat=self.repeat, max_windows=self.max_windows)


@dataclass(frozen=True)
class DemoArguments:
    """``masksam demo [OUTPUT]``: phantoms, training for about `minutes`, prediction, Dice, a PNG."""

    output: PathLike = "demo_output"
    minutes: float = 4.0
    cases: int = 12
    device: str = "auto"

    def check_values(self) -> None:
        if not (math.isfinite(self.minutes) and self.minutes > 0):
            raise MaskSAMError(f"--minutes must be a positive number, not {self.minutes:g}")
        _check_at_least(5, cases=self.cases)
