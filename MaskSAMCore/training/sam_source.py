"""Which Segment Anything weights a training run starts from, checked before anything is written.

``--sam-checkpoint`` is a file or a model type (vit_b / vit_l / vit_h: the checkpoint downloaded
into the cache by ``masksam download-sam``); ``--random-init`` builds the backbone with random
weights (tests, demos); the ``tiny`` preset has no official weights and is always random. Without
either flag the cached checkpoint of the preset's type is used (absent, the error says how to get
it). The checkpoint is
read (safely) and its type checked here, so a wrong file fails before MODEL_DIR exists, and its
SHA-256 goes into model.json so the predictor can find the same weights again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch

from MaskSAMCore.errors import CheckpointError, MaskSAMError, describe_path
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.sam_checkpoints import REGISTRY, cached_path, load_sam_state_dict, remembered_sha256


@dataclass
class SamSource:
    """The backbone's origin. `state` holds the loaded weights (None for random init)."""

    path: Optional[Path]
    model_type: Optional[str]
    sha256: Optional[str]
    random_init: bool
    state: Optional[Dict[str, torch.Tensor]] = None


def resolve_sam_source(preset_name: str, sam_checkpoint: Optional[str], random_init: bool) -> SamSource:
    """Find, read and check the SAM weights for a new run; MaskSAMError (one line) otherwise."""
    sam_type = preset(preset_name, num_classes=2).backbone.sam_type
    if sam_type == "none":
        if sam_checkpoint:
            raise MaskSAMError(f"the {preset_name} preset has no official SAM weights; "
                               "drop --sam-checkpoint (it always starts from random weights)")
        return SamSource(path=None, model_type="none", sha256=None, random_init=True)
    if random_init:
        return SamSource(path=None, model_type=sam_type, sha256=None, random_init=True)
    if sam_checkpoint in REGISTRY or sam_checkpoint is None:
        wanted = sam_checkpoint or sam_type
        if wanted != sam_type:
            raise MaskSAMError(f"--sam-checkpoint {wanted} does not fit --preset {preset_name} "
                               f"(it needs SAM {sam_type})")
        path = cached_path(wanted)
        if not path.is_file():
            raise CheckpointError(
                f"no SAM {wanted} checkpoint in the cache ({describe_path(path)}): run "
                f"'masksam download-sam {wanted}', pass --sam-checkpoint FILE, or train with --random-init")
    else:
        path = Path(sam_checkpoint)
        if not path.is_file():
            what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
            raise CheckpointError(f"SAM checkpoint {describe_path(path)} {what}")
    state = load_sam_state_dict(path, expected_type=sam_type)
    return SamSource(path=path, model_type=sam_type, sha256=remembered_sha256(path), random_init=False,
                     state=state)


def load_recorded_sam(path: "os.PathLike[str] | str", model_type: str, sha256: Optional[str]) -> SamSource:
    """The SAM weights a resumed run was started with (path found by `ModelFolder`)."""
    state = load_sam_state_dict(path, expected_type=model_type)
    return SamSource(path=Path(path), model_type=model_type, sha256=sha256, random_init=False, state=state)
