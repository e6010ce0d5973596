"""Damaged files in a DICOM folder: a file that is no DICOM at all beside a series is left out
quietly (named once by MaskSAM, no warnings of pydicom's on stderr); a slice of the series
that cannot be read refuses the series, naming that file, wherever it lies in the stack;
compressed pixel data GDCM cannot decode is named by its compression."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate

from MaskSAMCore.cli import main
from MaskSAMCore.data.dicom_series import find_series, read_series
from MaskSAMCore.errors import InputError
from dicom_support import one_line_error, oblique_volume, write_series

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


@pytest.mark.parametrize("cut", ["IM0000.dcm", "IM0004.dcm", "IM0008.dcm"])   # first, middle, last slice
def test_a_slice_cut_short_is_named_as_damaged_wherever_it_lies(dicom_model_dir, tmp_path, capsys, cut):
    folder = write_series(tmp_path / "ct", oblique_volume())
    (folder / cut).write_bytes((folder / cut).read_bytes()[:-100])   # an interrupted copy: GDCM reads nothing
    out = tmp_path / "out"
    assert main(["predict", str(dicom_model_dir), str(folder), f"{out}/", "--device", "cpu"]) == 1
    assert one_line_error(capsys) == (
        f"masksam: error: {folder} (DICOM series 3 'AX ABD'): {cut}: a damaged slice of this series (its header "
        "names the series, but it cannot be read as an image: cut short or corrupt); copy or export the series again")
    assert not out.exists()


def _undecodable(folder: Path) -> None:
    """Every slice's pixel data replaced by a JPEG 2000 codestream's first bytes, under the
    High-Throughput JPEG 2000 transfer syntax (which GDCM cannot decode): a damaged export."""
    for path in folder.iterdir():
        dataset = pydicom.dcmread(str(path))
        dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"
        dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])
        dataset["PixelData"].VR = "OB"
        dataset.save_as(str(path))


def test_pixel_data_gdcm_cannot_decode_is_named_by_its_compression(tmp_path):
    folder = write_series(tmp_path / "ct", oblique_volume())
    _undecodable(folder)
    series = find_series(folder)   # the headers are fine
    with pytest.raises(InputError, match=r"\): IM0000\.dcm: its High-Throughput JPEG 2000 Image Compression "
                                         r"\(Lossless Only\) pixel data cannot be decoded \(Failed to "):
        read_series(series)
