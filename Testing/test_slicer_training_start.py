"""The Slicer module's training decisions that need no scene: what stops Start training, the
command line of a resumed run, the buttons' states, the warnings before hours of CPU work, and
the module's logic loading without PyTorch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from slicer_support import REPO

from MaskSAMSegmentLib import commands
from MaskSAMSegmentLib.devices import DeviceReport, device_choices
from MaskSAMSegmentLib.training_job import TrainRequest, epochs_argument


def make_dataset(folder: Path, cases: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1},
                                                     "channel_names": {"0": "CT"}, "numTraining": cases,
                                                     "file_ending": ".nii.gz"}))
    return folder


def test_start_training_problems_name_each_missing_piece(tmp_path, monkeypatch):
    from MaskSAMSegmentLib.training_job import automatic_fold, train_problems

    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    assert train_problems(TrainRequest("", "")) == [
        "Choose a dataset folder (nnU-Net raw format), or build one from the scene.",
        "Choose an output folder for the trained model.",
        "Choose a SAM vit_b checkpoint: 'Download' the official one, or pick a .pth file."]
    dataset = make_dataset(tmp_path / "Dataset1", cases=3)
    assert automatic_fold(str(dataset)) == "all" and automatic_fold(str(make_dataset(tmp_path / "D5", 5))) == "0"
    bom = make_dataset(tmp_path / "WindowsEdited", cases=3)   # Notepad starts UTF-8 files with a byte order mark
    (bom / "dataset.json").write_text((bom / "dataset.json").read_text(), encoding="utf-8-sig")
    assert automatic_fold(str(bom)) == "all"
    assert train_problems(TrainRequest(str(dataset), str(tmp_path / "new"), preset="tiny")) == []
    cache = tmp_path / "home" / "sam_checkpoints"
    cache.mkdir(parents=True)
    (cache / "sam_vit_b_renamed.pth").write_bytes(b"weights")  # not the file the core looks for
    assert train_problems(TrainRequest(str(dataset), str(tmp_path / "new"), preset="vit_b")) == [
        "Choose a SAM vit_b checkpoint: 'Download' the official one, or pick a .pth file."]
    (cache / "sam_vit_b_01ec64.pth").write_bytes(b"weights")
    assert train_problems(TrainRequest(str(dataset), str(tmp_path / "new"), preset="vit_b")) == []
    assert train_problems(TrainRequest(str(dataset), str(tmp_path / "new"), preset="vit_h")) == [
        "Choose a SAM vit_h checkpoint: 'Download' the official one, or pick a .pth file."]
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "checkpoint_latest.pt").write_bytes(b"state")
    assert "tick Resume" in train_problems(TrainRequest(str(dataset), str(earlier), preset="tiny"))[0]
    assert train_problems(TrainRequest(str(dataset), str(earlier), preset="vit_h", resume=True)) == []
    assert "Nothing to resume" in train_problems(TrainRequest(str(dataset), str(tmp_path / "x"), resume=True))[0]
    # a training killed before its first checkpoint (SIGKILL, out of memory) left only what it
    # writes first: Start begins it again, Resume explains why there is nothing to continue
    killed = tmp_path / "killed"
    (killed / "preprocessed").mkdir(parents=True)
    (killed / "model.json").write_text('{"format": "masksam-model"}')
    (killed / "plans.json").write_text("{}")
    assert train_problems(TrainRequest(str(dataset), str(killed), preset="tiny")) == []
    assert "stopped before the first epoch ended" in train_problems(
        TrainRequest(str(dataset), str(killed), preset="tiny", resume=True))[0]
    (killed / "notes.txt").write_text("mine")
    assert "is not empty" in train_problems(TrainRequest(str(dataset), str(killed), preset="tiny"))[0]


def test_resume_passes_epochs_only_to_train_a_run_longer(tmp_path):
    """Resume keeps the run's own length unless Epochs asks for more: the spin box may still show
    a default far below a long run's, which must not cut that run short."""
    from MaskSAMCore.cli import build_parser

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"format": "masksam-model", "training": {"epochs": 300}}))
    parser = build_parser()

    def given_epochs(epochs, resume=True, folder=run):
        request = TrainRequest("ds", str(folder), preset="tiny", epochs=epochs, resume=resume)
        arguments = commands.train_arguments("ds", str(folder), epochs=epochs_argument(request), resume=resume)
        return parser.parse_args(arguments).epochs

    assert given_epochs(100, resume=False) == 100
    assert given_epochs(100) is None and given_epochs(300) is None   # the run's own 300
    assert given_epochs(400) == 400
    assert given_epochs(400, folder=tmp_path / "unreadable") is None   # the core explains


