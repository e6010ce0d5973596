"""What a cancelled ``masksam train`` keeps, and the one line that says how to go on.

A cancel (Ctrl-C, SIGTERM, the Slicer module's Stop) is a pause more often than an end: after
the first checkpoint the line names the epoch checkpoint_latest.pt holds and the ``--resume``
command; before it, the plan and the preprocessed cases stay (on a real cohort preprocessing
takes long), as after a kill, and the same command starts again reusing them
(`folder_layout.never_checkpointed`, `run.start_model_folder`).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Iterable, Optional

from MaskSAMCore.errors import describe_path
from MaskSAMCore.folder_layout import (BEFORE_FIRST_CHECKPOINT, LATEST_CHECKPOINT, MODEL_JSON, PREPROCESSED,
                                       never_checkpointed)
from MaskSAMCore.training import checkpoint_io
from MaskSAMCore.training.arguments import TrainArguments


def train_command(arguments: TrainArguments, *extra: str) -> str:
    """``masksam train DATASET MODEL_DIR ...`` with the paths as the user gave them (quoted for a shell)."""
    paths = (shlex.quote(str(arguments.dataset)), shlex.quote(str(arguments.model_dir)))
    return " ".join(["masksam", "train", *paths, *extra])


def how_to_resume(arguments: TrainArguments, model_dir: Path) -> str:
    """Where a training with a checkpoint_latest stands, and the command that continues it."""
    payload = checkpoint_io.peek(model_dir, "latest") or {}
    try:
        held = f" holds epoch {int(payload['epoch'])} of {int(payload['settings']['epochs'])}"
    except (KeyError, TypeError, ValueError):   # (unreadable: the command still says what to do)
        held = ""
    return f"{LATEST_CHECKPOINT}{held}; continue with {train_command(arguments, '--resume')}"


def keep_for_restart(model_dir: Path) -> Optional[str]:
    """Before the first checkpoint: remove from `model_dir` what a restart does not reuse and
    say what stays; None when nothing worth keeping was made yet (no preprocessed case, or the
    cancel came before model.json), and the caller removes the run's files."""
    cases = len(list((model_dir / PREPROCESSED).glob("*.json"))) if (model_dir / PREPROCESSED).is_dir() else 0
    if cases == 0 or not (model_dir / MODEL_JSON).is_file():
        return None
    remove_all_but(model_dir, BEFORE_FIRST_CHECKPOINT)
    if not never_checkpointed(model_dir):
        return None
    return (f"kept the plan and {cases} preprocessed case(s) in {describe_path(model_dir)}: the same command "
            "starts the training again and reuses them (or delete the folder)")


def remove_all_but(folder: Path, keep: Iterable[str]) -> None:
    """Remove every entry of `folder` not named in `keep` (a link itself, never what it points to)."""
    kept = set(keep)
    for entry in folder.iterdir():
        if entry.name in kept:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
