"""A Segment job's private temporary folder, and the clean-up of those a crash left behind.

The folder holds a copy of the patient's scan. Its job removes it when it ends, whatever the
outcome; but when Slicer itself dies (a crash, a kill, a power cut) nothing is left to remove it,
and the copy would stay in the temporary folder for good. So a job holds its folder with an
`flock` on the folder itself, which the system releases when the process ends however it ends,
and each new job first removes the folders no living process holds. Where `fcntl` is missing
(Windows) folders are not held, and so never removed by another job: one may be in use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None  # type: ignore[assignment]

JOB_FOLDER_PREFIX = "masksam-segment-"
KEPT_MARKER = "kept-for-debugging"   # in a folder kept on purpose (`keep_files`): never removed by others
# A folder younger than this is left alone: it may be one another Slicer has made and not yet held.
GRACE_S = 60.0


class JobFolder:
    """A new private folder under `parent` (default: the system's temporary folder), held while
    this object has it; `remove()` deletes it, `keep()` leaves it (and its files) for debugging."""

    def __init__(self, parent: Optional[str] = None) -> None:
        remove_abandoned_job_folders(parent)
        self.path = Path(tempfile.mkdtemp(prefix=JOB_FOLDER_PREFIX, dir=parent))
        self._descriptor: Optional[int] = _hold(self.path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def keep(self) -> None:
        (self.path / KEPT_MARKER).touch()
        self._release()

    def _release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)   # closing releases the lock
            self._descriptor = None


def remove_abandoned_job_folders(parent: Optional[str] = None) -> None:
    """Remove the job folders under `parent` that no process holds (their Slicer died mid-job)."""
    if fcntl is None:
        return
    for folder in Path(parent or tempfile.gettempdir()).glob(f"{JOB_FOLDER_PREFIX}*"):
        try:
            if (not folder.is_dir() or (folder / KEPT_MARKER).exists()
                    or time.time() - folder.stat().st_mtime < GRACE_S):
                continue
        except OSError:
            continue   # removed meanwhile
        try:
            descriptor = _hold(folder)
        except OSError:
            continue   # held: a job of a living Slicer (this one or another)
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            if descriptor is not None:
                os.close(descriptor)


def _hold(folder: Path) -> Optional[int]:
    """An open descriptor of `folder` with an exclusive lock on it (None without `fcntl`);
    OSError when another process holds it."""
    if fcntl is None:
        return None
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor
