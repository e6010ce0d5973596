"""What a running MaskSAMCore job has told us about its progress, for a progress bar and a status line.

The core prints ``@masksam {json}`` lines (`MaskSAMCore.progress`): ``stage`` when a stage
begins, ``progress`` with done/total/fraction/eta_s within it, ``epoch`` after each training
epoch, ``message``, ``warning``, ``done`` and ``error``. Training interleaves its "train" stage
(one bar over every iteration of every epoch) with validation, so the overall fraction and ETA of
a training follow the "train" bar and the epoch lines, not whichever stage printed last.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from MaskSAMCore.progress import format_duration

TRAINING_STAGE = "train"  # the core's progress bar over all iterations of all epochs (a resumed run's start done)


@dataclass
class JobProgress:
    stage: str = "starting"
    stage_fraction: Optional[float] = None   # 0..1 within the current stage, None when unknown
    stage_eta_s: Optional[float] = None      # the core's own estimate for the stage
    epoch: Optional[int] = None              # last finished epoch (1-based), training only
    epochs: Optional[int] = None
    training_fraction: Optional[float] = None  # the "train" stage spans every epoch's iterations
    training_eta_s: Optional[float] = None
    message: str = ""
    epoch_history: List[Dict[str, Any]] = field(default_factory=list)
    # The estimates count down between events (minutes apart for a vit_b window on a CPU, where
    # a still ETA would look stuck): `clock` when each came.
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    stage_eta_at: float = field(default=0.0, repr=False, compare=False)
    training_eta_at: float = field(default=0.0, repr=False, compare=False)

    def update(self, event: Dict[str, Any]) -> None:
        """Fold one machine event into the state."""
        kind = event.get("event")
        now = self.clock()
        if kind == "stage":
            self.stage = str(event.get("stage") or self.stage)
            total = _number(event.get("total"))
            self.stage_fraction = min(max((_number(event.get("done")) or 0.0) / total, 0.0), 1.0) if total else None
            self.stage_eta_s = None
            if self.stage == TRAINING_STAGE:
                self.training_fraction = self.stage_fraction
        elif kind == "progress":
            self.stage = str(event.get("stage") or self.stage)
            fraction, total = _number(event.get("fraction")), _number(event.get("total"))
            if fraction is None and total:
                fraction = (_number(event.get("done")) or 0.0) / total
            self.stage_fraction = None if fraction is None else min(max(fraction, 0.0), 1.0)
            self.stage_eta_s, self.stage_eta_at = _number(event.get("eta_s")), now
            if self.stage == TRAINING_STAGE:
                self.training_fraction, self.training_eta_s = self.stage_fraction, self.stage_eta_s
                self.training_eta_at = now
        elif kind == "epoch":
            epoch, epochs = _number(event.get("epoch")), _number(event.get("epochs"))
            self.epoch = int(epoch) if epoch is not None else (self.epoch or 0) + 1
            self.epochs = int(epochs) if epochs else self.epochs
            self.training_eta_s, self.training_eta_at = _number(event.get("eta_s")), now
            self.epoch_history.append(dict(event))
        elif kind == "message":
            self.message = str(event.get("message", ""))
        elif kind == "done":
            self.stage, self.stage_fraction, self.stage_eta_s = "done", 1.0, 0.0

    @property
    def is_training(self) -> bool:
        return self.epochs is not None or self.training_fraction is not None

    def overall_fraction(self) -> Optional[float]:
        """0..1 for the whole job, or None while unknown (the bar then shows 'busy')."""
        if self.stage == "done":
            return 1.0
        if self.training_fraction is not None:
            return self.training_fraction
        if self.epochs:
            return min((self.epoch or 0) / self.epochs, 1.0)
        return self.stage_fraction

    def eta_s(self) -> Optional[float]:
        """Seconds left as the core last estimated them, less the time since (None while unknown)."""
        if self.stage == "done":
            return 0.0
        given, at = ((self.training_eta_s, self.training_eta_at) if self.is_training
                     else (self.stage_eta_s, self.stage_eta_at))
        return None if given is None else max(given - (self.clock() - at), 0.0)

    def status_text(self, elapsed_s: float) -> str:
        """One line such as ``epoch 3/50 · validate 40% · ETA 12:04`` or ``predict 45% · ETA 0:12``."""
        parts = []
        if self.epochs:
            parts.append(f"epoch {min((self.epoch or 0) + 1, self.epochs)}/{self.epochs}")
        stage = self.stage.replace("_", " ")
        if self.stage_fraction is not None and self.stage != "done":
            stage += f" {100 * self.stage_fraction:.0f}%"
        parts.append(stage)
        eta = self.eta_s()
        if eta is not None and self.stage != "done":
            parts.append(f"ETA {format_duration(eta)}")
        parts.append(f"elapsed {format_duration(elapsed_s)}")
        return " · ".join(parts)


def _number(value: Any) -> Optional[float]:
    """A finite float, or None for anything else (a malformed event must not stop the poll)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def warnings_note(warnings: Sequence[str]) -> str:
    """What a finished job's status line adds for its warnings (the log lists them)."""
    if not warnings:
        return ""
    return f" {len(warnings)} warning{'s' if len(warnings) > 1 else ''}: see the log."
