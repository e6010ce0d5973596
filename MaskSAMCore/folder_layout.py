"""The names of what a model folder holds, and how far a training in it got.

Free of torch on purpose: the Slicer module checks folders in its GUI process, where PyTorch may
not be installed yet.
"""

from __future__ import annotations

import json
from pathlib import Path

from MaskSAMCore.atomic import TEMP_MARKER

MODEL_JSON = "model.json"
MODEL_FORMAT = "masksam-model"       # model.json's "format"
PLANS_JSON = "plans.json"
DATASET_JSON = "dataset.json"
SPLITS_FILE = "splits.json"
PREPROCESSED = "preprocessed"        # the training cases after preprocessing (a folder)
FINAL_CHECKPOINT = "checkpoint_final.pt"     # what the predictor loads (written when training ends)
BEST_CHECKPOINT = "checkpoint_best.pt"
LATEST_CHECKPOINT = "checkpoint_latest.pt"   # everything --resume needs
TRAINING_LOG = "training_log.csv"            # one row per finished epoch

# What a new training writes before its first checkpoint (besides temporaries).
BEFORE_FIRST_CHECKPOINT = frozenset({MODEL_JSON, PLANS_JSON, DATASET_JSON, SPLITS_FILE, PREPROCESSED})


def never_checkpointed(model_dir: Path) -> bool:
    """Whether `model_dir` holds only what a new training writes before its first checkpoint.

    A run killed there (SIGKILL, the out-of-memory killer, a power cut) could not clean up after
    itself; a new run may start over in such a folder (reusing the preprocessed cases that are
    still valid) instead of refusing it as "not empty" while --resume finds nothing to resume.
    """
    try:
        names = {entry.name for entry in Path(model_dir).iterdir() if TEMP_MARKER not in entry.name}
        meta = json.loads((Path(model_dir) / MODEL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return names <= BEFORE_FIRST_CHECKPOINT and isinstance(meta, dict) and meta.get("format") == MODEL_FORMAT
