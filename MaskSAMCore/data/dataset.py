"""Datasets in nnU-Net v2 raw format, checked completely before any work starts.

A dataset folder holds ``dataset.json``, ``imagesTr/CASE_0000<ending>`` (one file per channel,
``_0000``, ``_0001``, ...), ``labelsTr/CASE<ending>`` and optionally ``imagesTs/`` (and
``labelsTs/``). `load_raw_dataset` reads dataset.json, pairs the files and then opens every
training image and label to check that they can be used together: one `DatasetError` line naming
the case and the problem otherwise, so a researcher learns about a broken case in seconds and not
after hours of preprocessing.

A ``numTraining`` in dataset.json that differs from the number of cases found is an error, as in
nnU-Net: it usually means files went missing or dataset.json is stale.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from MaskSAMCore.data.image_io import ImageGeometry, read_image, read_label
from MaskSAMCore.errors import DatasetError, InputError, describe_path
from MaskSAMCore.progress import Progress

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class RawCase:
    """One case: its channel files in channel order and its label map (None for unlabelled test cases)."""

    name: str
    image_files: Tuple[Path, ...]
    label_file: Optional[Path]


@dataclass
class RawDataset:
    """A validated nnU-Net v2 raw dataset."""

    root: Path
    name: str
    labels: Dict[str, int]                 # name -> value, ordered by value, background = 0
    channel_names: Dict[str, str]          # "0" -> "CT", ...
    file_ending: str
    num_training: int
    training_cases: List[RawCase]
    test_cases: List[RawCase] = field(default_factory=list)
    geometries: Dict[str, ImageGeometry] = field(default_factory=dict)  # per training case, when checked
    metadata: Dict[str, object] = field(default_factory=dict)           # dataset.json as read

    @property
    def class_names(self) -> List[str]:
        """Names in label-value order: class_names[v] is the name of label value v."""
        return list(self.labels)

    @property
    def num_classes(self) -> int:
        """K, background included."""
        return len(self.labels)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def channel_list(self) -> List[str]:
        """Channel names in channel order."""
        return [self.channel_names[str(i)] for i in range(self.num_channels)]

    @property
    def modality(self) -> str:
        """"CT" when every channel is CT, else the channel names joined by '+' (e.g. "T2+ADC")."""
        names = [("CT" if n.strip().lower() == "ct" else n.strip()) for n in self.channel_list]
        unique = list(dict.fromkeys(names))
        return "+".join(unique)

    def case(self, name: str) -> RawCase:
        for case in self.training_cases:
            if case.name == name:
                return case
        raise KeyError(name)


def load_raw_dataset(root: "os.PathLike[str] | str", check_images: bool = True,
                     progress: bool = True) -> RawDataset:
    """Read and validate a dataset folder. With `check_images` every training image and label
    is opened (see the module docstring for what is checked); raises `DatasetError`."""
    root = Path(root)
    if root.is_file():
        hint = f"; give its folder, {describe_path(root.parent)}" if root.name == "dataset.json" else ""
        raise DatasetError(f"{describe_path(root)}: is a file, not a dataset folder{hint}")
    if not root.is_dir():
        raise DatasetError(f"{describe_path(root)}: dataset folder not found")
    meta = _read_dataset_json(root)
    labels = _parse_labels(meta, root)
    channel_names = _parse_channel_names(meta, root)
    file_ending = _parse_file_ending(meta, root)
    num_training = meta["numTraining"]
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
        raise DatasetError(f"{_json_where(root)}: numTraining must be a whole number, not {num_training!r}")

    training = _find_cases(root, "imagesTr", "labelsTr", file_ending, len(channel_names), labels_required=True)
    if not training:
        raise DatasetError(f"{describe_path(root)}: no training cases in imagesTr "
                           f"(expected files named CASE_0000{file_ending}){_ending_hint(root / 'imagesTr', file_ending)}")
    if num_training != len(training):
        raise DatasetError(f"{_json_where(root)}: numTraining is {num_training} but imagesTr holds "
                           f"{len(training)} case(s); fix numTraining or add the missing cases")
    test = []
    if (root / "imagesTs").is_dir():
        test = _find_cases(root, "imagesTs", "labelsTs", file_ending, len(channel_names), labels_required=False)

    dataset = RawDataset(
        root=root, name=str(meta.get("name") or root.name), labels=labels, channel_names=channel_names,
        file_ending=file_ending, num_training=num_training, training_cases=training, test_cases=test,
        metadata=meta,
    )
    if check_images:
        check_case_files(dataset, progress=progress)
    return dataset


def check_case_files(dataset: RawDataset, progress: bool = True) -> None:
    """Open every training case and check images and labels (see module docstring); fills
    `dataset.geometries`. Raises `DatasetError` for the first broken case."""
    allowed = set(dataset.labels.values())
    bar = Progress("check dataset", total=len(dataset.training_cases), unit="case", enabled=progress)
    for case in dataset.training_cases:
        dataset.geometries[case.name] = _check_case(dataset.root, case, allowed)
        bar.advance()
    bar.close()


# -- dataset.json -------------------------------------------------------------------------------

def _json_where(root: Path) -> str:
    return describe_path(root / "dataset.json")


def _read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{describe_path(root)}: no dataset.json (a dataset in nnU-Net v2 raw format needs "
                           "dataset.json, imagesTr/ and labelsTr/)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{describe_path(path)}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{describe_path(path)}: cannot be read ({exc})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{describe_path(path)}: must hold a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise DatasetError(f"{describe_path(path)}: missing key(s) {', '.join(missing)}")
    return meta


def _parse_labels(meta: dict, root: Path) -> Dict[str, int]:
    where = _json_where(root)
    raw = meta["labels"]
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{where}: 'labels' must be an object like {{\"background\": 0, \"liver\": 1}}")
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise DatasetError(f"{where}: label '{name}' is a region (list of values); region-based "
                               "training is not supported")
        if isinstance(value, bool) or not isinstance(value, int):
            raise DatasetError(f"{where}: label '{name}' has value {value!r}; label values must be whole numbers")
    if "ignore" in raw:
        # nnU-Net v2 reserves this name for voxels left unannotated; taken as a class it would be
        # learnt and predicted as an organ called "ignore", so it is refused rather than misread.
        raise DatasetError(f"{where}: label 'ignore' (nnU-Net's label for unannotated voxels) is not "
                           "supported; MaskSAM trains on fully annotated cases: give those voxels a "
                           "class or background and remove 'ignore' from labels")
    by_value = sorted(raw.items(), key=lambda item: item[1])
    values = [value for _, value in by_value]
    if len(set(values)) != len(values):
        raise DatasetError(f"{where}: two labels share a value ({values})")
    if raw.get("background") != 0:
        raise DatasetError(f"{where}: labels must name value 0 'background' (got background = "
                           f"{raw.get('background')!r})")
    if values != list(range(len(values))):
        raise DatasetError(f"{where}: label values must be consecutive 0..{len(values) - 1}, got {values}")
    if len(values) < 2:
        raise DatasetError(f"{where}: labels need at least one structure besides background")
    return dict(by_value)


def _parse_channel_names(meta: dict, root: Path) -> Dict[str, str]:
    where = _json_where(root)
    raw = meta["channel_names"]
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{where}: 'channel_names' must be an object like {{\"0\": \"CT\"}}")
    keys = sorted(raw, key=lambda k: int(k) if str(k).isdigit() else -1)
    if keys != [str(i) for i in range(len(raw))]:
        raise DatasetError(f"{where}: channel_names keys must be \"0\"..\"{len(raw) - 1}\", got {list(raw)}")
    names = {key: raw[key] for key in keys}
    if not all(isinstance(name, str) and name.strip() for name in names.values()):
        raise DatasetError(f"{where}: every channel needs a name (e.g. \"CT\", \"T2\")")
    return names


def _parse_file_ending(meta: dict, root: Path) -> str:
    ending = meta["file_ending"]
    if not isinstance(ending, str) or not ending.startswith(".") or len(ending) < 2:
        raise DatasetError(f"{_json_where(root)}: file_ending must look like \".nii.gz\", not {ending!r}")
    return ending


# -- finding the files ---------------------------------------------------------------------------

def _find_cases(root: Path, images_dir: str, labels_dir: str, ending: str, num_channels: int,
                labels_required: bool) -> List[RawCase]:
    images = root / images_dir
    if not images.is_dir():
        if labels_required:
            raise DatasetError(f"{describe_path(root)}: no {images_dir}/ folder")
        return []
    channels: Dict[str, Dict[int, Path]] = {}
    for path in sorted(images.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending) or not path.is_file():
            continue  # hidden files, temporaries and unrelated files (README, ...) are not cases
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            raise DatasetError(f"{describe_path(root)}: {images_dir}/{path.name} does not end in a channel "
                               f"number (expected CASE_0000{ending})")
        channels.setdefault(match["case"], {})[int(match["channel"])] = path

    cases = []
    for name in sorted(channels):
        files = channels[name]
        for index in range(num_channels):
            if index not in files:
                raise DatasetError(f"{describe_path(root)}: case '{name}': missing channel file "
                                   f"{images_dir}/{name}_{index:04d}{ending}")
        extra = sorted(set(files) - set(range(num_channels)))
        if extra:
            raise DatasetError(f"{describe_path(root)}: case '{name}': unexpected channel file "
                               f"{images_dir}/{files[extra[0]].name} (dataset.json declares {num_channels} "
                               f"channel(s))")
        label = root / labels_dir / f"{name}{ending}"
        if not label.is_file():
            if labels_required:
                raise DatasetError(f"{describe_path(root)}: case '{name}': missing label file {labels_dir}/{label.name}")
            label = None
        cases.append(RawCase(name, tuple(files[i] for i in range(num_channels)), label))

    if labels_required and (root / labels_dir).is_dir():
        for path in sorted((root / labels_dir).iterdir()):
            if path.name.startswith(".") or not path.name.endswith(ending):
                continue
            name = path.name[: -len(ending)]
            if name not in channels:
                raise DatasetError(f"{describe_path(root)}: case '{name}': {labels_dir}/{path.name} has no "
                                   f"image files in {images_dir}/ (expected {name}_0000{ending})")
    return cases


def _ending_hint(folder: Path, ending: str) -> str:
    """A hint when the folder holds images with another ending than dataset.json says."""
    if not folder.is_dir():
        return ""
    others = sorted({"".join(p.suffixes) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")})
    others = [o for o in others if o and o != ending]
    if others:
        return f"; found files ending in {', '.join(others[:3])} - is file_ending in dataset.json right?"
    return ""


# -- checking the content --------------------------------------------------------------------------

def _check_case(root: Path, case: RawCase, allowed: set) -> ImageGeometry:
    """Open one case's files; returns the grid of its image."""
    prefix = f"{describe_path(root)}: case '{case.name}'"

    def short(path: Path) -> str:
        return os.path.relpath(path, root)

    reference: Optional[ImageGeometry] = None
    for index, path in enumerate(case.image_files):
        try:
            _, geometry = read_image(path)
        except InputError as exc:
            raise DatasetError(f"{prefix}: {_relative_message(exc, path, short(path))}") from None
        if reference is None:
            reference = geometry
            continue
        differences = reference.grid_differences(geometry)
        if differences:
            raise DatasetError(f"{prefix}: channel {index:04d} ({short(path)}) is not on the grid of channel 0000: "
                               f"{_difference_text(differences, geometry, reference)}")
    assert reference is not None and case.label_file is not None
    try:
        label, label_geometry = read_label(case.label_file)
    except InputError as exc:
        raise DatasetError(f"{prefix}: {_relative_message(exc, case.label_file, short(case.label_file))}") from None
    differences = reference.grid_differences(label_geometry)
    if differences:
        raise DatasetError(f"{prefix}: label {short(case.label_file)} is not on the image's grid: "
                           f"{_difference_text(differences, label_geometry, reference)}")
    undeclared = sorted(set(np.unique(label).tolist()) - allowed)
    if undeclared:
        shown = ", ".join(map(str, undeclared[:5])) + (", ..." if len(undeclared) > 5 else "")
        raise DatasetError(f"{prefix}: label {short(case.label_file)} has value(s) {shown} not declared in "
                           f"dataset.json labels (0..{max(allowed)})")
    return reference


def _relative_message(exc: InputError, path: Path, short: str) -> str:
    return str(exc).replace(describe_path(path), short)


def _difference_text(differences: List[str], this: ImageGeometry, reference: ImageGeometry) -> str:
    parts = []
    for name in differences:
        mine, theirs = getattr(this, name), getattr(reference, name)
        if name == "direction":
            parts.append("direction differs")
        else:
            fmt = (lambda v: "x".join(f"{x:.6g}" for x in v))
            parts.append(f"{name} {fmt(mine)} vs {fmt(theirs)}")
    return "; ".join(parts)
