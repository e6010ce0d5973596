"""How many bytes of pixel data a DICOM file really holds, found by walking its elements.

GDCM reads a slice whose Pixel Data (7FE0,0010) is cut short without complaint and keeps the
previous slice's voxels for the rest, so the series reader checks every slice first. The file
size alone misses a slice short by less than its header, and a file without the preamble and
meta group has no transfer syntax to go by; walking the elements finds where the pixel data
starts in both. Only native (uncompressed) transfer syntaxes are walked: compressed pixel data
has no size to compare with. Where the walk meets something it does not understand it gives up
(None) and claims nothing.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional, Tuple

IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
NATIVE_TRANSFER_SYNTAXES = {IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG}
# Explicit-VR elements with these value representations have a 4-byte length after 2 reserved bytes.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PIXEL_DATA = (0x7FE0, 0x0010)
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF


class _CannotWalk(Exception):
    """The elements do not follow the encoding assumed (or the header itself is cut short)."""


def pixel_data_bytes(path: Path) -> Optional[int]:
    """Bytes of pixel data `path` holds - the smaller of the length its Pixel Data element
    declares and what the file has after it - or None when its transfer syntax is not native or
    its elements cannot be walked."""
    try:
        data = path.read_bytes()
        start, syntax = _dataset_start(data)
        if syntax not in NATIVE_TRANSFER_SYNTAXES:
            return None
        return _Elements(data, little=syntax != EXPLICIT_BIG, explicit=syntax != IMPLICIT_LITTLE).pixel_data(start)
    except (OSError, _CannotWalk, struct.error):
        return None


def _dataset_start(data: bytes) -> Tuple[int, Optional[str]]:
    """(offset of the data set after the meta group, transfer syntax). A file without a meta
    group (written without the preamble) says nothing: its encoding is guessed from its first
    element, as readers do."""
    position = 132 if data[128:132] == b"DICM" else 0
    meta = _Elements(data, little=True, explicit=True)   # the meta group is always explicit little endian
    syntax = None
    while position + 8 <= len(data) and struct.unpack_from("<H", data, position)[0] == 0x0002:
        tag, _, length, value_at = meta.element(position)
        if tag == (0x0002, 0x0010):
            syntax = data[value_at:value_at + length].rstrip(b"\x00 ").decode("ascii", "replace")
        position = value_at + length
    if syntax is None:
        vr = data[position + 4:position + 6]   # two capital letters in an explicit-VR element
        syntax = EXPLICIT_LITTLE if vr.isalpha() and vr.isupper() else IMPLICIT_LITTLE
    return position, syntax


class _Elements:
    """Reads the elements of one encoding (byte order, explicit or implicit VR) from `data`."""

    def __init__(self, data: bytes, little: bool, explicit: bool) -> None:
        self.data, self.order, self.explicit = data, "<" if little else ">", explicit

    def element(self, position: int) -> Tuple[Tuple[int, int], Optional[bytes], int, int]:
        """(tag, VR or None, value length, offset of the value) of the element at `position`."""
        if position + 8 > len(self.data):
            raise _CannotWalk("an element header is cut short")
        tag = struct.unpack_from(self.order + "HH", self.data, position)
        if tag[0] == 0xFFFE or not self.explicit:   # items and delimiters never carry a VR
            return tag, None, struct.unpack_from(self.order + "I", self.data, position + 4)[0], position + 8
        vr = self.data[position + 4:position + 6]
        if vr in _LONG_VRS:
            return tag, vr, struct.unpack_from(self.order + "I", self.data, position + 8)[0], position + 12
        return tag, vr, struct.unpack_from(self.order + "H", self.data, position + 6)[0], position + 8

    def pixel_data(self, position: int) -> Optional[int]:
        """Bytes of pixel data after the top-level elements from `position` on; None without it
        or when it is encapsulated (undefined length)."""
        while position < len(self.data):
            tag, _, length, value_at = self.element(position)
            if tag == _PIXEL_DATA:
                return None if length == _UNDEFINED else min(length, len(self.data) - value_at)
            position = self._after_value(length, value_at)
        return None

    def _after_value(self, length: int, value_at: int) -> int:
        if length != _UNDEFINED:
            if value_at + length > len(self.data):
                raise _CannotWalk("an element runs past the end of the file")
            return value_at + length
        # A sequence of undefined length: items up to the sequence delimiter.
        position = value_at
        while True:
            tag, _, item_length, item_at = self.element(position)
            if tag == _SEQUENCE_END:
                return item_at
            if tag != _ITEM:
                raise _CannotWalk(f"expected an item, found ({tag[0]:04X},{tag[1]:04X})")
            position = self._after_value(item_length, item_at) if item_length != _UNDEFINED \
                else self._after_item(item_at)

    def _after_item(self, position: int) -> int:
        """Past the elements of an item of undefined length and its delimiter."""
        while True:
            tag, _, length, value_at = self.element(position)
            if tag == _ITEM_END:
                return value_at
            position = self._after_value(length, value_at)
