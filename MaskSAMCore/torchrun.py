"""Where this process stands in a torchrun job, from the variables torchrun exports.

torchrun sets ``WORLD_SIZE`` (processes in the job), ``RANK`` (this process among them),
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (the same on this machine). This module is their one
reader, and it imports no torch: the command line asks for the rank in its error handlers, where
importing torch (seconds) or failing again is not an option.

One policy for every variable:

- ``WORLD_SIZE`` unset or 1 is a single-process run: the rank and local rank are 0 and the local
  world size is 1, whatever a stray ``RANK`` or ``LOCAL_WORLD_SIZE`` exported by hand says.
- Under torchrun (``WORLD_SIZE`` above 1) ``RANK`` must be set; ``LOCAL_RANK`` defaults to 0 and
  ``LOCAL_WORLD_SIZE`` to 1.
- A variable that is read and is not a whole number raises one `MaskSAMError` line naming it,
  not a traceback: a training started half distributed would hang or write over itself.
"""

from __future__ import annotations

import os
from typing import Optional

from MaskSAMCore.errors import MaskSAMError


def world_size() -> int:
    """Processes in the job; 1 in a plain run."""
    return _number("WORLD_SIZE", 1)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun started."""
    return world_size() > 1


def rank() -> int:
    """This process's rank in the job; 0 in a plain run (rank 0 alone writes files and prints)."""
    return _number("RANK") if launched_by_torchrun() else 0


def local_rank() -> int:
    """This process's rank on its machine (its GPU index); 0 in a plain run."""
    return _number("LOCAL_RANK", 0) if launched_by_torchrun() else 0


def local_world_size() -> int:
    """Processes of the job on this machine; 1 in a plain run."""
    return _number("LOCAL_WORLD_SIZE", 1) if launched_by_torchrun() else 1


def _number(name: str, default: Optional[int] = None) -> int:
    """The whole number in variable `name` (`default` when unset); one line, not a traceback,
    when a stray or broken variable (WORLD_SIZE exported by hand, RANK missing) would start a
    training half distributed."""
    text = os.environ.get(name)
    if text is None and default is not None:
        return default
    try:
        return int(text)   # type: ignore[arg-type]
    except (TypeError, ValueError):
        given = "is not set" if text is None else f"is {text!r}, not a whole number"
        raise MaskSAMError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} asks for distributed training, but {name} "
                           f"{given}: start it with torchrun, or unset WORLD_SIZE") from None
