"""Reading DICOM data sets with pydicom without its warnings reaching the user's terminal.

pydicom warns (Python `UserWarning`s, two lines each on stderr) about every oddity of a file it
reads with ``force=True``: a damaged file's garbage taken for implicit VR elements, an unknown
tag's VR, a value of the wrong length. MaskSAM reads with pydicom what GDCM cannot (a damaged
file's Modality, multi-frame functional groups, the sources of a SEG) and says itself, in one
line, what matters of it; pydicom's own warnings would only bury that line.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Iterator, Optional


@contextlib.contextmanager
def pydicom_warnings_off() -> Iterator[None]:
    """No warnings while pydicom reads a file or converts its elements (pydicom parses element
    values lazily, on first access, so the access may warn as well as the reading)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_dataset(path: "os.PathLike[str] | str", **options: Any):
    """pydicom's data set of `path` (`options`: `pydicom.dcmread`'s, such as
    ``stop_before_pixels``), read with ``force=True`` (files written without the preamble) and
    without pydicom's warnings."""
    import pydicom

    with pydicom_warnings_off():
        return pydicom.dcmread(str(path), force=True, **options)


def compression_name(path: "os.PathLike[str] | str") -> Optional[str]:
    """The name of the compressed transfer syntax `path` is stored in, as pydicom gives it
    (``JPEG 2000 Image Compression (Lossless Only)``); None for native pixel data, or a file
    without a meta group or too damaged to say."""
    try:
        syntax = read_dataset(path, stop_before_pixels=True, specific_tags=["Modality"]).file_meta.TransferSyntaxUID
    except Exception:   # no meta group, or damaged: nothing to name
        return None
    return str(syntax.name) if syntax.is_compressed else None
