"""A Segment job's private folder (a copy of the patient's scan) does not outlive a Slicer that
died mid-job: the next job removes it, and leaves alone what a living Slicer still holds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from slicer_support import MODULE_DIR

from MaskSAMSegmentLib.job_folders import JobFolder

pytestmark = pytest.mark.skipif(os.name != "posix", reason="folders are held with flock (POSIX)")


def _slicer_process(work, then: str) -> subprocess.Popen:
    """A stand-in Slicer: makes a job folder with a scan in it, prints its path, then `then`."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(MODULE_DIR)!r})
        from MaskSAMSegmentLib.job_folders import JobFolder
        folder = JobFolder({str(work)!r})
        (folder.path / "input.nrrd").write_bytes(b"the patient's scan")
        print(folder.path, flush=True)
        {then}
        """)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _age(folder, seconds: float = 600.0) -> None:
    then = time.time() - seconds
    os.utime(folder, (then, then))


def test_a_crashed_slicers_copy_of_the_scan_is_removed_by_the_next_job(tmp_path):
    crashed = _slicer_process(tmp_path, "os._exit(1)")   # dies without a word: no clean-up runs
    dead = tmp_path / crashed.communicate(timeout=60)[0].strip()
    living = _slicer_process(tmp_path, "sys.stdin.read()")   # still segmenting
    held = tmp_path / living.stdout.readline().strip()
    kept = JobFolder(str(tmp_path))
    kept.keep()                                               # kept on purpose, for debugging
    young = _slicer_process(tmp_path, "os._exit(1)")         # died a moment ago: maybe not ours to judge yet
    just_made = tmp_path / young.communicate(timeout=60)[0].strip()
    try:
        for folder in (dead, held, kept.path):
            _age(folder)
        assert (dead / "input.nrrd").is_file()

        new = JobFolder(str(tmp_path))
        assert not dead.exists()
        assert (held / "input.nrrd").is_file() and kept.path.is_dir() and just_made.is_dir()
        assert new.path.is_dir()
        new.remove()
        assert not new.path.exists()
    finally:
        living.communicate(timeout=60)
    # once its Slicer has ended, the living one's folder is abandoned too
    JobFolder(str(tmp_path)).remove()
    assert not held.exists()
