"""What ``masksam train`` is asked to do, as a plain value: `TrainArguments`.

The training's counterpart of inference's `PredictOptions`: the command line builds one from its
parsed words (`cli.train_arguments`), and Python code builds one directly, without argparse::

    run_train(TrainArguments("dataset/", "model/", preset="tiny", random_init=True, epochs=1))

No torch here: the command line imports this module before it knows whether it will train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import FrozenSet, Optional, Union

from MaskSAMCore.errors import MaskSAMError, describe_path

# Options that describe the run; a resumed run takes them from its checkpoint instead (but
# --epochs, which `resume_checks.resumed_run_length` honours).
RUN_OPTIONS = ("preset", "iters_per_epoch", "batch_size", "optimizer", "lr", "seed", "fold",
               "no_amp", "val_cases_per_epoch", "random_init")
# The folders of a dataset's cases (nnU-Net's raw format).
CASE_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


@dataclass(frozen=True)
class TrainArguments:
    """Every ``masksam train`` option, by its option name (``--no-amp`` is `no_amp`). None means
    "the default", resolved where the settings are made (`run.settings_from_arguments`): some
    defaults depend on other options (--lr on --optimizer) or on the machine (--num-workers)."""

    dataset: Union[str, Path]
    model_dir: Union[str, Path]
    preset: str = "vit_b"
    sam_checkpoint: Optional[str] = None
    random_init: bool = False
    epochs: Optional[int] = None
    iters_per_epoch: int = 250
    val_cases_per_epoch: Optional[int] = None
    batch_size: Optional[int] = None
    fold: str = "0"
    optimizer: str = "sgd"
    lr: Optional[float] = None
    num_workers: Optional[int] = None
    seed: int = 12345
    resume: bool = False
    no_amp: bool = False
    device: str = "auto"
    # The `RUN_OPTIONS` the user typed: with --resume, those naming another value than the run's
    # own are said to be ignored; one left at its default is no request (`resume_checks`).
    given: FrozenSet[str] = frozenset()
    # False where the caller removes MODEL_DIR when cancelled (`masksam demo`): a cancel must not
    # advise resuming or restarting from a folder about to be deleted.
    advise_resume: bool = True

    def check_values(self) -> None:
        """The range checks the command line's parser makes, for arguments built in Python."""
        self._check_counts("epochs", "iters_per_epoch", "batch_size")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise MaskSAMError(f"--lr must be a positive number, not {self.lr:g}")
        self._check_counts("val_cases_per_epoch")
        if self.fold != "all" and not (self.fold.isdigit() and int(self.fold) < 5):
            raise MaskSAMError(f"--fold must be 0, 1, 2, 3, 4 or all, not {self.fold!r}")

    def check_folders(self) -> None:
        """MODEL_DIR is neither the dataset folder nor inside the folders of its cases: a model
        folder there would be refused as not empty (the dataset's files) or written among the
        images and label maps the dataset is read from."""
        dataset, model_dir = Path(self.dataset).resolve(), Path(self.model_dir).resolve()
        shown = describe_path(self.model_dir)
        if model_dir == dataset:
            raise MaskSAMError(f"MODEL_DIR {shown} is the dataset folder; give a new folder for the model "
                               "(beside the dataset, or anywhere else)")
        for part in CASE_FOLDERS:
            if model_dir.is_relative_to(dataset / part):
                raise MaskSAMError(f"MODEL_DIR {shown} lies inside the dataset's {part} folder, among its cases; "
                                   "give a folder outside it")

    def _check_counts(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MaskSAMError(f"--{name.replace('_', '-')} must be at least 1")
