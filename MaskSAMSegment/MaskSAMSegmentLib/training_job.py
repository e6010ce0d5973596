"""The Training tab's work: ``masksam train`` in the background, a live plot, and installing the result.

Each ``epoch`` machine line adds a point to the plot (`training_plot.py`). When the training
finishes, the model folder is installed into the models folder so that it appears in the
Segment tab at once; the training folder itself (with its resume state) stays where it is.
Stop ends the process tree like any job; the core keeps ``checkpoint_latest.pt`` of the last
finished epoch, so ticking Resume continues from there (and trains a finished run longer when
Epochs is raised above its length).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Mapping, Optional

from MaskSAMCore.data.dataset_json import read_dataset_meta
from MaskSAMCore.errors import DatasetError, InputError, MaskSAMError, describe_path
from MaskSAMCore.folder_layout import LATEST_CHECKPOINT, MODEL_JSON, never_checkpointed
from MaskSAMCore.paths import models_folder
from MaskSAMSegmentLib.background_job import BackgroundJob
from MaskSAMSegmentLib.commands import job_environment, masksam_command, train_arguments
from MaskSAMSegmentLib.devices import DeviceChoice
from MaskSAMSegmentLib.job_progress import warnings_note
from MaskSAMSegmentLib.job_runner import JobRunner, JobState
from MaskSAMSegmentLib.models import SAM_TYPES, ModelInfo, cached_sam_checkpoint, install_trained_model
from MaskSAMSegmentLib.user_paths import full_path_problems

MIN_CASES_FOR_FOLDS = 5


@dataclass
class TrainRequest:
    """Everything the Start button needs.

    sam_checkpoint: a SAM checkpoint file, or vit_b / vit_l / vit_h for the downloaded one
    random_init:    train on a random frozen backbone (the tiny preset, demos and tests)
    """

    dataset_dir: str
    output_dir: str
    preset: str = "vit_b"
    sam_checkpoint: Optional[str] = None
    random_init: bool = False
    epochs: int = 100
    iters_per_epoch: Optional[int] = None
    device: DeviceChoice = DeviceChoice("Auto", "auto", None)
    resume: bool = False
    install_when_done: bool = True
    fold: Optional[str] = None   # None: fold 0, or "all" for datasets too small for 5 folds
    batch_size: Optional[int] = None           # None: the core's default (2)
    val_cases_per_epoch: Optional[int] = None  # None: validate on every validation case


def epochs_argument(request: TrainRequest) -> Optional[int]:
    """A new run's length; a resumed run keeps its own (None) unless Epochs asks for more: Resume
    with a larger number trains a finished run longer, a smaller one never cuts a run short."""
    if not request.resume:
        return request.epochs
    try:
        meta = json.loads((Path(request.output_dir) / MODEL_JSON).read_text(encoding="utf-8"))
        planned = int(meta["training"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None   # the core says what is wrong with the folder
    return request.epochs if request.epochs > planned else None


def automatic_fold(dataset_dir: str) -> str:
    """Fold 0 of the 5-fold split, or "all" when the dataset has fewer than 5 cases (typical of a
    dataset built from a scene), which the core cannot split into 5 folds."""
    try:
        count = int(read_dataset_meta(dataset_dir)["numTraining"])
    except (DatasetError, ValueError, KeyError, TypeError):
        return "0"   # the core reports what is wrong with dataset.json
    return "all" if count < MIN_CASES_FOR_FOLDS else "0"


def train_problems(request: TrainRequest) -> List[str]:
    """Why the Start button cannot run yet, one short sentence each (empty when it can). Asked on
    every parameter change, so it never raises: a folder that cannot be read is a problem too."""
    problems = _readable(_dataset_problems, request.dataset_dir, request)
    problems += _readable(_output_problems, request.output_dir, request)
    if request.epochs < 1:
        problems.append("Train for at least one epoch.")
    return problems + _readable(_sam_problems, request.sam_checkpoint or "", request)


def _readable(check: Callable[[TrainRequest], List[str]], path: str, request: TrainRequest) -> List[str]:
    """`check`'s problems, or the one that `path` (or a file in it) cannot be read."""
    try:
        return check(request)
    except OSError as exc:
        where = exc.filename or path
        return [f"'{where}' cannot be read ({exc.strerror or exc}): check its permissions or choose another folder."]


def _dataset_problems(request: TrainRequest) -> List[str]:
    dataset = Path(request.dataset_dir) if request.dataset_dir else None
    if dataset is None:
        return ["Choose a dataset folder (nnU-Net raw format), or build one from the scene."]
    if not dataset.is_absolute():
        return full_path_problems(request.dataset_dir, "dataset folder")
    if not (dataset / "dataset.json").is_file():
        return [f"'{dataset}' has no dataset.json (a dataset in nnU-Net raw format is needed)."]
    return []


def _output_problems(request: TrainRequest) -> List[str]:
    output = Path(request.output_dir) if request.output_dir else None
    if output is None:
        return ["Choose an output folder for the trained model."]
    if not output.is_absolute():
        return full_path_problems(request.output_dir, "model folder")
    if request.resume:
        if not (output / LATEST_CHECKPOINT).is_file():
            why = ("its training was stopped before the first epoch ended; untick Resume to start it again"
                   if never_checkpointed(output) else f"it has no {LATEST_CHECKPOINT}")
            return [f"Nothing to resume in '{output}': {why}."]
    elif output.exists() and (not output.is_dir() or any(output.iterdir())) and not never_checkpointed(output):
        if (output / LATEST_CHECKPOINT).is_file():
            return [f"'{output}' holds a training already: tick Resume to continue it, or choose a new folder."]
        return [f"'{output}' is not empty: choose a new folder for the model."]
    return []


