"""Writing files so that a reader never sees half of one.

Every output of the project (checkpoints, label maps, JSON, CSV, cached arrays) is written to a
hidden temporary file in the destination folder and renamed over the destination only once
complete and flushed. `os.replace` is atomic on POSIX and Windows when source and destination
are on the same file system, which the same-folder temporary guarantees.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from MaskSAMCore.errors import Cancelled

TEMP_MARKER = ".partial-"
# A write that failed with this little space left on its file system failed for want of space.
LOW_SPACE_BYTES = 1 << 20


def file_type_suffix(name: str) -> str:
    """The ending a file's type is read from: ``.nii.gz`` (a compressed type keeps the type
    before ``.gz``), ``.nrrd``; "" for none. Only this, never everything after the first dot:
    NIfTI's writer drops one ``.nii.gz`` from ``x.nii.gz.nii.gz`` and writes ``x.nii.gz``."""
    suffixes = Path(name).suffixes
    if len(suffixes) > 1 and suffixes[-1].lower() == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def temporary_sibling(path: "os.PathLike[str] | str") -> Path:
    """A unique, hidden path next to `path` that keeps its file type suffix (SimpleITK picks
    the file format from it, so ``x.nii.gz`` gets ``.x.partial-abc.nii.gz``)."""
    path = Path(path)
    suffix = file_type_suffix(path.name)
    stem = path.name[:len(path.name) - len(suffix)]
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}{TEMP_MARKER}", suffix=suffix, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; outputs should get the permissions of any file the user makes.
    os.chmod(tmp, 0o666 & ~_current_umask())
    return Path(tmp)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: "os.PathLike[str] | str") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.

    >>> with atomic_path("out.nii.gz") as tmp:
    ...     sitk.WriteImage(image, str(tmp))
    """
    path = Path(path)
    with folders_made(path.parent):   # a failed write leaves no folder it made
        tmp = temporary_sibling(path)
        try:
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException as exc:
            full = disk_full(exc, path.parent)   # while the partial file still takes its space
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if full:
                raise no_space_error(path) from None
            raise


@contextlib.contextmanager
def atomic_path_with_companions(path: "os.PathLike[str] | str") -> Iterator[Path]:
    """`atomic_path` for formats that write more than one file: a detached header (``x.nhdr``
    beside ``x.raw.gz``, ``x.mhd`` beside ``x.zraw``) names its data file, so the two are written
    under their final names in a hidden temporary folder beside `path`. On success the data
    files are moved out first and `path` itself last: whoever finds the header finds its data."""
    path = Path(path)
    with folders_made(path.parent):   # a failed write leaves no folder it made
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_MARKER}", dir=path.parent))
        try:
            target = folder / path.name
            yield target
            for companion in sorted(folder.iterdir()):
                if companion != target:
                    _fsync_file(companion)
                    os.replace(companion, path.parent / companion.name)
            _fsync_file(target)
            os.replace(target, path)
        except BaseException as exc:
            if disk_full(exc, path.parent):
                raise no_space_error(path) from None
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write failed because the file system is full. Only Python's own writes
    say so (ENOSPC); NumPy ("19200 requested and 5088 written") and torch.save ("unexpected
    pos") report a short write without a reason, ITK's NRRD writer a failed gzip flush, and its
    NIfTI writer nothing at all (the file then does not read back, which image_io reports as an
    `InputError`), so the free space tells. A cancel is never taken for a full disk."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if not isinstance(exc, Exception) or isinstance(exc, Cancelled):
        return False
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


def no_space_error(path: Path) -> OSError:
    return OSError(errno.ENOSPC, "no space left on the device to write it; free some space and run again",
                   str(path))


def write_bytes(path: "os.PathLike[str] | str", data: bytes) -> None:
    """Atomically write `data` to `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: "os.PathLike[str] | str", text: str) -> None:
    """Atomically write `text` (UTF-8) to `path`."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: "os.PathLike[str] | str", data: Any) -> None:
    """Atomically write `data` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_with(path: "os.PathLike[str] | str", writer: Callable[[Path], None]) -> None:
    """Atomically create `path` by calling `writer(temporary_path)`."""
    with atomic_path(path) as tmp:
        writer(tmp)


@contextlib.contextmanager
def folders_made(folder: "os.PathLike[str] | str") -> Iterator[None]:
    """``mkdir -p folder`` for the block; when the block fails (Ctrl-C included), the folders it
    created are removed again, innermost first, if still empty: a failed first run leaves no
    empty folders behind."""
    missing = []
    # Resolved first: in "new/../existing/ds" the folder "new/../existing" does not exist (new
    # does not), but it is the user's existing folder, never to be removed.
    folder = Path(folder).resolve()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if missing:
        missing[0].mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for made in missing:
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


def remove_stale_temporaries(folder: "os.PathLike[str] | str") -> int:
    """Delete temporaries a killed process left in `folder`; returns how many were removed."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if not (entry.name.startswith(".") and TEMP_MARKER in entry.name):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)     # an `atomic_path_with_companions` folder
            else:
                entry.unlink()
            removed += 1
    return removed


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
