"""Counting NaN/Inf voxels in a NIfTI file by reading its raw voxel data.

ITK's NIfTI reader (and so SimpleITK's, and Slicer's) replaces NaN and Inf voxels by 0 while
reading, so a float NIfTI file with holes of NaN - a failed registration or resampling upstream -
would reach the network as plausible zeros. Only the NIfTI-1/NIfTI-2 header fields needed to find
and interpret the voxel data are read here; integer files cannot hold NaN and are not scanned.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import BinaryIO, Optional, Tuple

import numpy as np

NIFTI_ENDINGS = (".nii", ".nii.gz")
# NIfTI datatype codes of real floating-point voxels -> NumPy type.
FLOAT_DATATYPES = {16: np.float32, 64: np.float64}
CHUNK_BYTES = 16 * 1024 * 1024


def is_nifti(path: "os.PathLike[str] | str") -> bool:
    return str(path).lower().endswith(NIFTI_ENDINGS)


def count_non_finite_voxels(path: "os.PathLike[str] | str") -> int:
    """NaN/Inf voxels in the NIfTI file `path` as stored on disk; 0 for integer voxel types.
    Raises `ValueError` for a file that is not NIfTI-1 or NIfTI-2."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        header = stream.read(348)
        header += stream.read(_header_size(header) - len(header))
        layout = _float_layout(header)
        if layout is None:
            return 0
        dtype, voxels, offset = layout
        stream.read(offset - len(header))  # skip the extensions (gzip streams only read forwards)
        return _count(stream, dtype, voxels)


def _header_size(start: bytes) -> int:
    """348 (NIfTI-1) or 540 (NIfTI-2), from the first field, in either byte order."""
    for order in ("<", ">"):
        if len(start) >= 4 and struct.unpack(order + "i", start[:4])[0] in (348, 540):
            return struct.unpack(order + "i", start[:4])[0]
    raise ValueError("not a NIfTI-1 or NIfTI-2 header")


def _float_layout(header: bytes) -> Optional[Tuple[np.dtype, int, int]]:
    """(voxel dtype with byte order, number of voxels, offset of the data), or None for integers."""
    for order in ("<", ">"):
        size = struct.unpack(order + "i", header[:4])[0]
        if size == 348 and len(header) >= 348:                                               # NIfTI-1
            datatype = struct.unpack(order + "h", header[70:72])[0]
            dims = struct.unpack(order + "8h", header[40:56])
            offset = max(352, int(struct.unpack(order + "f", header[108:112])[0]))
            break
        if size == 540 and len(header) >= 540:                                               # NIfTI-2
            datatype = struct.unpack(order + "h", header[12:14])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = max(544, int(struct.unpack(order + "q", header[168:176])[0]))
            break
    else:
        raise ValueError("not a NIfTI-1 or NIfTI-2 header")
    if datatype not in FLOAT_DATATYPES:
        return None
    ndim = max(1, min(int(dims[0]), 7))
    voxels = int(np.prod([max(1, int(d)) for d in dims[1:1 + ndim]]))
    return np.dtype(FLOAT_DATATYPES[datatype]).newbyteorder(order), voxels, offset


def _count(stream: BinaryIO, dtype: np.dtype, voxels: int) -> int:
    bad, remaining = 0, voxels * dtype.itemsize
    chunk = CHUNK_BYTES - CHUNK_BYTES % dtype.itemsize
    while remaining > 0:
        data = stream.read(min(chunk, remaining))
        if not data:
            break   # a truncated file: ITK has refused it already
        usable = len(data) - len(data) % dtype.itemsize
        values = np.frombuffer(data[:usable], dtype=dtype)
        bad += int(values.size - np.count_nonzero(np.isfinite(values)))
        remaining -= len(data)
    return bad

