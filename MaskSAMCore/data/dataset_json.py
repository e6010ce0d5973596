"""dataset.json of an nnU-Net v2 raw dataset: read, and every field checked, with one
`DatasetError` line naming the file and the field otherwise.

Beyond nnU-Net's own checks: a key given twice in one object is refused (JSON would keep the
last), a byte order mark is accepted (Windows editors write one) and nnU-Net v1 files get the
steps to v2.

Region labels (lists of values, with ``regions_class_order``; BraTS-like datasets) are read by
`regions.py`: the classes are then the groups of values that belong to the same regions.

nnU-Net v2's ``ignore`` label (voxels left unannotated, for sparsely annotated datasets) is not a
class: it must be the highest value, one above the last class (nnU-Net's rule), and is returned
apart from the classes, which stay 0..K-1 (the network predicts K classes, never "ignore").
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from MaskSAMCore.data.regions import REGION_ORDER_KEY, RegionError, RegionScheme, is_region_dataset, region_scheme
from MaskSAMCore.errors import DatasetError, describe_path

DATASET_JSON = "dataset.json"
IGNORE_LABEL = "ignore"   # nnU-Net v2's name for the label of unannotated voxels
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


@dataclass(frozen=True)
class DatasetDescription:
    """What dataset.json says, checked."""

    labels: Dict[str, int]          # class name -> value, ordered by value, background = 0
    ignore_label: Optional[int]     # the value of unannotated voxels (nnU-Net's "ignore"), or None
    regions: Optional[RegionScheme]  # region labels, or None: then a class's value is its label value
    channel_names: Dict[str, str]   # "0" -> "CT", ...
    file_ending: str                # ".nii.gz", ...
    num_training: int
    metadata: Dict[str, Any]        # the whole file as read


def read_dataset_json(root: Path) -> DatasetDescription:
    """The checked dataset.json of the dataset folder `root`; raises `DatasetError`."""
    meta = _read_dataset_json(root)
    num_training = meta["numTraining"]
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
        raise DatasetError(f"{_json_where(root)}: numTraining must be a whole number, not {num_training!r}")
    if isinstance(meta["labels"], dict) and is_region_dataset(meta["labels"]):
        try:
            regions: Optional[RegionScheme] = region_scheme(meta["labels"], meta.get(REGION_ORDER_KEY))
        except RegionError as exc:
            raise DatasetError(f"{_json_where(root)}: {exc}") from None
        labels, ignore_label = regions.class_labels, regions.ignore_value
    else:
        regions = None
        labels, ignore_label = _parse_labels(meta, root)
    return DatasetDescription(labels=labels, ignore_label=ignore_label, regions=regions,
                              channel_names=_parse_channel_names(meta, root),
                              file_ending=_parse_file_ending(meta, root), num_training=num_training,
                              metadata=meta)


def _json_where(root: Path) -> str:
    return describe_path(root / DATASET_JSON)


def read_dataset_meta(path_or_root: "os.PathLike[str] | str") -> Dict[str, Any]:
    """dataset.json as read, its fields unchecked (`read_dataset_json` checks them): the one reader
    of the file, so that every command and the Slicer module accept and refuse the same files.

    `path_or_root` is the file or the dataset folder holding it. A byte order mark is accepted
    (Windows editors, Notepad and PowerShell, start UTF-8 files with one); a key given twice in one
    object, a file that is not JSON or not a JSON object raise `DatasetError`."""
    path = Path(path_or_root)
    if path.is_dir():
        path = path / DATASET_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"),
                          object_pairs_hook=lambda pairs: _object_without_duplicates(pairs, path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{describe_path(path)}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{describe_path(path)}: cannot be read ({exc})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{describe_path(path)}: must hold a JSON object")
    return meta


def _read_dataset_json(root: Path) -> Dict[str, Any]:
    """dataset.json of the dataset folder `root`, with every key nnU-Net v2 requires."""
    path = root / DATASET_JSON
    if not path.is_file():
        raise DatasetError(f"{describe_path(root)}: no dataset.json (a dataset in nnU-Net v2 raw format needs "
                           "dataset.json, imagesTr/ and labelsTr/)")
    meta = read_dataset_meta(path)
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise DatasetError(f"{describe_path(path)}: missing key(s) {', '.join(missing)}{_v1_hint(meta)}")
    return meta


def _object_without_duplicates(pairs: List[Tuple[str, Any]], path: Path) -> Dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice: `json` would silently keep the last
    one (two labels named alike would lose one of them without a word)."""
    result = dict(pairs)
    if len(result) < len(pairs):
        twice = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise DatasetError(f"{describe_path(path)}: key '{twice}' appears twice in one object (JSON keeps "
                           "only the last one); rename or remove one of them")
    return result


def _v1_hint(meta: dict) -> str:
    """How to turn nnU-Net v1's dataset.json (``modality``, labels value -> name) into v2's."""
    if "modality" not in meta or "channel_names" in meta:
        return ""
    steps = ["rename 'modality' to 'channel_names'"]
    if isinstance(meta.get("labels"), dict) and all(str(key).isdigit() for key in meta["labels"]):
        steps.append("write 'labels' as name -> value ({\"background\": 0, ...})")
    if "file_ending" not in meta:
        steps.append("add \"file_ending\": \".nii.gz\"")
    return (f"; this is nnU-Net v1's dataset.json: {', '.join(steps)} "
            "(nnUNetv2_convert_old_nnUNet_dataset converts a whole v1 dataset)")


def _parse_labels(meta: dict, root: Path) -> Tuple[Dict[str, int], Optional[int]]:
    """(class name -> value ordered by value, the ignore label's value or None)."""
    where = _json_where(root)
    raw = meta["labels"]
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{where}: 'labels' must be an object like {{\"background\": 0, \"liver\": 1}}")
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise DatasetError(f"{where}: label '{name}' has value {value!r}; label values must be whole numbers")
        if not name.strip():
            raise DatasetError(f"{where}: label value {value} has an empty name; every label needs one "
                               "(it names the segment and the output class)")
    ignore_label = raw.get(IGNORE_LABEL)
    if ignore_label is not None:
        highest = max((value for name, value in raw.items() if name != IGNORE_LABEL), default=-1)
        if ignore_label != highest + 1:
            raise DatasetError(f"{where}: label 'ignore' (unannotated voxels) must have the highest value, "
                               f"one above the last class ({highest + 1}), not {ignore_label}")
        raw = {name: value for name, value in raw.items() if name != IGNORE_LABEL}
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
    return dict(by_value), ignore_label


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
