"""The folder of preprocessed cases: file names, and reading them back (memory-mapped).

For each case ``NAME`` the folder holds

- ``NAME.npy``      data (C, T', H', W') float32, normalised, on the network's grid;
- ``NAME_seg.npy``  labels (T', H', W') int16;
- ``NAME_locations.npy``  (M, 4) int32 rows (class, t, h, w): a random sample of up to 1000
                    voxels of each foreground class, for foreground oversampling;
- ``NAME.json``     properties (see `preprocessing.preprocess_case`) plus ``plan_hash`` and
                    ``sources`` (size and modification time of the raw files).

The JSON is written last, so a case counts as present only once all four files are complete, and
removed first when a case is written again, so that a rewrite stopped half-way never leaves the
old JSON vouching for arrays of another plan.
float32 rather than float16 on disk: training then sees exactly what inference computes, and
memory-mapped patches need no conversion; the cost is twice the disk space.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from MaskSAMCore.atomic import write_json, write_with
from MaskSAMCore.errors import InputError, describe_path


@dataclass
class PreprocessedCase:
    """One preprocessed case; `data` and `seg` are memory-mapped unless loaded otherwise."""

    name: str
    data: np.ndarray         # (C, T', H', W') float32
    seg: np.ndarray          # (T', H', W') int16
    properties: Dict[str, Any]
    locations: np.ndarray    # (M, 4) int32 rows (class, t, h, w)


SEG_SUFFIX = "_seg.npy"   # a case's labels: NAME_seg.npy
STORE_SUFFIXES = ("_seg", "_locations")   # what follows a case's name in its other files


def case_paths(folder: "os.PathLike[str] | str", name: str) -> Tuple[Path, Path, Path, Path]:
    """(data .npy, labels .npy, class locations .npy, properties .json) of case `name`."""
    folder = Path(folder)
    return (folder / f"{name}.npy", folder / f"{name}{SEG_SUFFIX}", folder / f"{name}{STORE_SUFFIXES[1]}.npy",
            folder / f"{name}.json")


def read_properties(folder: "os.PathLike[str] | str", name: str) -> Dict[str, Any]:
    path = case_paths(folder, name)[3]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{describe_path(path)}: preprocessed case '{name}' not found "
                         "(run preprocessing first)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{describe_path(path)}: cannot read preprocessed properties ({exc})") from None


def load_case(folder: "os.PathLike[str] | str", name: str, mmap: bool = True) -> PreprocessedCase:
    """Open a preprocessed case; with `mmap` the arrays are read lazily from disk."""
    data_path, seg_path, locations_path, _ = case_paths(folder, name)
    properties = read_properties(folder, name)
    mode = "r" if mmap else None
    data, seg = _load_npy(data_path, name, mode), _load_npy(seg_path, name, mode)
    return PreprocessedCase(name, data, seg, properties, _load_npy(locations_path, name, None))


def _load_npy(path: Path, name: str, mode: Optional[str]) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mode)
    except (OSError, ValueError) as exc:
        raise InputError(f"{describe_path(path)}: cannot read preprocessed case '{name}' ({exc}); train again "
                         "with --resume: the checks before it preprocess a damaged case anew") from None


def save_case(folder: "os.PathLike[str] | str", name: str, data: np.ndarray, seg: np.ndarray,
              locations: np.ndarray, properties: Dict[str, Any]) -> None:
    """Write one case atomically, file by file, the properties JSON last (see module docstring)."""
    data_path, seg_path, locations_path, json_path = case_paths(folder, name)
    json_path.unlink(missing_ok=True)
    write_with(data_path, lambda tmp: _save_npy(tmp, np.asarray(data, dtype=np.float32)))
    write_with(seg_path, lambda tmp: _save_npy(tmp, np.asarray(seg, dtype=np.int16)))
    write_with(locations_path, lambda tmp: _save_npy(tmp, np.asarray(locations, dtype=np.int32).reshape(-1, 4)))
    write_json(json_path, properties)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object, so np.save does not append ".npy"
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


