"""Installed MaskSAM models: listing, describing and installing model folders.

A model folder (docs/INTERNALS.md) is self-describing through its ``model.json``. The core's
`MaskSAMCore.model_folder` reads it too, but imports torch; the GUI must stay light, so this
file reads only what the Segment tab shows (name, version, labels, modality, input size),
checked by the same torch-free `MaskSAMCore.model_json` as the command line. A model trained on
region labels (BraTS-like, read with `MaskSAMCore.data.regions`, which needs numpy only) shows
and names its segments by its regions. Installed models live in `MaskSAMCore.paths.models_folder()`,
one sub-folder each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace as replaced
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from MaskSAMCore.atomic import write_json
from MaskSAMCore.data.regions import RegionScheme
from MaskSAMCore.errors import ModelAlreadyInstalled, ModelFolderError, describe_path
from MaskSAMCore.folder_layout import FINAL_CHECKPOINT, LATEST_CHECKPOINT, MODEL_JSON, PREPROCESSED
from MaskSAMCore.model_json import read_model_json
from MaskSAMCore.paths import SAM_CHECKPOINT_FILES, checkpoint_cache, models_folder

# What an installed model does not need: the resume state (optimizer, RNG) and the preprocessed
# training data stay in the training folder.
NOT_INSTALLED = (LATEST_CHECKPOINT, PREPROCESSED)
INSTALLED_FROM = ".installed-from"   # in an installed model: the folder it was copied from


SAM_TYPES = tuple(SAM_CHECKPOINT_FILES)  # the presets with official SAM weights


def cached_sam_checkpoint(model_type: str) -> Optional[Path]:
    """The official checkpoint of `model_type` in the download cache (``sam_vit_b_01ec64.pth``),
    if it is there: the core uses exactly that file when no checkpoint is given, so another
    ``sam_vit_b_*.pth`` there must not enable Start or Segment."""
    if model_type not in SAM_TYPES:
        return None
    path = checkpoint_cache() / SAM_CHECKPOINT_FILES[model_type]
    return path if path.is_file() else None


@dataclass(frozen=True)
class ModelInfo:
    """What the Segment tab shows about one model folder."""

    folder: Path
    name: str
    version: str
    description: str
    labels: Dict[str, int]          # label name -> value in the model's label maps, background = 0 included
    channel_names: Dict[str, str]   # "0" -> "CT", ...
    modality: str
    image_size: Optional[int]       # H = W of the network input
    num_slices: Optional[int]       # T adjacent slices per patch
    preset: Optional[str]
    random_init: bool               # trained on a random backbone (demo / test models)
    has_final_checkpoint: bool
    # A model trained on region labels: its regions. `labels` are then the values its label maps
    # hold (background and each region's value from regions_class_order), not the network's classes.
    regions: Optional[RegionScheme] = None
    sam_type: Optional[str] = None   # the SAM weights (vit_b, ...) its frozen backbone loads, unless random_init
    sam_sha256: Optional[str] = None  # exactly which: the official file's, or a fine-tuned SAM's of its own

    @property
    def names_by_value(self) -> Dict[int, str]:
        return {value: name for name, value in self.labels.items()}

    @property
    def structures(self) -> List[str]:
        """Label names without background, in label-value order; a region model's regions in
        the order they are painted."""
        if self.regions is not None:
            return list(self.regions.regions)
        return [name for name, value in sorted(self.labels.items(), key=lambda item: item[1]) if value != 0]

    @property
    def region_values(self) -> Optional[Dict[int, Tuple[int, ...]]]:
        """For a region model, each region's value in the label maps -> the values its voxels
        hold there (`segmentations.import_label_map`'s `regions`); None for other models."""
        if self.regions is None:
            return None
        return {value: self.regions.regions[name] for name, value in self.regions.output_labels.items() if value}

    @property
    def display_name(self) -> str:
        return f"{self.name} (v{self.version})"

    @property
    def input_size_text(self) -> str:
        if self.image_size is None or self.num_slices is None:
            return "unknown"
        return f"{self.num_slices} slices x {self.image_size} x {self.image_size} pixels"

    def summary(self) -> str:
        """Several lines for the model description label."""
        channels = ", ".join(self.channel_names[key] for key in sorted(self.channel_names, key=int))
        lines = [
            f"{'Regions' if self.regions is not None else 'Structures'} ({len(self.structures)}): "
            f"{', '.join(self.structures)}",
            f"Modality: {self.modality} (input channels: {channels})",
            f"Network input: {self.input_size_text}" + (f", preset {self.preset}" if self.preset else ""),
        ]
        if self.random_init:
            lines.append("Trained without SAM weights (random backbone): for tests and demos only.")
        if not self.has_final_checkpoint:
            lines.append(f"Not usable yet: {FINAL_CHECKPOINT} is missing (is training finished?)")
        if self.description:
            lines.append(self.description)
        return "\n".join(lines)


def read_model_info(folder: "os.PathLike[str] | str") -> ModelInfo:
    """Read and check a model folder's model.json as the command line does (`read_model_json`),
    so that the list never offers a model the segmentation then refuses; `ModelFolderError`
    with the command line's one line otherwise."""
    folder = Path(folder)
    meta = read_model_json(folder)
    labels = {str(name): int(value) for name, value in meta["labels"].items()}
    regions = RegionScheme.from_dict(meta["regions"]) if meta.get("regions") else None
    network = meta["network"]
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    sam = meta["sam"]
    channel_names = {str(k): str(v) for k, v in meta["channel_names"].items()}
    return ModelInfo(
        folder=folder,
        name=str(meta.get("name") or folder.name),
        version=str(meta.get("version", "1")),
        description=str(meta.get("description", "")),
        labels=regions.output_labels if regions is not None else labels,
        channel_names=channel_names,
        modality=str(meta.get("modality") or channel_names.get("0", "unknown")),
        image_size=_int_or_none(network.get("image_size")),
        num_slices=_int_or_none(network.get("num_slices")),
        preset=training.get("preset"),
        random_init=bool(sam.get("random_init", sam.get("sha256") is None)),   # as the core judges it
        has_final_checkpoint=(folder / FINAL_CHECKPOINT).is_file(),
        regions=regions,
        sam_type=str(sam["model_type"]) if sam.get("model_type") else None,
        sam_sha256=str(sam["sha256"]) if sam.get("sha256") else None,
    )


def _int_or_none(value) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def find_models(root: Optional["os.PathLike[str] | str"] = None) -> Tuple[List[ModelInfo], List[str]]:
    """Models installed under `root` (default: the models folder), sorted by name, and one
    line per sub-folder that is not a valid model (shown in the log, not fatal)."""
    root = Path(root) if root is not None else models_folder()
    models: List[ModelInfo] = []
    problems: List[str] = []
    if not root.is_dir():
        return models, problems
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            models.append(read_model_info(folder))
        except ModelFolderError as exc:
            problems.append(str(exc))
    models.sort(key=lambda info: (info.name.lower(), info.version))
    return models, problems


def install_folder_name(info: ModelInfo) -> str:
    """Sub-folder name for an installed model: its name and version, file-system safe.

    Letters and digits of any script stay (`\\w` is Unicode-aware), so models named in Japanese
    or Russian get folders of their own instead of all sharing "v1"."""
    slug = re.sub(r"[^\w.-]+", "-", f"{info.name}-v{info.version}").strip("-.")
    return slug or "model"


def install_model_folder(source: "os.PathLike[str] | str", root: Optional["os.PathLike[str] | str"] = None,
                         replace: bool = False, version: Optional[str] = None) -> ModelInfo:
    """Copy a model folder into the models folder after checking it; returns the installed model.

    The copy is made in a hidden sibling and renamed into place, so an interrupted install
    never leaves a half-copied model that the list would show. Refuses to overwrite an
    installed model of the same name and version unless `replace`. `version` installs the
    copy under another version than its model.json's (the copy's model.json says so).
    """
    info = read_model_info(source)
    if not info.has_final_checkpoint:
        raise ModelFolderError(f"{describe_path(info.folder)} has no {FINAL_CHECKPOINT} (is training finished?)")
    root = Path(root) if root is not None else models_folder()
    target = root / install_folder_name(replaced(info, version=version or info.version))
    if Path(source).resolve() == target.resolve():
        # Already installed here: described by its folder as `find_models` lists it, not in the
        # form the user gave (through a link, with '..'), so the widget can select it in the list.
        return read_model_info(target)
    if target.exists() and not replace:
        # Name the model that is there (the widget asks "Replace it?"): two names may share a folder.
        raise ModelAlreadyInstalled(f"a model named '{_installed_display_name(target, info)}' is already "
                                    f"installed in {describe_path(target)}")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=root))
    try:
        shutil.copytree(info.folder, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*NOT_INSTALLED))
        if version is not None and version != info.version:
            meta = json.loads((staging / MODEL_JSON).read_text(encoding="utf-8"))
            meta["version"] = version
            write_json(staging / MODEL_JSON, meta)
        (staging / INSTALLED_FROM).write_text(str(Path(source).resolve()), encoding="utf-8")
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=root))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return read_model_info(target)


def install_trained_model(source: "os.PathLike[str] | str",
                          root: Optional["os.PathLike[str] | str"] = None) -> ModelInfo:
    """Install the model a training has just finished. It replaces the copy that an earlier run
    of the same training folder installed (a resumed or repeated training), never a model
    installed from elsewhere: that one stays, and the new model gets the next free version."""
    info = read_model_info(source)
    root = Path(root) if root is not None else models_folder()
    origin = str(Path(source).resolve())
    number = int(info.version) if info.version.isdigit() else 1
    while True:
        target = root / install_folder_name(replaced(info, version=str(number)))
        if not target.exists() or _installed_from(target) == origin:
            break
        number += 1
    return install_model_folder(source, root, replace=True, version=str(number))


def _installed_display_name(folder: Path, fallback: ModelInfo) -> str:
    try:
        return read_model_info(folder).display_name
    except ModelFolderError:
        return fallback.display_name


def _installed_from(folder: Path) -> Optional[str]:
    try:
        return (folder / INSTALLED_FROM).read_text(encoding="utf-8").strip()
    except OSError:
        return None
