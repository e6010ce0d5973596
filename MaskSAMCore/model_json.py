"""A model folder's `model.json`: read and checked in one place, without torch.

Two programs judge a model folder: the command line (`MaskSAMCore.model_folder.ModelFolder`,
which builds the network and so imports torch) and the Slicer module's model list, which runs
in Slicer's own process where torch may not be installed yet. Both call `read_model_json`, so
that the Segment tab never lists a model that `masksam predict` then refuses, and both give the
same one-line message naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Union

from MaskSAMCore.data.planning import plan_problems
from MaskSAMCore.data.regions import RegionError, model_regions
from MaskSAMCore.errors import ModelFolderError, describe_path
from MaskSAMCore.folder_layout import MODEL_FORMAT, MODEL_JSON
from MaskSAMCore.model.config import MaskSAMConfig, network_problems

FORMAT = MODEL_FORMAT
# Version 2 adds "regions" (models trained on region labels, `data/regions.py`). Only such models
# are written as version 2, so that a MaskSAM that cannot paint regions refuses them by name
# instead of writing class indices as if they were label values.
FORMAT_VERSION = 2
REGIONS_FORMAT_VERSION = 2
# Bumped whenever the network's weights change meaning (names, shapes or what a layer computes),
# so that a model trained with another MaskSAM is refused with a clear message, not a shape error.
NETWORK_FORMAT = 2
_REQUIRED_KEYS = ("labels", "channel_names", "network", "plan", "sam")

PathLike = Union[str, "os.PathLike[str]"]


def read_model_json(model_dir: PathLike) -> Dict[str, Any]:
    """The checked content of `model_dir`'s model.json; `ModelFolderError` with one line naming
    the folder or the file otherwise."""
    folder = Path(model_dir)
    shown = describe_path(folder)
    if folder.is_file():
        raise ModelFolderError(f"{shown} is a file; give the model folder that holds {MODEL_JSON}")
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {shown} does not exist")
    json_path = folder / MODEL_JSON
    if not json_path.is_file():
        raise ModelFolderError(f"{shown} is not a MaskSAM model folder (no {MODEL_JSON})")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{describe_path(json_path)} is not valid JSON ({exc})") from None
    check_model_json(meta, folder)
    return meta


def check_model_json(meta: Any, folder: Path) -> None:
    """Raise `ModelFolderError` naming `folder`'s model.json at its first problem: fields of the
    wrong type, a format this MaskSAM cannot read, a plan preprocessing cannot use, a network
    that cannot be built, regions that do not fit the labels."""
    shown = describe_path(folder / MODEL_JSON)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFolderError(f"{shown} does not describe a MaskSAM model")
    problems = _description_problems(meta)
    if problems:
        raise ModelFolderError(f"{shown}: {problems[0]}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFolderError(f"{shown} has format version {meta['format_version']}; this MaskSAM reads up to "
                               f"{FORMAT_VERSION} (update MaskSAM)")
    network_format = meta.get("network_format", 1)
    if network_format != NETWORK_FORMAT:
        age = "an older" if network_format < NETWORK_FORMAT else "a newer"
        raise ModelFolderError(
            f"{describe_path(folder)} was trained with {age} MaskSAM network (format {network_format}, this "
            f"MaskSAM reads format {NETWORK_FORMAT}); retrain it or use the matching MaskSAM")
    plan = plan_problems(meta["plan"], len(meta["channel_names"]))
    if plan:
        raise ModelFolderError(f"{shown}: {plan[0]}")
    network = network_problems(meta["network"])
    if network:
        raise ModelFolderError(f"{shown}: {network[0]}")
    try:
        config = MaskSAMConfig.from_dict(meta["network"])
    except (TypeError, ValueError) as exc:
        raise ModelFolderError(f"{shown} has an invalid network: {exc}") from None
    planned, patch = meta["plan"].get("patch_size"), [config.num_slices, *config.image_hw]
    if planned is not None and planned != patch:
        # the cases were preprocessed and the depth layers built for one patch: the network's
        raise ModelFolderError(f"{shown}: the plan's patch_size {planned} differs from the network's "
                               f"num_slices and image_size {patch}")
    labels = meta["labels"]
    try:
        model_regions(meta.get("regions"), labels)
    except RegionError as exc:
        raise ModelFolderError(f"{shown}: regions: {exc}") from None
    if (meta["plan"].get("regions") or None) != (meta.get("regions") or None):
        # preprocessing reads the plan's copy, the label map is painted from model.json's
        raise ModelFolderError(f"{shown}: its plan and its description differ in regions")
    if config.num_classes != len(labels):
        raise ModelFolderError(f"{shown}: the network has {config.num_classes} classes but {len(labels)} labels "
                               "are listed")


def _description_problems(meta: Dict[str, Any]) -> List[str]:
    """Fields of model.json of the wrong type (a hand-edited or damaged file): one phrase each."""
    problems = [f"{key} must be a whole number" for key in ("format_version", "network_format")
                if key in meta and not (isinstance(meta[key], int) and not isinstance(meta[key], bool))]
    problems += [f"lacks {key}" for key in _REQUIRED_KEYS if key not in meta]
    problems += [f"{key} must be a mapping" for key in ("network", "sam", "labels", "channel_names")
                 if key in meta and not isinstance(meta[key], dict)]
    if problems:
        return problems
    values = list(meta["labels"].values())
    # The network's class index is the label value: a gap would shift every name after it.
    if not (all(isinstance(v, int) and not isinstance(v, bool) for v in values)
            and sorted(values) == list(range(len(values))) and values):
        problems.append("labels must map names to the whole numbers 0, 1, 2, ... without gaps, "
                        "with 0 the background")
    if not (meta["channel_names"] and all(str(key).isdigit() for key in meta["channel_names"])):
        problems.append("channel_names must map '0', '1', ... to modality names")
    return problems
