"""What `masksam train --resume` checks before any work: the dataset, and the run's length.

A resumed run keeps its folds (splits.json) and its preprocessed cases, so the dataset must be
the one the run started with. Given another one, a case added since would be silently left out
of the folds, a case removed would fail only after the whole dataset was preprocessed, and
cases with the same names but other files would silently change what the rest of the training
learns from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from MaskSAMCore.data.dataset import RawDataset
from MaskSAMCore.data.preprocess_runner import source_stamps
from MaskSAMCore.data.store import SEG_SUFFIX, case_paths, read_properties
from MaskSAMCore.errors import InputError, ModelFolderError, describe_path, list_some
from MaskSAMCore.folder_layout import PREPROCESSED, SPLITS_FILE
from MaskSAMCore.training.arguments import RUN_OPTIONS, TrainArguments


def started_cases(model_dir: Path) -> Set[str]:
    """The training cases of the run in `model_dir`: those of its folds, else those preprocessed
    (fold "all" has no splits.json); empty when neither is there."""
    if (model_dir / SPLITS_FILE).is_file():
        return _split_cases(model_dir)
    return _preprocessed_cases(model_dir)


def _split_cases(model_dir: Path) -> Set[str]:
    try:
        folds = json.loads((model_dir / SPLITS_FILE).read_text(encoding="utf-8"))
        return {name for fold in folds for part in ("train", "val") for name in fold.get(part, [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()   # load_or_create_splits reports a damaged splits.json itself


def _preprocessed_cases(model_dir: Path) -> Set[str]:
    # A case being preprocessed again has no .json for a moment (store.save_case), and a killed
    # write leaves a hidden temporary: a case is any name with properties or labels stored.
    stored = [path.name for path in (model_dir / PREPROCESSED).glob("*") if not path.name.startswith(".")]
    return ({name[:-len(".json")] for name in stored if name.endswith(".json")}
            | {name[:-len(SEG_SUFFIX)] for name in stored if name.endswith(SEG_SUFFIX)})


def forget_other_cases(model_dir: Path, dataset: RawDataset) -> None:
    """A new run started again in a folder a killed run left before its first checkpoint keeps
    that run's preprocessed cases, but only those of this dataset: the others' files go, and
    folds made of other cases (splits.json) too, or a later --resume would compare this dataset
    with the killed run's cases and refuse it."""
    names = {case.name for case in dataset.training_cases}
    for name in _preprocessed_cases(model_dir) - names:
        for path in case_paths(model_dir / PREPROCESSED, name):
            path.unlink(missing_ok=True)
    if (model_dir / SPLITS_FILE).is_file() and _split_cases(model_dir) != names:
        (model_dir / SPLITS_FILE).unlink()


def check_resumed_dataset(model_dir: Path, dataset: RawDataset) -> List[str]:
    """Refuse a dataset whose training cases are not those of the run being resumed (`InputError`);
    return the cases whose files changed size since they were preprocessed (they are
    preprocessed again; the caller warns). Modification times alone do not count: copying a
    dataset to another machine changes them."""
    names = {case.name for case in dataset.training_cases}
    started = started_cases(model_dir)
    if started and started != names:
        added, missing = sorted(names - started), sorted(started - names)
        parts = [f"{len(added)} case(s) not in it ({list_some(added)})" if added else "",
                 f"{len(missing)} of its case(s) missing ({list_some(missing)})" if missing else ""]
        raise InputError(f"{describe_path(dataset.root)}: not the dataset the training in {describe_path(model_dir)} "
                         f"started with: {'; '.join(p for p in parts if p)}; resume with that dataset, or train "
                         "a new model folder")
    changed = []
    for case in dataset.training_cases:
        try:
            stored = read_properties(model_dir / PREPROCESSED, case.name).get("sources")
        except (OSError, ValueError, InputError):
            continue
        if stored and _sizes(stored) != _sizes(source_stamps(case)):
            changed.append(case.name)
    return changed


def _sizes(stamps: List[dict]) -> List[tuple]:
    return [(stamp.get("file"), stamp.get("size")) for stamp in stamps]


def resumed_run_length(given: Optional[int], planned: int, finished: int, model_dir: Path) -> int:
    """The epochs of a resumed run: its own, or `--epochs` given with `--resume` (a finished run
    trained longer, or a run ended sooner). `--epochs` below the epochs it has already finished is
    refused (`ModelFolderError`): the run cannot end before epochs it has trained."""
    if given is None or given == planned:
        return planned
    if given < finished:
        raise ModelFolderError(f"the training in {describe_path(model_dir)} has finished {finished} epochs "
                               f"already: --epochs {given} cannot end it sooner (give at least {finished})")
    return given


def ignored_options(arguments: TrainArguments, run_values: Dict[str, Any]) -> List[str]:
    """The run options a --resume command line names with another value than the run's own
    (`run_values`: option name -> the run's value), each as `--lr 0.5 (the run's 0.01)`: the
    resumed run ignores them, and saying so beats a user believing `--lr 0.5` changed the run. An
    option left at its default (not in `arguments.given`) is no request, even where the run's
    value differs."""
    given = [(name, getattr(arguments, name)) for name in RUN_OPTIONS if name in arguments.given]
    return [_describe(name, value, run_values[name]) for name, value in given
            if name in run_values and value != run_values[name]]


def _describe(name: str, given: Any, own: Any) -> str:
    option = f"--{name.replace('_', '-')}"
    if isinstance(given, bool):   # a switch: its name says what was asked
        return option
    return f"{option} {given} (the run's {own})"


def process_count_note(payload: Dict[str, Any], world_size: int, batch_size: int) -> Optional[str]:
    """A note when a run resumes with another number of processes than it was trained with:
    --batch-size is per process, so the patches per optimiser step change with it (at the same
    learning rate), which the user should know rather than find in the loss curve. The count is
    stored in checkpoint_latest; older ones tell it by their per-rank random states."""
    before = payload.get("world_size")
    if before is None:
        rng = payload.get("rng")
        before = len(rng) if isinstance(rng, list) and rng else 1
    before = int(before)
    if before == world_size:
        return None
    return (f"trained with {_processes(before)}, now {_processes(world_size)}: {world_size * batch_size} patches per "
            f"step instead of {before * batch_size} (--batch-size {batch_size} is per process)")


def _processes(count: int) -> str:
    return f"{count} process{'es' if count > 1 else ''}"
