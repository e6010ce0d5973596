"""Where MaskSAM keeps downloaded SAM checkpoints and installed models.

`MASKSAM_HOME` overrides everything; otherwise the platform's user cache folder is used
(``$XDG_CACHE_HOME/masksam`` or ``~/.cache/masksam`` on Linux, ``~/Library/Caches/masksam`` on
macOS, ``%LOCALAPPDATA%\\masksam`` on Windows).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Iterable

from MaskSAMCore.errors import MaskSAMError


def masksam_home() -> Path:
    """The root cache folder (not created here)."""
    explicit = os.environ.get("MASKSAM_HOME")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        # An empty XDG_CACHE_HOME counts as unset (the XDG spec), not as the working folder.
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "masksam"


def environment_flag(name: str) -> bool:
    """Whether the environment variable `name` switches something on: unset, empty, 0, false,
    no and off (any case) are off; anything else is on."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def environment_number(name: str, default: float, meaning: str, maximum: float = math.inf) -> float:
    """The number above 0 and at most `maximum` in the environment variable `name` (unset or
    empty: `default`). Anything else ("16GB", "0") is a `MaskSAMError` naming the variable and
    what it means, not a traceback."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= maximum):
        largest = "" if math.isinf(maximum) else f" and at most {maximum:g}"
        raise MaskSAMError(f"{name}={text!r} is not {meaning}: give a number above 0{largest}, or unset it for "
                           f"the default {default:g}")
    return value


# The official SAM checkpoints' file names, here rather than beside their URLs and hashes in
# `model.sam_checkpoints` so that the Slicer module can look for them without importing torch.
SAM_CHECKPOINT_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


def checkpoint_cache() -> Path:
    """Folder holding official SAM checkpoints, one file per model type."""
    return masksam_home() / "sam_checkpoints"


def models_folder() -> Path:
    """Folder where trained/imported MaskSAM model folders are installed (one sub-folder each)."""
    return masksam_home() / "models"


def check_can_create(path: "os.PathLike[str] | str", what: str = "output") -> None:
    """Raise `InputError` now, before any long work, if MaskSAM could not write `path` (a folder
    to create or write into, or a file to create): a part of the path is a file, or the folder the
    writing happens in is not writable. Whether an existing `path` may be reused is the caller's
    rule."""
    from MaskSAMCore.errors import InputError, describe_path

    target = Path(path).absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    written_in = existing if existing.is_dir() else existing.parent
    if existing != target and not existing.is_dir():
        raise InputError(f"{describe_path(target)}: cannot create the {what}: {describe_path(existing)} is a file, "
                         "not a folder")
    if _read_only_file_system(written_in):
        raise InputError(f"{describe_path(target)}: cannot write the {what}: {describe_path(written_in)} is on a "
                         "read-only file system; choose a folder on a writable disk")
    if not os.access(written_in, os.W_OK | os.X_OK):
        raise InputError(f"{describe_path(target)}: cannot write the {what}: no permission to write in "
                         f"{describe_path(written_in)}")


def _read_only_file_system(folder: Path) -> bool:
    """Whether `folder` is on a file system mounted read-only (a DVD, a snapshot, a read-only
    share): there "no permission" would send the user to change permissions in vain."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):   # (no statvfs on Windows)
        return False


def check_output_file(path: "os.PathLike[str] | str", inputs: "Iterable[os.PathLike[str] | str]" = (),
                      what: str = "output") -> None:
    """`check_can_create` for a file, before any work; also refuses a `path` that is a folder or
    is one of the files the command reads (``predict ct.nii.gz ct.nii.gz`` would replace the
    scan by its labels)."""
    from MaskSAMCore.errors import InputError, describe_path

    check_can_create(path, what)
    target = Path(path)
    if target.is_dir() or str(path).endswith(("/", os.sep)):
        raise InputError(f"{describe_path(target)}: is a folder; the {what} needs a file name")
    if not target.exists():
        return
    for source in inputs:
        try:
            same = os.path.samefile(target, source)
        except OSError:
            continue
        if same:
            raise InputError(f"{describe_path(target)}: the {what} would overwrite an input file; choose another name")
