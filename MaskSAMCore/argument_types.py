"""Value types of the `masksam` options: each turns one command-line word into a value or into a
usage error that names the problem (argparse prints it in one line, exit status 2)."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, Optional, Sequence, Type

SEED_MAXIMUM = 2 ** 32 - 1   # NumPy's seeds are 32-bit
# make-phantoms' smallest case (x, y, z): below this the organs vanish. Here, not in
# `MaskSAMCore.data.phantoms` (which uses it too), so the parser is built without NumPy or ITK.
PHANTOM_MIN_SIZE = (16, 16, 4)


def user_path(text: str) -> str:
    """A path argument with ``~`` expanded: the shell does not expand ``--output=~/report.json``
    or a quoted ``"~/scans"``, which would otherwise make a folder named ``~``. An empty one (a
    script's unset ``"$OUT"``) is refused: Python reads it as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable in a script?)")
    return os.path.expanduser(text)


def window_step(text: str) -> float:
    """``--step``: a fraction of the patch size in (0, 1]."""
    try:
        step = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < step <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction of the patch size in (0, 1], not {text}")
    return step


def positive_number(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def at_least(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum` and at most `maximum` (a usage
    error otherwise)."""

    def bounded(text: str) -> int:
        value = whole_number(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {text}")
        return value

    return bounded


def whole_number(text: str) -> int:
    """An argparse type: a whole number."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def each_at_least(minimum: Sequence[int], axes: str = "xyz") -> Type[argparse.Action]:
    """An argparse action for an option of ``len(minimum)`` whole numbers (``--size X Y Z``, with
    ``type=whole_number``): each at least its own minimum, a usage error naming the axis otherwise.
    (A type sees one word at a time, not which axis it is for.)"""

    class EachAtLeast(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: Optional[str] = None) -> None:
            for axis, value, least in zip(axes, values, minimum):
                if value < least:
                    raise argparse.ArgumentError(
                        self, f"{axis} must be at least {least} (the least is {' '.join(map(str, minimum))}), "
                              f"not {value}")
            setattr(namespace, self.dest, list(values))

    return EachAtLeast