def _sam_problems(request: TrainRequest) -> List[str]:
    if not uses_sam_weights(request) or request.resume:
        return []
    checkpoint = (request.sam_checkpoint or "").strip()
    if not checkpoint and cached_sam_checkpoint(request.preset) is None:
        return [f"Choose a SAM {request.preset} checkpoint: 'Download' the official one, or pick a .pth file."]
    if checkpoint and checkpoint not in SAM_TYPES and not Path(checkpoint).is_absolute():
        return full_path_problems(checkpoint, "SAM checkpoint")
    if checkpoint and checkpoint not in SAM_TYPES and not Path(checkpoint).is_file():
        return [f"SAM checkpoint file '{checkpoint}' not found."]
    return []


def cpu_training_note(request: TrainRequest) -> Optional[str]:
    """A word of warning before training a SAM-sized preset on the CPU, which takes days; the
    `tiny` preset is the one meant for a CPU (the demo trains it in minutes)."""
    if not request.device.runs_on_cpu or request.preset == "tiny":
        return None
    return (f"On the CPU, training the {request.preset} preset takes days: use a CUDA GPU, or the tiny "
            "preset to try the workflow.")


def uses_sam_weights(request: TrainRequest) -> bool:
    """False for the tiny preset (no official weights exist for it) and for random-backbone runs."""
    return request.preset in SAM_TYPES and not request.random_init


class TrainingJob(BackgroundJob):
    """One training: `start()`, then `poll()` until `finished`; `cancel()` stops it.

    on_epoch: called with each epoch event (the widget feeds its plot with it)
    """

    def __init__(self, request: TrainRequest, python: Optional[str] = None,
                 base_env: Optional[Mapping[str, str]] = None, models_root: Optional[str] = None,
                 on_log: Optional[Callable[[str], None]] = None,
                 on_epoch: Optional[Callable[[dict], None]] = None) -> None:
        super().__init__(on_log)
        self.request = request
        self.python = python
        self.base_env = base_env
        self.models_root = models_root
        self.on_epoch = on_epoch
        self.installed_model: Optional[ModelInfo] = None
        self.install_failure: Optional[str] = None   # why the trained model could not be installed

    def start(self) -> None:
        problems = train_problems(self.request)
        if problems:
            raise InputError(" ".join(problems))
        r = self.request
        checkpoint = r.sam_checkpoint if uses_sam_weights(r) and not r.resume else None
        arguments = train_arguments(r.dataset_dir, r.output_dir, preset=r.preset, sam_checkpoint=checkpoint,
                                    random_init=r.random_init, epochs=epochs_argument(r),
                                    iters_per_epoch=r.iters_per_epoch,
                                    device=r.device.device, resume=r.resume,
                                    fold=r.fold or automatic_fold(r.dataset_dir), batch_size=r.batch_size,
                                    val_cases_per_epoch=r.val_cases_per_epoch)
        self._run(JobRunner(masksam_command(arguments, self.python),
                            env=job_environment(self.base_env, r.device.gpu_index),
                            on_event=self._on_event, on_log=self.on_log))

    def _on_event(self, event: dict) -> None:
        if event.get("event") == "epoch" and self.on_epoch is not None:
            self.on_epoch(event)

    def _succeeded(self) -> JobState:
        if self.request.install_when_done:
            self._install()
        return JobState.SUCCEEDED

    def _install(self) -> None:
        """Install the trained model. A failure (a full disk, a read-only models folder) is
        reported, never raised: poll() runs from a timer, where an exception would only be a
        traceback, and the training itself succeeded: its folder can be imported by hand."""
        root = Path(self.models_root) if self.models_root is not None else models_folder()
        try:
            self.installed_model = install_trained_model(self.request.output_dir, root=root)
        except Exception as exc:   # noqa: BLE001 - whatever the copy raises, the user must hear of it
            self.install_failure = (f"the model could not be installed in {describe_path(root)} ({_reason(exc)}); "
                                    f"the trained model folder is intact at {describe_path(self.request.output_dir)}: "
                                    "install it with 'Import model folder...'")
            self.warnings.append(self.install_failure)

    def finished_status(self) -> str:
        """The status line of a training that succeeded: where the model is, or why it is not installed."""
        if self.install_failure:
            others = [warning for warning in self.warnings if warning != self.install_failure]
            return f"Training finished, but {self.install_failure}." + warnings_note(others)
        where = f"; '{self.installed_model.display_name}' is ready in the Segment tab." if self.installed_model else "."
        return "Training finished" + where + warnings_note(self.warnings)


def _reason(exc: Exception) -> str:
    """An exception in words: the core's one line, the system's message, or the exception itself."""
    if isinstance(exc, MaskSAMError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror   # "No space left on device", without the errno and a temporary file's name
    return f"{type(exc).__name__}: {exc}"


def downloaded_checkpoint(log_lines) -> Optional[str]:
    """The file ``masksam download-sam`` reported (its last output line is the path), or None."""
    for line in reversed(list(log_lines)):
        candidate = line.strip()
        if candidate:
            return candidate if Path(candidate).is_file() else None
    return None
