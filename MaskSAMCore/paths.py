"""Where MaskSAM keeps downloaded SAM checkpoints and installed models.

`MASKSAM_HOME` overrides everything; otherwise the platform's user cache folder is used
(``$XDG_CACHE_HOME/masksam`` or ``~/.cache/masksam`` on Linux, ``~/Library/Caches/masksam`` on
macOS, ``%LOCALAPPDATA%\\masksam`` on Windows).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def masksam_home() -> Path:
    """The root cache folder (not created here)."""
    explicit = os.environ.get("MASKSAM_HOME")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "masksam"


def checkpoint_cache() -> Path:
    """Folder holding official SAM checkpoints, one file per model type."""
    return masksam_home() / "sam_checkpoints"


def models_folder() -> Path:
    """Folder where trained/imported MaskSAM model folders are installed (one sub-folder each)."""
    return masksam_home() / "models"
