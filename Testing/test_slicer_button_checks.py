"""The checks behind the buttons' states run on every keystroke: they must be cheap and never raise."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from slicer_support import add_scalar_volume, distinct_voxel_values, new_scene, oblique_grid
from test_slicer_dataset import two_cases
from test_slicer_jobs import fake_model_folder

from MaskSAMCore.errors import InputError
from MaskSAMSegmentLib import requirements_check
from MaskSAMSegmentLib.action_states import Activity, action_states
from MaskSAMSegmentLib.dataset_builder import DatasetBuilder
from MaskSAMSegmentLib.requirements_check import REQUIREMENTS, InstallPlan, RequirementsStatus
from MaskSAMSegmentLib.models import read_model_info
from MaskSAMSegmentLib.segment_job import SegmentRequest
from MaskSAMSegmentLib.training_job import TrainRequest, train_problems


def button_states(train: TrainRequest, missing_packages=(), model=None):
    """What the widget's updateButtons() computes, for a scene holding one CT."""
    volume = add_scalar_volume(new_scene(), distinct_voxel_values(), oblique_grid())
    return action_states(list(missing_packages), SegmentRequest([volume], model), train, [], "", Activity())


def ready_training(tmp_path) -> TrainRequest:
    dataset = tmp_path / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({"numTraining": 2}))
    return TrainRequest(str(dataset), str(tmp_path / "new model"), preset="vit_b", random_init=True)


def test_the_packages_are_scanned_once_and_again_after_an_install(monkeypatch):
    scans = []
    found_missing = [[REQUIREMENTS[0]], []]   # PyTorch missing, then installed

    def scan():
        scans.append(1)
        return found_missing[len(scans) - 1]

    status = RequirementsStatus(scan)
    monkeypatch.setattr(requirements_check, "STATUS", status)
    for _ in range(5):   # five keystrokes
        assert [r.name for r in requirements_check.STATUS.missing()] == ["PyTorch"]
    assert len(scans) == 1
    requirements_check.install_in_slicer(InstallPlan())   # what the Install button ends with
    assert len(scans) == 2 and requirements_check.STATUS.missing() == []


def test_the_remembered_packages_are_the_scanned_ones():
    assert RequirementsStatus().missing() == requirements_check.missing_requirements()


@pytest.fixture
def locked(tmp_path, monkeypatch) -> Path:
    """A folder this user may not read or enter (chmod 000 for anyone but root; the tests may run
    as root, so the refusal is what the system would answer)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    real_stat, real_iterdir = Path.stat, Path.iterdir

    def refused(path: Path):
        return PermissionError(errno.EACCES, "Permission denied", str(path))

    def stat(self, **kwargs):
        if folder in self.parents:
            raise refused(self)
        return real_stat(self, **kwargs)

    def iterdir(self):
        if self == folder:
            raise refused(self)
        yield from real_iterdir(self)

    monkeypatch.setattr(Path, "stat", stat)
    monkeypatch.setattr(Path, "iterdir", iterdir)
    return folder


def test_an_unreadable_model_folder_is_a_problem_not_an_exception(tmp_path, locked):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({"numTraining": 2}))
    assert train_problems(TrainRequest(str(dataset), str(locked), preset="tiny")) == [
        f"'{locked}' cannot be read (Permission denied): check its permissions or choose another folder."]


def test_an_unreadable_dataset_folder_is_a_problem_not_an_exception(tmp_path, locked):
    assert train_problems(TrainRequest(str(locked), str(tmp_path / "new"), preset="tiny")) == [
        f"'{locked / 'dataset.json'}' cannot be read (Permission denied): check its permissions or choose "
        "another folder."]


def test_the_start_button_says_which_folder_cannot_be_read(tmp_path, locked):
    state = button_states(TrainRequest(str(locked), str(tmp_path / "new"), preset="tiny"))["startTrainingButton"]
    assert not state.enabled and f"'{locked / 'dataset.json'}' cannot be read" in state.tooltip


def test_a_missing_matplotlib_blocks_training_only(tmp_path):
    """Matplotlib draws training's progress.png; segmenting and downloading never use it."""
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    states = button_states(ready_training(tmp_path), ["Matplotlib"], model)
    assert states["segmentButton"].enabled and states["downloadSamButton"].enabled
    assert states["startTrainingButton"].tooltip == "Install the missing Python packages first (Matplotlib)."

    states = button_states(ready_training(tmp_path / "again"), ["PyTorch", "Matplotlib"], model)
    assert states["segmentButton"].tooltip == "Install the missing Python packages first (PyTorch)."
    assert states["startTrainingButton"].tooltip == "Install the missing Python packages first (PyTorch, Matplotlib)."


def test_relative_training_paths_ask_for_a_full_path(tmp_path, monkeypatch):
    """Typed 'mymodel' would land in Slicer's working folder (often its install folder)."""
    monkeypatch.chdir(tmp_path)   # where a relative path would be read from
    ready = ready_training(tmp_path)
    (tmp_path / "weights.pth").write_bytes(b"")
    relative = {"dataset_dir": "dataset", "output_dir": "mymodel"}
    for field, what in (("dataset_dir", "dataset folder"), ("output_dir", "model folder")):
        request = TrainRequest(**{**ready.__dict__, field: relative[field]})
        assert train_problems(request) == [f"'{relative[field]}' is not a full path: choose a full path for the "
                                           f"{what} (a relative one would be read from Slicer's working folder)."]
    sam_file = TrainRequest(**{**ready.__dict__, "random_init": False, "sam_checkpoint": "weights.pth"})
    assert train_problems(sam_file) == ["'weights.pth' is not a full path: choose a full path for the SAM "
                                        "checkpoint (a relative one would be read from Slicer's working folder)."]


def test_a_relative_new_dataset_folder_asks_for_a_full_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    states = action_states([], SegmentRequest([], None), ready_training(tmp_path), pairs, "my dataset", Activity())
    assert states["buildDatasetButton"].tooltip == (
        "'my dataset' is not a full path: choose a full path for the new dataset folder (a relative one would be "
        "read from Slicer's working folder).")
    with pytest.raises(InputError, match="'my dataset' is not a full path"):
        DatasetBuilder(pairs, "my dataset")
    assert not (tmp_path / "my dataset").exists()