def test_the_training_job_resumes_with_the_runs_own_length_unless_epochs_asks_for_more(tmp_path, monkeypatch):
    from MaskSAMSegmentLib import training_job

    started = []

    class Recorder:
        def __init__(self, command, **kwargs):
            self.command = command

        def start(self):
            started.append(self.command)

    monkeypatch.setattr(training_job, "JobRunner", Recorder)
    dataset = make_dataset(tmp_path / "Dataset1", cases=3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"format": "masksam-model", "training": {"epochs": 300}}))
    (run / "checkpoint_latest.pt").write_bytes(b"resume state")
    for epochs in (100, 400):
        request = TrainRequest(str(dataset), str(run), preset="tiny", epochs=epochs, resume=True)
        training_job.TrainingJob(request).start()
    assert [command[command.index("--epochs") + 1] if "--epochs" in command else None for command in started] \
        == [None, "400"]
    assert all("--resume" in command for command in started)


def test_button_states_follow_what_is_running_and_what_is_missing(tmp_path, monkeypatch):
    from MaskSAMSegmentLib.action_states import Activity, action_states
    from MaskSAMSegmentLib.segment_job import SegmentRequest

    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    train = TrainRequest(str(make_dataset(tmp_path / "ds", 6)), str(tmp_path / "out"), preset="tiny")
    idle = action_states([], SegmentRequest([], None), train, [], "", Activity())
    assert not idle["segmentButton"].enabled and "Select an input volume." in idle["segmentButton"].tooltip
    assert idle["startTrainingButton"].enabled and not idle["stopTrainingButton"].enabled
    assert not idle["downloadSamButton"].enabled and "uses no SAM weights" in idle["downloadSamButton"].tooltip
    assert idle["buildDatasetButton"].tooltip.splitlines() == [
        "Add at least one volume + segmentation pair.", "Choose a folder for the new dataset."]
    busy = action_states([], SegmentRequest([], None), train, [], "", Activity(training=True))
    assert not busy["startTrainingButton"].enabled and busy["stopTrainingButton"].enabled
    missing = action_states(["PyTorch"], SegmentRequest([], None), train, [], "", Activity())
    assert not missing["startTrainingButton"].enabled
    assert missing["startTrainingButton"].tooltip.startswith("Install the missing Python packages first (PyTorch).")


def test_training_a_sam_sized_preset_on_the_cpu_warns_that_it_takes_days(tmp_path, monkeypatch):
    from MaskSAMSegmentLib.action_states import Activity, action_states
    from MaskSAMSegmentLib.segment_job import SegmentRequest
    from MaskSAMSegmentLib.training_job import cpu_training_note

    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    dataset, output = str(make_dataset(tmp_path / "ds", 6)), str(tmp_path / "out")
    auto_on_cpu, cpu = device_choices(None)
    auto_on_gpu = device_choices(DeviceReport("2.5.0", ((0, "H100", 79.6),)))[0]
    for device in (auto_on_cpu, cpu):
        train = TrainRequest(dataset, output, preset="vit_b", random_init=True, device=device)
        assert "training the vit_b preset takes days" in cpu_training_note(train)
        state = action_states([], SegmentRequest([], None), train, [], "", Activity())["startTrainingButton"]
        assert state.enabled and state.tooltip.splitlines() == [
            "Start training in the background.", cpu_training_note(train)]
    assert cpu_training_note(TrainRequest(dataset, output, preset="tiny", device=cpu)) is None
    assert cpu_training_note(TrainRequest(dataset, output, preset="vit_b", device=auto_on_gpu)) is None


def test_the_modules_logic_loads_in_a_slicer_without_pytorch():
    """A fresh Slicer has no PyTorch until the module installs it: every logic file (and the core
    code it uses, such as the SAM checkpoint lookup) must import without it."""
    import subprocess
    import textwrap

    from slicer_support import MODULE_DIR

    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        sys.modules["torch"] = None          # 'import torch' now raises ImportError
        sys.path[:0] = [{str(MODULE_DIR)!r}, {str(REPO)!r}]
        import MaskSAMSegmentLib
        for found in pkgutil.iter_modules(MaskSAMSegmentLib.__path__):
            importlib.import_module("MaskSAMSegmentLib." + found.name)
        print("imported", len(list(pkgutil.iter_modules(MaskSAMSegmentLib.__path__))))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("imported ")
