"""One training per model folder at a time.

Two `masksam train` runs in one folder (a cluster job submitted twice, a --resume while the
first run still goes) would overwrite each other's checkpoints and log. The main process holds
an exclusive `flock` on the folder itself while it trains: the lock needs no file (nothing to
clean up after a crash) and the system releases it when the process ends, however it ends.
Where `fcntl` is missing (Windows), runs are not locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from MaskSAMCore.errors import MaskSAMError, describe_path

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def training_lock(model_dir: Path) -> Iterator[None]:
    """Hold `model_dir` (which must exist) for this process; `MaskSAMError` if another has it."""
    if fcntl is None:
        yield
        return
    descriptor = os.open(model_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise running_elsewhere(model_dir) from None
        yield
    finally:
        os.close(descriptor)   # closing releases the lock


def check_not_running(model_dir: Path) -> None:
    """`MaskSAMError` when another process trains in `model_dir` now. Asked before judging the
    folder's content: a training still in its first epoch has no checkpoint yet, and must not
    be called "stopped" (nor its files be cleared by a second run)."""
    if fcntl is None or not model_dir.is_dir():
        return
    with training_lock(model_dir):
        pass


def running_elsewhere(model_dir: Path) -> MaskSAMError:
    return MaskSAMError(f"{describe_path(model_dir)}: another masksam train is running in this folder; "
                        "wait for it to end (or stop it) before starting or resuming one here")
