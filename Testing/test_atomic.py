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
