"""The per-epoch training history: ``training_log.csv`` and the ``progress.png`` plot.

The history is kept in memory as a list of rows and also stored in ``checkpoint_latest.pt``, so a
resumed run rewrites the CSV from the checkpoint: every finished epoch appears exactly once,
whatever moment the previous process was killed at (an epoch that finished after the last
checkpoint is redone and its stale row replaced).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from MaskSAMCore.atomic import write_text, write_with
from MaskSAMCore.folder_layout import TRAINING_LOG
from MaskSAMCore.progress import format_duration, print_message

FIXED_COLUMNS = ("epoch", "train_loss", "val_loss")
TAIL_COLUMNS = ("mean_dice", "ema_dice", "lr", "epoch_time_s")

MAX_NAMED_CLASSES = 20   # per-class Dice curves named in the plot's legend


def dice_column(class_name: str) -> str:
    return f"dice_{class_name}"


@dataclass
class EpochRecord:
    """One row of the log; `epoch` counts finished epochs from 1."""

    epoch: int
    train_loss: float
    val_loss: float
    dice: Dict[str, float]          # foreground class name -> validation Dice
    mean_dice: float
    ema_dice: float
    lr: float
    epoch_time_s: float

    def to_row(self, class_names: Sequence[str]) -> Dict[str, object]:
        row: Dict[str, object] = {"epoch": self.epoch, "train_loss": self.train_loss,
                                  "val_loss": self.val_loss}
        for name in class_names:
            row[dice_column(name)] = self.dice.get(name, float("nan"))
        row.update(mean_dice=self.mean_dice, ema_dice=self.ema_dice, lr=self.lr,
                   epoch_time_s=self.epoch_time_s)
        return row

    def describe(self, epochs: int, eta_s: float) -> str:
        """The epoch's two lines for a person reading the console, e.g.::

            epoch 3/50: train loss 0.812, val loss 0.774, mean Dice 0.623 (EMA 0.601), 12.3 s, ETA 9:50
              Dice: liver 0.910, spleen 0.850, kidney_left -
        """
        def number(value: float, digits: int = 3) -> str:
            return "-" if math.isnan(value) else f"{value:.{digits}f}"

        summary = (f"epoch {self.epoch}/{epochs}: train loss {number(self.train_loss)}, "
                   f"val loss {number(self.val_loss)}, mean Dice {number(self.mean_dice)} "
                   f"(EMA {number(self.ema_dice)}), {self.epoch_time_s:.1f} s, ETA {format_duration(eta_s)}")
        per_class = ", ".join(f"{name} {number(value)}" for name, value in self.dice.items())
        return summary + ("\n  Dice: " + per_class if per_class else "")

    def to_state(self) -> Dict[str, object]:
        """A plain dict (for checkpoints loaded with weights_only=True)."""
        return {"epoch": self.epoch, "train_loss": self.train_loss, "val_loss": self.val_loss,
                "dice": dict(self.dice), "mean_dice": self.mean_dice, "ema_dice": self.ema_dice,
                "lr": self.lr, "epoch_time_s": self.epoch_time_s}

    @classmethod
    def from_state(cls, state: Dict[str, object]) -> "EpochRecord":
        return cls(**state)  # type: ignore[arg-type]


@dataclass
class TrainingLog:
    """The history of a run and the files it is written to.

    Args:
        folder: the model folder (``training_log.csv`` and ``progress.png`` go there).
        class_names: foreground class names, in label order (one Dice column each).
    """

    folder: "os.PathLike[str] | str"
    class_names: Sequence[str]
    records: List[EpochRecord] = field(default_factory=list)
    _no_plot: bool = field(default=False, repr=False)   # matplotlib missing: said once

    @property
    def csv_path(self) -> str:
        return os.path.join(os.fspath(self.folder), TRAINING_LOG)

    @property
    def plot_path(self) -> str:
        return os.path.join(os.fspath(self.folder), "progress.png")

    @property
    def columns(self) -> List[str]:
        return [*FIXED_COLUMNS, *(dice_column(n) for n in self.class_names), *TAIL_COLUMNS]

    def add(self, record: EpochRecord) -> None:
        """Append a finished epoch, replacing any row of the same or a later epoch."""
        self.records = [r for r in self.records if r.epoch < record.epoch] + [record]

    def restore(self, states: Sequence[Dict[str, object]]) -> None:
        self.records = [EpochRecord.from_state(s) for s in states]

    def to_state(self) -> List[Dict[str, object]]:
        return [r.to_state() for r in self.records]

    def write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for record in self.records:
            writer.writerow({k: _format(v) for k, v in record.to_row(self.class_names).items()})
        write_text(self.csv_path, buffer.getvalue())

    def write_plot(self) -> None:
        """Loss (train, validation), Dice (mean, EMA, per class) and lr against the epoch.
        Without matplotlib the picture is left out (once said): the CSV has the same numbers,
        and a missing plotting library must not stop a training."""
        if not self.records or self._no_plot:
            return
        try:
            import matplotlib
        except ImportError:
            self._no_plot = True
            print_message("matplotlib is not installed, so progress.png is not drawn "
                          "(training_log.csv has the same numbers)")
            return

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        epochs = [r.epoch for r in self.records]
        figure = Figure(figsize=(8, 9), dpi=80)
        loss_ax, dice_ax, lr_ax = figure.subplots(3, 1, sharex=True)
        loss_ax.plot(epochs, [r.train_loss for r in self.records], label="train loss", color="C0")
        loss_ax.plot(epochs, [r.val_loss for r in self.records], label="validation loss", color="C1")
        loss_ax.set_ylabel("loss")
        loss_ax.legend(loc="upper right")
        named = len(self.class_names) <= MAX_NAMED_CLASSES   # a legend of hundreds does not fit
        for i, name in enumerate(self.class_names):
            dice_ax.plot(epochs, [r.dice.get(name, math.nan) for r in self.records],
                         label=name if named else None, color=f"C{(i + 2) % 10}", linewidth=0.8, alpha=0.6)
        dice_ax.plot(epochs, [r.mean_dice for r in self.records], label="mean", color="k", linewidth=2)
        dice_ax.plot(epochs, [r.ema_dice for r in self.records], label="EMA", color="k", linestyle="--")
        dice_ax.set_ylabel("validation Dice")
        dice_ax.set_ylim(0, 1)
        dice_ax.legend(loc="lower right", fontsize="small", ncol=2)
        lr_ax.plot(epochs, [r.lr for r in self.records], color="C3")
        lr_ax.set_ylabel("learning rate")
        lr_ax.set_xlabel("epoch")
        with warnings.catch_warnings():   # "tight layout not applied" is matplotlib's business, not the user's
            warnings.simplefilter("ignore")
            figure.tight_layout()
        write_with(self.plot_path, lambda tmp: figure.savefig(tmp, format="png"))


def _format(value: object) -> object:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def read_csv(path: "os.PathLike[str] | str") -> List[Dict[str, str]]:
    """The rows of a ``training_log.csv`` as dicts of strings (for tests and tools)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
