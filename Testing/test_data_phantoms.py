"""Phantoms: deterministic, valid nnU-Net datasets with oblique anisotropic grids and CT-like
anatomy; the command line makes them and refuses to overwrite anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MaskSAMCore.cli import main
from MaskSAMCore.data import phantoms
from MaskSAMCore.data.dataset import load_raw_dataset
from MaskSAMCore.data.image_io import read_image
from MaskSAMCore.data.phantom_anatomy import OPTIONAL_ORGANS, PHANTOM_LABELS
from MaskSAMCore.data.phantoms import make_phantoms, phantom_case
from MaskSAMCore.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path):
    first = make_phantoms(tmp_path / "a", cases=2, seed=3, size=(32, 28, 8), progress=False)
    second = make_phantoms(tmp_path / "b", cases=2, seed=3, size=(32, 28, 8), progress=False)
    third = make_phantoms(tmp_path / "c", cases=2, seed=4, size=(32, 28, 8), progress=False)
    for name in ("phantom_000", "phantom_001"):
        image_a, geometry_a = read_image(first / "imagesTr" / f"{name}_0000.nii.gz")
        image_b, geometry_b = read_image(second / "imagesTr" / f"{name}_0000.nii.gz")
        image_c, _ = read_image(third / "imagesTr" / f"{name}_0000.nii.gz")
        np.testing.assert_array_equal(image_a, image_b)
        assert geometry_a == geometry_b
        assert not np.array_equal(image_a, image_c)
    # A case does not depend on how many cases were asked for.
    np.testing.assert_array_equal(phantom_case(3, "train", 1, (32, 28, 8))[0],
                                  read_image(first / "imagesTr" / "phantom_001_0000.nii.gz")[0])


def test_phantom_dataset_is_valid_oblique_and_anisotropic(phantom_dataset):
    dataset = load_raw_dataset(phantom_dataset, progress=False)
    assert dataset.labels == PHANTOM_LABELS and dataset.channel_names == {"0": "CT"}
    assert len(dataset.training_cases) == 3 and len(dataset.test_cases) == 1
    assert dataset.test_cases[0].label_file.name == "phantom_test_000.nii.gz"
    for geometry in dataset.geometries.values():
        direction = geometry.direction_matrix
        np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(direction) == pytest.approx(1.0, abs=1e-6)       # a proper rotation
        tilt = np.degrees(np.arccos((np.trace(direction) - 1) / 2))
        assert 1.5 <= tilt <= 8.5                                               # oblique, a few degrees
        assert geometry.spacing[0] == pytest.approx(geometry.spacing[1])
        assert geometry.spacing[2] > 1.5 * geometry.spacing[0]                  # thick slices
        assert any(abs(v) > 1.0 for v in geometry.origin)


def test_default_cases_look_like_abdominal_ct():
    organ_hu = {"liver": 60, "spleen": 50, "kidney_left": 140, "kidney_right": 140, "aorta": 200}
    missing = 0
    for index in range(12):
        image, labels, geometry = phantom_case(0, "train", index)
        nx, ny, nz = geometry.size
        assert 64 <= nx <= 96 and 64 <= ny <= 96 and 24 <= nz <= 40
        assert 1.2 <= geometry.spacing[0] <= 2.05 and 2.5 <= geometry.spacing[2] <= 5.3
        assert image.dtype == np.int16 and labels.dtype == np.uint8
        corners = image[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.mean() < -900                                            # air around the body
        present = set(np.unique(labels).tolist())
        assert {0, 1, 5} <= present                                             # liver and aorta always
        missing += len({PHANTOM_LABELS[o] for o in OPTIONAL_ORGANS} - present)
        for name, hu in organ_hu.items():
            mask = labels == PHANTOM_LABELS[name]
            if mask.any():
                assert mask.sum() > 150, name                                   # learnable at this size
                assert abs(np.median(image[mask]) - hu) < 45, name
    assert 1 <= missing <= 6                                                    # sometimes one is missing


def test_command_line_makes_a_dataset_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "phantoms"
    command = [sys.executable, "-m", "MaskSAMCore", "make-phantoms", str(out), "--cases", "2",
               "--size", "24", "24", "6", "--file-ending", ".nrrd"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 training case(s)" in done.stdout
    dataset = load_raw_dataset(out, progress=False)
    assert [c.name for c in dataset.training_cases] == ["phantom_000", "phantom_001"]
    assert json.loads((out / "dataset.json").read_text())["file_ending"] == ".nrrd"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("masksam: error: ")
    assert "already exists and is not empty" in lines[0] and str(out.name) in lines[0]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_an_empty_existing_folder_is_used_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    make_phantoms(tmp_path / "empty", cases=1, size=(20, 20, 4), progress=False)
    assert (tmp_path / "empty" / "dataset.json").is_file()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(InputError, match="is a file, not a folder"):
        make_phantoms(tmp_path / "file", cases=1, size=(20, 20, 4), progress=False)
    assert (tmp_path / "file").read_text() == "mine"
    (tmp_path / "empty_file").touch()  # an empty file is no more a folder than a full one
    with pytest.raises(InputError, match="is a file, not a folder"):
        make_phantoms(tmp_path / "empty_file", cases=1, size=(20, 20, 4), progress=False)
    assert (tmp_path / "empty_file").is_file()


def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_write(array, geometry, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(array, geometry, path)

    real_write = phantoms.write_label
    monkeypatch.setattr(phantoms, "write_label", failing_write)
    with pytest.raises(OSError, match="disk full"):
        make_phantoms(tmp_path / "out", cases=3, size=(20, 20, 4), progress=False)
    assert list(tmp_path.iterdir()) == []                                        # no folder, no temporary
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        make_phantoms(tmp_path / "deep" / "er" / "out", cases=3, size=(20, 20, 4), progress=False)
    assert list(tmp_path.iterdir()) == []                           # nor the parent folders it made
    (tmp_path / "existing").mkdir()
    calls.clear()
    with pytest.raises(OSError, match="disk full"):   # "new/../existing" is the user's folder
        make_phantoms(tmp_path / "new" / ".." / "existing" / "out", cases=3, size=(20, 20, 4), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["existing"]


@pytest.mark.parametrize("size, expected", [
    (["0", "20", "20"], "argument --size: x must be at least 16 (the least is 16 16 4), not 0"),
    (["20", "20", "3"], "argument --size: z must be at least 4 (the least is 16 16 4), not 3"),
    (["20", "a", "8"], "argument --size: not a whole number: 'a'"),
])
def test_a_size_too_small_is_a_usage_error_as_other_option_values_are(tmp_path, capsys, size, expected):
    with pytest.raises(SystemExit) as stopped:
        main(["make-phantoms", str(tmp_path / "out"), "--cases", "1", "--size", *size])
    assert stopped.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and expected in said[0], said
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arguments, problem", [
    (dict(cases=0), "--cases must be at least 1"),
    (dict(cases=1, test_cases=-1), "--test-cases must be 0 or more"),
    (dict(cases=1, size=(8, 40, 10)), "--size must be 3 numbers"),
    (dict(cases=1, file_ending=".png"), "file ending '.png' is not one of"),
])
def test_bad_arguments_are_refused_with_one_line(tmp_path, arguments, problem):
    with pytest.raises(InputError, match=problem):
        make_phantoms(tmp_path / "out", progress=False, **arguments)
    assert not (tmp_path / "out").exists()


def test_a_size_beyond_this_machines_memory_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """--size 100000 100000 100000 would be tried until an allocation failed: refused up front instead,
    in one line naming --size and the memory needed and available, without importing torch."""
    from MaskSAMCore.data import phantoms

    monkeypatch.setattr(phantoms, "available_host_bytes", lambda: 2 ** 33, raising=False)   # an 8 GiB machine
    out = tmp_path / "out"
    assert main(["make-phantoms", str(out), "--cases", "1", "--size", "100000", "100000", "100000"]) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("masksam: error: --size 100000 100000 100000 needs about "), said
    assert "GiB of memory per case (8.0 GiB available)" in said[0], said
    assert not out.exists()
    # A size that fits the same machine is made.
    assert main(["make-phantoms", str(out), "--cases", "1", "--size", "20", "20", "4"]) == 0


def test_making_phantoms_does_not_import_torch(tmp_path):
    """The memory check reads the host's memory without torch (`host_memory`, not `inference.devices`)."""
    code = ("import sys; from MaskSAMCore.cli import main; "
            f"main(['make-phantoms', {str(tmp_path / 'out')!r}, '--cases', '1', '--size', '20', '20', '4']); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout
