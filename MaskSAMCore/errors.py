"""Errors a user can fix, reported as one line by the command line.

Every problem with the user's input (a file, a folder, an argument, a checkpoint) raises a
subclass of `MaskSAMError` whose message names the file and the problem in one sentence. The
CLI prints it as ``masksam: error: <message>`` and exits with status 1; programming errors are
not caught and keep their traceback.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Sequence


class MaskSAMError(Exception):
    """A problem with the user's input; `str(error)` is the one-line message."""


class InputError(MaskSAMError):
    """An input file or folder is missing, unreadable or invalid."""


class DatasetError(InputError):
    """A dataset in nnU-Net raw format is incomplete or inconsistent."""


class CheckpointError(MaskSAMError):
    """A checkpoint is missing, corrupt, unsafe, or for another model."""


class ModelFolderError(MaskSAMError):
    """A model folder is missing files or does not describe a MaskSAM model."""


class ModelAlreadyInstalled(ModelFolderError):
    """The models folder already holds a model of that name and version: the Slicer module asks
    whether to replace it (by this type, not by the words of the message)."""


class DownloadError(MaskSAMError):
    """A download failed or its content did not match the expected checksum."""


class RankFailed(MaskSAMError):
    """Under torchrun, another rank failed in work it did for all ranks (planning, preprocessing,
    validation); that rank prints its own error, so rank 0 relays it once and the others say nothing."""


class Cancelled(MaskSAMError):
    """The user cancelled a running job (Ctrl-C, SIGTERM or a cancel callback).

    reported: the cancellation was already announced (by a step the command ran), so the
    command line only exits with status 130 and prints nothing more."""

    def __init__(self, message: str = "cancelled", reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported


def message_lines(error: BaseException) -> List[str]:
    """The non-empty lines of an exception's message, stripped: SimpleITK, pydicom and torch
    write messages over several lines, of which a one-line report keeps one or joins them."""
    return [line.strip() for line in str(error).splitlines() if line.strip()]


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its class name when the message is empty)."""
    lines = message_lines(error)
    return lines[0] if lines else type(error).__name__


def last_line(error: BaseException) -> str:
    """The last line of an exception's message (its class name when the message is empty): where
    SimpleITK and ITK put the reason, after lines naming their own source files."""
    lines = message_lines(error)
    return lines[-1] if lines else type(error).__name__


def mib(size_bytes: int) -> str:
    """``12.3 MiB``: a size in a message (a download's progress, a partial file kept)."""
    return f"{size_bytes / (1 << 20):.1f} MiB"


def shorten(text: str, limit: int = 160) -> str:
    """`text` cut to at most `limit` characters for a one-line message: at the end of a sentence
    where one ends in the second half, else at a word, never inside one."""
    if len(text) <= limit:
        return text
    head = text[:limit + 1]   # a sentence may end at the limit itself
    sentence = head.rfind(". ")
    if sentence >= limit // 2:
        return head[:sentence + 1]
    head = text[:limit - len(" ...")]   # room for the mark of the cut
    return head[:head.rfind(" ")].rstrip(" ,;:") + " ..." if " " in head else head[:-1] + "..."


def describe_path(path: "os.PathLike[str] | str") -> str:
    """The path as the user should read it in a message (absolute, with ~ kept short). Something
    read that is not a file (a DICOM series) is described by its own ``str``."""
    if not isinstance(path, (str, os.PathLike)):
        return str(path)
    text = os.path.abspath(os.fspath(path))
    home = os.path.expanduser("~")
    if home not in ("/", "") and text.startswith(home + os.sep):
        text = "~" + text[len(home):]
    return text


def list_some(items: Iterable[object], shown: int = 3) -> str:
    """``a, b, c, ...``: the first `shown` items of a list a message names, and whether more follow."""
    items = [str(item) for item in items]
    return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")


def value_runs(values: Iterable[int]) -> str:
    """``0, 3..5``: a set of label values in a message, runs of three or more written as ranges, so
    values with gaps (a region dataset's 0, 3, 4, 5) are never shown as one range ``0..5``."""
    ordered = sorted(set(int(v) for v in values))
    runs: List[List[int]] = []
    for value in ordered:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ", ".join(f"{run[0]}..{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)


def by_x(values: Iterable[float]) -> str:
    """``3 x 1.5 x 1.5``: a size, spacing or origin in a message, to 4 significant digits."""
    return " x ".join(f"{v:.4g}" for v in values)


def raise_all(errors: Sequence[InputError], total: int, what: str, advice: str = "", shown: int = 3) -> None:
    """Report every problem a pass over `total` inputs found, not only the first, so a user fixes
    them all before the next run: one error is raised as it is (`advice` appended); several as
    one line, ``2 of 40 cases cannot be segmented: (1) A; (2) B; advice``."""
    if not errors:
        return
    if len(errors) == 1:
        if advice:
            raise InputError(f"{errors[0]}; {advice}") from None
        raise errors[0]
    listed = "; ".join(f"({number}) {error}" for number, error in enumerate(errors[:shown], start=1))
    more = f"; and {len(errors) - shown} more" if len(errors) > shown else ""
    raise InputError(f"{len(errors)} of {total} {what}: {listed}{more}" + (f"; {advice}" if advice else ""))


class ShapeError(MaskSAMError, ValueError):
    """A tensor or image has the wrong number of dimensions, channels or size."""
