"""Value types of the `masksam` options: each turns one command-line word into a value or into a
usage error that names the problem (argparse prints it in one line, exit status 2)."""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Optional

SEED_MAXIMUM = 2 ** 32 - 1   # NumPy's seeds are 32-bit


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

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {text}")
        return value

    return whole_number
