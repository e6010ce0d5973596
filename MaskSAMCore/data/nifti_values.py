"""What ITK's NIfTI reader does not tell: NaN/Inf voxels, and a file cut short.

ITK's NIfTI reader (and so SimpleITK's, and Slicer's) replaces NaN and Inf voxels by 0 while
reading, so a float NIfTI file with holes of NaN - a failed registration or resampling upstream -
would reach the network as plausible zeros. It also fills the missing part of a truncated file
(an interrupted copy or download) with zeros without a word. Only the NIfTI-1/NIfTI-2 header
fields needed to find and interpret the voxel data are read here; integer files cannot hold NaN
and are not scanned for it.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
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
    Raises `ValueError` for a file that is not NIfTI-1 or NIfTI-2, or one cut short."""
    path = Path(path)
    with open_nifti(path) as stream:
        header = _read_header(stream)
        layout = _float_layout(header)
        if layout is None:
            return 0
        dtype, voxels, offset = layout
        stream.read(offset - len(header))  # skip the extensions (gzip streams only read forwards)
        try:
            return _count(stream, dtype, voxels)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"the compressed data is cut short or damaged ({exc})") from None


def missing_bytes(path: "os.PathLike[str] | str") -> int:
    """How many bytes of voxel data the NIfTI file `path` lacks (0 when complete). Raises
    `ValueError` for a file that is not NIfTI-1 or NIfTI-2, or whose compression is damaged.

    Uncompressed files are measured. For gzip files the trailer's size field (the uncompressed
    size modulo 2^32) is compared first, so a complete file costs no decompression; only when
    it differs (a truncated file, or one written in several gzip members) is the stream read.
    """
    path = Path(path)
    with open_nifti(path) as stream:
        header = _read_header(stream)
    expected = _data_end(header)
    if not path.name.lower().endswith(".gz"):
        return max(0, expected - path.stat().st_size)
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        if struct.unpack("<I", raw.read(4))[0] == expected % 2 ** 32:
            return 0
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < expected:
                chunk = stream.read(min(CHUNK_BYTES, expected - total))
                if not chunk:
                    break
                total += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        pass   # the stream stops where the file was cut: count what came before
    return max(0, expected - total)


def nifti_version(path: "os.PathLike[str] | str") -> Optional[int]:
    """1 or 2 for a NIfTI-1 or NIfTI-2 file, None when the start of `path` is neither."""
    try:
        with open_nifti(path) as stream:
            return {348: 1, 540: 2}[_header_size(stream.read(4))]
    except (ValueError, OSError, EOFError, zlib.error):
        return None


def open_nifti(path: "os.PathLike[str] | str", mode: str = "rb") -> BinaryIO:
    """A NIfTI file as a binary stream, decompressed (``.nii.gz``) or not (``.nii``)."""
    return gzip.open(path, mode) if str(path).lower().endswith(".gz") else open(path, mode)


def _read_header(stream: BinaryIO) -> bytes:
    try:
        header = stream.read(348)
        return header + stream.read(_header_size(header) - len(header))
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise ValueError(f"cannot read the NIfTI header ({exc})") from None


def _header_size(start: bytes) -> int:
    """348 (NIfTI-1) or 540 (NIfTI-2), from the first field, in either byte order."""
    for order in ("<", ">"):
        if len(start) >= 4 and struct.unpack(order + "i", start[:4])[0] in (348, 540):
            return struct.unpack(order + "i", start[:4])[0]
    raise ValueError("not a NIfTI-1 or NIfTI-2 header")


def _fields(header: bytes) -> Tuple[str, int, int, int, int]:
    """(byte order, datatype code, bits per voxel, number of voxels, offset of the data)."""
    for order in ("<", ">"):
        size = struct.unpack(order + "i", header[:4])[0]
        if size == 348 and len(header) >= 348:                                               # NIfTI-1
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            dims = struct.unpack(order + "8h", header[40:56])
            offset = max(352, int(struct.unpack(order + "f", header[108:112])[0]))
            break
        if size == 540 and len(header) >= 540:                                               # NIfTI-2
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            dims = struct.unpack(order + "8q", header[16:80])
            offset = max(544, int(struct.unpack(order + "q", header[168:176])[0]))
            break
    else:
        raise ValueError("not a NIfTI-1 or NIfTI-2 header")
    ndim = max(1, min(int(dims[0]), 7))
    voxels = int(np.prod([max(1, int(d)) for d in dims[1:1 + ndim]]))
    return order, int(datatype), int(bitpix), voxels, offset


def _data_end(header: bytes) -> int:
    """Where the voxel data of a complete file ends (bytes from the start of the file)."""
    _, _, bitpix, voxels, offset = _fields(header)
    return offset + voxels * max(bitpix, 0) // 8


def _float_layout(header: bytes) -> Optional[Tuple[np.dtype, int, int]]:
    """(voxel dtype with byte order, number of voxels, offset of the data), or None for integers."""
    order, datatype, _, voxels, offset = _fields(header)
    if datatype not in FLOAT_DATATYPES:
        return None
    return np.dtype(FLOAT_DATATYPES[datatype]).newbyteorder(order), voxels, offset


def _count(stream: BinaryIO, dtype: np.dtype, voxels: int) -> int:
    bad, remaining = 0, voxels * dtype.itemsize
    chunk = CHUNK_BYTES - CHUNK_BYTES % dtype.itemsize
    while remaining > 0:
        data = stream.read(min(chunk, remaining))
        if not data:
            break   # a truncated file: `missing_bytes` reports it
        usable = len(data) - len(data) % dtype.itemsize
        values = np.frombuffer(data[:usable], dtype=dtype)
        bad += int(values.size - np.count_nonzero(np.isfinite(values)))
        remaining -= len(data)
    return bad

