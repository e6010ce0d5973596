"""Paths the user types into the module's folder and file fields.

A field accepts any text, and a relative path such as ``mymodel`` would be resolved against
Slicer's working folder, which is wherever Slicer was started from (often its install folder,
maybe not writable, never where the user looks). So only full paths are accepted; the Browse
buttons always give one.
"""

from __future__ import annotations

from pathlib import Path
from typing import List


def full_path_problems(text: str, what: str) -> List[str]:
    """One sentence when `text` is not a full path for `what` (the dataset folder, ...), else none.
    An empty `text` is the caller's problem ("choose a folder"), not this one's."""
    if not text or Path(text).is_absolute():
        return []
    return [f"'{text}' is not a full path: choose a full path for the {what} (a relative one would be "
            "read from Slicer's working folder)."]
