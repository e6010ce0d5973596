"""Damaged files in a DICOM folder: a file that is no DICOM at all beside a series is left out
quietly (named once by MaskSAM, no warnings of pydicom's on stderr)."""

from __future__ import annotations

import warnings

import pytest

from MaskSAMCore.data.dicom_series import find_series
from dicom_support import oblique_volume, write_series

pytestmark = pytest.mark.usefixtures("dicom_locale_kept")

# An interrupted copy of a file's first bytes: the preamble, "DICM" and a few bytes of garbage.
GARBAGE = b"\0" * 128 + b"DICM" + b"\x02\x00garbage"


def test_a_garbage_file_beside_a_series_is_left_out_without_pydicom_warnings(tmp_path):
    folder = write_series(tmp_path / "ct", oblique_volume())
    (folder / "ZZ_damaged.dcm").write_bytes(GARBAGE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = find_series(folder)
    assert [str(w.message) for w in caught] == []
    assert [p.name for p in series.left_out] == ["ZZ_damaged.dcm"] and series.size[2] == 9
