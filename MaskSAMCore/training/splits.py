"""Cross-validation splits, nnU-Net style: ``splits.json`` with 5 shuffled folds (seed 12345).

The split is the same as nnU-Net v2's default for the same case names: the names are sorted, the
indices shuffled with NumPy's legacy `RandomState(12345)` (what scikit-learn's `KFold(5,
shuffle=True, random_state=12345)` does) and cut into 5 consecutive folds, the first ``n % 5``
one case larger. An existing ``splits.json`` is always reused, so folds stay fixed when cases are
added later, and a user may edit it to impose their own split.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from MaskSAMCore.atomic import write_json
from MaskSAMCore.errors import InputError, MaskSAMError, describe_path
from MaskSAMCore.folder_layout import SPLITS_FILE

NUM_FOLDS = 5
SPLIT_SEED = 12345


def make_splits(case_names: Sequence[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED,
                dataset: Optional["os.PathLike[str] | str"] = None) -> List[Dict[str, List[str]]]:
    """``[{"train": [...], "val": [...]}, ...]``, one entry per fold (`dataset`: the folder the
    cases come from, named when they are too few)."""
    names = sorted(case_names)
    if len(names) < num_folds:
        where = f"{describe_path(dataset)}: " if dataset is not None else ""
        raise MaskSAMError(f"{where}{len(names)} training case(s) are too few for {num_folds}-fold "
                           "cross-validation; train with --fold all")
    indices = np.arange(len(names))
    np.random.RandomState(seed).shuffle(indices)
    sizes = np.full(num_folds, len(names) // num_folds)
    sizes[: len(names) % num_folds] += 1
    folds = []
    start = 0
    for size in sizes:
        val = set(indices[start:start + size].tolist())
        start += size
        folds.append({"train": [n for i, n in enumerate(names) if i not in val],
                      "val": [n for i, n in enumerate(names) if i in val]})
    return folds


def load_or_create_splits(model_dir: "os.PathLike[str] | str", case_names: Sequence[str],
                          write: bool = True) -> List[Dict[str, List[str]]]:
    """The folds in MODEL_DIR/splits.json, created from `case_names` if the file is absent and then
    written there only with `write`: under torchrun rank 0 alone creates the file, and every rank
    then reads it with `write=False` (`run.training_and_validation_cases`), so no two processes
    write it at once."""
    path = os.path.join(os.fspath(model_dir), SPLITS_FILE)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                folds = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{describe_path(path)}: cannot read the splits ({exc})") from None
        _check(folds, case_names, path)
        return folds
    folds = make_splits(case_names)
    if write:
        write_json(path, folds)
    return folds


def select_fold(folds: List[Dict[str, List[str]]], fold: str, case_names: Sequence[str]
                ) -> Tuple[List[str], List[str]]:
    """(training cases, validation cases) of `fold` ("0".."4", or "all": train and validate on
    every case, nnU-Net's convention)."""
    if fold == "all":
        names = sorted(case_names)
        return names, names
    if not fold.isdigit() or int(fold) >= len(folds):
        raise MaskSAMError(f"--fold must be 0..{len(folds) - 1} or 'all', not {fold!r}")
    chosen = folds[int(fold)]
    return list(chosen["train"]), list(chosen["val"])


def _check(folds: object, case_names: Sequence[str], path: str) -> None:
    shown = describe_path(path)
    if not isinstance(folds, list) or not all(
            isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list)
            for f in folds):
        raise InputError(f"{shown}: expected a list of {{\"train\": [...], \"val\": [...]}} folds")
    known = set(case_names)
    for index, fold in enumerate(folds):
        if not all(isinstance(name, str) for name in fold["train"] + fold["val"]):
            raise InputError(f"{shown}: fold {index} lists something other than case names")
        unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
        if unknown:
            raise InputError(f"{shown}: case '{unknown[0]}' is not in the dataset")
        # an empty validation list would keep the first epoch as "best"; a shared case inflates it
        for part in ("train", "val"):
            if not fold[part]:
                raise InputError(f"{shown}: fold {index} has no {part} cases")
        shared = sorted(set(fold["train"]) & set(fold["val"]))
        if shared:
            raise InputError(f"{shown}: case '{shared[0]}' is in both train and val of fold {index} "
                             "(use --fold all to train and validate on every case)")
