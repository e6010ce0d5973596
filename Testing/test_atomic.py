"""Folders made for a command and removed when it fails; temporaries; a full disk."""

from __future__ import annotations

import errno

import pytest


def test_folders_made_never_removes_an_existing_folder_reached_through_dotdot(tmp_path):
    from MaskSAMCore.atomic import folders_made

    (tmp_path / "existing").mkdir()
    with pytest.raises(RuntimeError):
        with folders_made(tmp_path / "new" / ".." / "existing" / "out"):
            raise RuntimeError("failed")
    assert [p.name for p in tmp_path.iterdir()] == ["existing"]


def test_folders_made_cleans_up_after_ctrl_c(tmp_path):
    from MaskSAMCore.atomic import folders_made

    with pytest.raises(KeyboardInterrupt):
        with folders_made(tmp_path / "a" / "b"):
            assert (tmp_path / "a" / "b").is_dir()
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_folders_made_keeps_a_made_folder_that_is_no_longer_empty(tmp_path):
    from MaskSAMCore.atomic import folders_made

    with pytest.raises(RuntimeError):
        with folders_made(tmp_path / "a" / "b"):
            (tmp_path / "a" / "b" / "kept.txt").write_text("someone's file")
            raise RuntimeError("failed")
    assert (tmp_path / "a" / "b" / "kept.txt").read_text() == "someone's file"


@pytest.mark.parametrize("ending", [".nii.gz", ".nhdr"])   # one file; a header with its data file
def test_a_failed_write_into_new_folders_leaves_no_folder_and_a_finished_one_keeps_them(tmp_path, ending):
    """`masksam predict scan.nrrd out/new/labels.nrrd --probabilities` on a full disk: the
    probabilities file fails, and `out/new/` must not stay behind empty."""
    from MaskSAMCore.atomic import atomic_path, atomic_path_with_companions

    write = atomic_path_with_companions if ending == ".nhdr" else atomic_path
    target = tmp_path / "out" / "new" / f"labels{ending}"
    with pytest.raises(OSError):
        with write(target) as temporary:
            temporary.write_bytes(b"half")
            raise OSError(errno.EIO, "the disk went away")
    assert list(tmp_path.iterdir()) == []
    with write(target) as temporary:
        temporary.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_only_hidden_temporaries_are_stale(tmp_path):
    from MaskSAMCore.atomic import TEMP_MARKER, remove_stale_temporaries

    (tmp_path / f"notes{TEMP_MARKER}1.txt").write_text("the user's")
    (tmp_path / f".case{TEMP_MARKER}abc.nii.gz").write_text("ours")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == [f"notes{TEMP_MARKER}1.txt"]


def test_enospc_is_a_full_disk_even_with_free_space_left(tmp_path):
    from MaskSAMCore.atomic import atomic_path

    with pytest.raises(OSError) as raised:
        with atomic_path(tmp_path / "report.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "no space left on the device to write it" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def _low_on_space(monkeypatch, free: int) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10 << 20, (10 << 20) - free, free))


def _nifti_writer_on_a_full_disk(monkeypatch) -> None:
    """ITK's NIfTI writer on a full disk: the gzip stream is cut short and no error is raised."""
    import SimpleITK as sitk

    real_write = sitk.WriteImage

    def cut_short(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        with open(path, "r+b") as handle:
            handle.truncate(200)

    monkeypatch.setattr(sitk, "WriteImage", cut_short)


def test_a_label_map_cut_short_by_a_full_disk_is_called_a_full_disk_not_a_bad_format(tmp_path, monkeypatch):
    import numpy as np

    from MaskSAMCore.data.image_io import ImageGeometry
    from MaskSAMCore.data.image_writing import write_label
    from MaskSAMCore.errors import InputError

    geometry = ImageGeometry((40, 30, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    labels = np.random.default_rng(0).integers(0, 5, (20, 30, 40)).astype(np.uint8)
    _nifti_writer_on_a_full_disk(monkeypatch)
    _low_on_space(monkeypatch, free=4096)
    with pytest.raises(OSError) as raised:
        write_label(labels, geometry, tmp_path / "labels.nii.gz")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "labels.nii.gz")
    assert list(tmp_path.iterdir()) == []

    _low_on_space(monkeypatch, free=9 << 30)   # the same unreadable file with space left: not the disk
    with pytest.raises(InputError, match="does not read back as a 3D image"):
        write_label(labels, geometry, tmp_path / "labels.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_a_cancel_on_a_nearly_full_disk_stays_a_cancel(tmp_path, monkeypatch):
    from MaskSAMCore.atomic import atomic_path
    from MaskSAMCore.errors import Cancelled

    _low_on_space(monkeypatch, free=100)
    with pytest.raises(Cancelled):
        with atomic_path(tmp_path / "labels.nii.gz"):
            raise Cancelled("cancelled by signal SIGTERM")
    assert list(tmp_path.iterdir()) == []


def test_make_phantoms_on_a_full_disk_names_the_file_in_the_dataset_it_was_asked_for(tmp_path, monkeypatch,
                                                                                      capsys):
    from MaskSAMCore.cli import main

    _nifti_writer_on_a_full_disk(monkeypatch)
    _low_on_space(monkeypatch, free=4096)
    assert main(["make-phantoms", str(tmp_path / "ds"), "--cases", "2", "--size", "24", "24", "8"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"masksam: error: {tmp_path / 'ds' / 'imagesTr' / 'phantom_000_0000.nii.gz'}: "
                     "no space left on the device to write it; free some space and run again")
    assert list(tmp_path.iterdir()) == []
