"""Loading checkpoints with ``torch.load(weights_only=True)``: tensors and plain containers only, so
a file whose unpickling would run code is refused, and every refusal is one line saying which kind
of file it was.

Shared by MaskSAM's own checkpoints (`MaskSAMCore.model_folder`, the trainer's) and the official
SAM ones (`MaskSAMCore.model.sam_checkpoints`). PyTorch is imported where a file is loaded: the
Slicer module imports this package in a Slicer that may have no PyTorch yet.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from MaskSAMCore.errors import CheckpointError, first_line, shorten

# What torch's weights-only unpickler says of a pickle that names code to run (a class or a
# function), as opposed to bytes that are no pickle at all ("Unsupported operand 60": an HTML
# error page saved in the checkpoint's place, random bytes).
_RUNS_CODE_SIGNS = ("Unsupported global", "Unsupported class", "GLOBAL", "reduce")

# A binary pickle starts with the PROTO opcode and its protocol. torch.save writes protocol 2
# (inside a zip archive, or as the legacy format, which starts with a protocol-2 pickle too);
# a file of protocol 3 and up was written by `pickle.dump` or torch.save(pickle_protocol=...),
# and torch's weights-only unpickler cannot read it (protocol 4's FRAME is an "unsupported operand").
_PICKLE_PROTO = 0x80
_PLAIN_PICKLE_PROTOCOLS = (3, 4, 5)


def load_weights_only(path: Union[str, "os.PathLike[str]"], shown_path: str, mmap: bool = False) -> Any:
    """The content of checkpoint `path`, read on the CPU without running code; `CheckpointError`
    (one line naming `shown_path`) when the file is unusable or unsafe."""
    import torch

    try:
        with warnings.catch_warnings():
            # torch warns (2 lines on stderr) before it reads a protocol-4 pickle, even one it then
            # refuses: the refusal is said in our own line.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for bad files; all mean "unusable"
        raise CheckpointError(describe_load_failure(shown_path, exc, path)) from None


def describe_load_failure(shown_path: str, exc: BaseException,
                          path: Optional[Union[str, "os.PathLike[str]"]] = None) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file (`path`, when given,
    is looked at to tell a plain Python pickle from a damaged file)."""
    text = str(exc)
    if "Weights only load failed" in text or "weights_only" in text:
        if any(sign in text for sign in _RUNS_CODE_SIGNS):
            return (f"{shown_path} contains Python objects whose loading could run code; refusing to "
                    "load it (only plain tensor checkpoints are accepted)")
        protocol = _plain_pickle_protocol(path) if path is not None else None
        if protocol is not None:
            return (f"{shown_path} is a plain Python pickle (protocol {protocol}), not a weights-only PyTorch "
                    "checkpoint; refused without unpickling it (unpickling can run code; only plain tensor "
                    "checkpoints are accepted)")
        return (f"{shown_path} is not a PyTorch checkpoint (damaged, or another kind of file saved under its "
                "name, such as a web page); get the file again")
    return f"{shown_path} is corrupt or truncated and cannot be read ({shorten(first_line(exc))})"


def _plain_pickle_protocol(path: Union[str, "os.PathLike[str]"]) -> Optional[int]:
    """The protocol of a file that starts as a binary pickle torch.save does not write; else None."""
    try:
        with open(Path(path), "rb") as file:
            head = file.read(2)
    except OSError:
        return None
    if len(head) == 2 and head[0] == _PICKLE_PROTO and head[1] in _PLAIN_PICKLE_PROTOCOLS:
        return head[1]
    return None
