"""The bytes of a download that did not finish, kept for the next run to go on from.

A SAM checkpoint is 375 MB to 2.5 GB. A download cancelled (Ctrl-C, the Slicer module's Cancel)
or cut off for good should not start again from zero next time: its bytes stay in the cache
folder as ``NAME.partial`` (a visible name, so that a user short of space sees it and can delete
it), and the next download of that file asks only for the rest (`resumable_download`). The
SHA-256 of the finished file is checked as always, so a partial file from another source, or a
damaged one, costs one download more, never a wrong checkpoint. A process downloading into it
holds an exclusive lock on it (POSIX `flock`; Windows has none), so two downloads at once never
write into one file: the second is refused with one line.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from MaskSAMCore.errors import DownloadError, describe_path

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None  # type: ignore[assignment]

PARTIAL_SUFFIX = ".partial"


def partial_path(destination: Path) -> Path:
    """Where the unfinished download of `destination` is kept."""
    return destination.with_name(destination.name + PARTIAL_SUFFIX)


class PartialFile:
    """A partial file open for writing after its bytes, locked for this process."""

    def __init__(self, path: Path, handle) -> None:
        self.path = path
        self.handle = handle

    @property
    def size(self) -> int:
        if self.handle.closed:   # (Windows, after `install`)
            return self.path.stat().st_size if self.path.is_file() else 0
        self.handle.flush()
        return os.fstat(self.handle.fileno()).st_size

    def discard(self) -> None:
        """Empty it (a download that must start from zero, or a file that is not the one asked for)."""
        self.handle.seek(0)
        self.handle.truncate()

    def install(self, destination: Path) -> None:
        """Make the finished file `destination`. On POSIX it is renamed while still locked, so
        no other process can open it as a partial file in between; Windows renames no open file."""
        self.handle.flush()
        if os.name == "nt":
            self.handle.close()
        os.replace(self.path, destination)


@contextlib.contextmanager
def held_partial(path: Path) -> Iterator[PartialFile]:
    """`path` open for writing after the bytes it holds (created empty if missing) and locked.

    Raises `DownloadError` when another process holds it. On leaving, an empty file is removed
    (nothing worth keeping), a non-empty one is kept for the next run."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        handle = os.fdopen(descriptor, "r+b")
        if fcntl is None:
            break
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise DownloadError(f"{describe_path(path.with_suffix(''))} is being downloaded by another masksam "
                                "process; wait for it to end") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        handle.close()   # the other process finished and renamed the file we opened: open anew
    handle.seek(0, os.SEEK_END)
    partial = PartialFile(path, handle)
    try:
        yield partial
    finally:
        empty = not handle.closed and partial.size == 0
        if empty:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()   # while still locked: no one else writes into it meanwhile
        if not handle.closed:
            handle.close()
