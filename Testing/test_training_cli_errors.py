"""`masksam train` on bad input (one clear line, exit status 1, nothing written into MODEL_DIR) and its defaults."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from MaskSAMCore.cli import main
from MaskSAMCore.data.image_io import read_label
from MaskSAMCore.data.image_writing import write_label
from MaskSAMCore.data.phantoms import make_phantoms


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return make_phantoms(tmp_path_factory.mktemp("data") / "ds", cases=5, seed=3, size=(24, 24, 8),
                         progress=False)


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("masksam: error:")]
    assert len(errors) == 1, err
    return errors[0]


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_non_empty_model_folder_is_refused_and_left_untouched(phantoms, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("my notes")
    before = _snapshot(model_dir)
    assert main(["train", str(phantoms), str(model_dir), "--preset", "tiny", "--epochs", "1"]) == 1
    line = _error_line(capsys)
    assert "not empty" in line and "--resume" in line and "model" in line
    assert _snapshot(model_dir) == before


def _train_arguments(dataset, model_dir):
    return ["train", str(dataset), str(model_dir), "--preset", "tiny", "--random-init", "--epochs", "1",
            "--iters-per-epoch", "1", "--device", "cpu", "--num-workers", "0"]


def _preprocessed_times(model_dir):
    return {p.name: p.stat().st_mtime_ns for p in (model_dir / "preprocessed").iterdir()}


@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_a_training_cancelled_before_its_first_checkpoint_keeps_its_preprocessing_for_the_next_run(
        phantoms, tmp_path, capsys, monkeypatch, stop):
    """On a real cohort preprocessing takes long: a cancel (a pause, more often than not) keeps
    it, as a kill does, and says so; the same command then starts again without redoing it."""
    from MaskSAMCore.errors import Cancelled
    from MaskSAMCore.folder_layout import BEFORE_FIRST_CHECKPOINT
    from MaskSAMCore.training.trainer import Trainer

    def cancelled(self):
        raise Cancelled("cancelled by signal SIGTERM") if stop == "SIGTERM" else KeyboardInterrupt

    model_dir = tmp_path / "model"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "fit", cancelled)   # after planning, preprocessing and set-up
        assert main(_train_arguments(phantoms, model_dir)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    said = "cancelled by signal SIGTERM" if stop == "SIGTERM" else "cancelled"
    assert err[-1] == (f"masksam: {said}; kept the plan and 5 preprocessed case(s) in {model_dir}: the same "
                       "command starts the training again and reuses them (or delete the folder)")
    left = {p.name for p in model_dir.iterdir()}
    assert {"model.json", "preprocessed"} <= left <= BEFORE_FIRST_CHECKPOINT
    preprocessed = _preprocessed_times(model_dir)

    assert main(_train_arguments(phantoms, model_dir)) == 0
    assert "starting it again" in capsys.readouterr().out
    assert _preprocessed_times(model_dir) == preprocessed and (model_dir / "checkpoint_final.pt").is_file()


@pytest.mark.parametrize("existed", [False, True])
def test_a_training_failed_before_its_first_checkpoint_leaves_nothing(phantoms, tmp_path, capsys, monkeypatch,
                                                                      existed):
    from MaskSAMCore.errors import MaskSAMError
    from MaskSAMCore.training.trainer import Trainer

    def failed(self):
        raise MaskSAMError("training diverged: every step of epoch 1 gave a non-finite loss")

    monkeypatch.setattr(Trainer, "fit", failed)   # after planning, preprocessing and set-up
    model_dir = tmp_path / "model"
    if existed:
        model_dir.mkdir()   # e.g. made empty by the Slicer module's folder picker
    assert main(_train_arguments(phantoms, model_dir)) == 1
    # The same command can be run again: the folder is gone, or empty as it was.
    assert (list(model_dir.iterdir()) == []) if existed else not model_dir.exists()


def test_a_training_killed_before_its_first_checkpoint_can_be_started_again(phantoms, tmp_path, capsys,
                                                                          monkeypatch):
    """SIGKILL (the out-of-memory killer, a power cut) gives no chance to clean up: the folder
    must neither be refused as 'not empty' nor as 'nothing to resume' by the next run."""
    from MaskSAMCore.training import run
    from MaskSAMCore.training.trainer import Trainer

    def killed(self):
        raise KeyboardInterrupt

    model_dir = tmp_path / "model"
    command = ["train", str(phantoms), str(model_dir), "--preset", "tiny", "--random-init", "--epochs", "1",
               "--iters-per-epoch", "1", "--device", "cpu", "--num-workers", "0"]
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "fit", killed)
        patch.setattr(run, "discard_model_folder", lambda *args, **kwargs: None)  # a killed process cleans nothing
        assert main(command) == 130
    left = {p.name for p in model_dir.iterdir()}
    assert {"model.json", "preprocessed"} <= left and not any(n.startswith("checkpoint") for n in left)
    preprocessed = {p.name: p.stat().st_mtime_ns for p in (model_dir / "preprocessed").iterdir()}

    assert main(command + ["--resume"]) == 1
    assert "stopped before its first epoch ended" in _error_line(capsys)
    assert main(command) == 0
    assert "starting it again" in capsys.readouterr().out
    assert (model_dir / "checkpoint_final.pt").is_file()
    # the cases preprocessed by the killed run were still valid and are reused, not redone
    assert {p.name: p.stat().st_mtime_ns for p in (model_dir / "preprocessed").iterdir()} == preprocessed


def test_a_folder_with_a_model_and_other_files_is_still_refused(phantoms, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text('{"format": "masksam-model"}')
    (model_dir / "notes.txt").write_text("my notes")
    before = _snapshot(model_dir)
    assert main(["train", str(phantoms), str(model_dir), "--preset", "tiny", "--epochs", "1"]) == 1
    assert "not empty" in _error_line(capsys)
    assert _snapshot(model_dir) == before


def test_resume_without_checkpoint_is_refused(phantoms, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text("{}")
    assert main(["train", str(phantoms), str(model_dir), "--preset", "tiny", "--resume"]) == 1
    assert "nothing to resume" in _error_line(capsys)
    assert [p.name for p in model_dir.iterdir()] == ["model.json"]


def test_resuming_with_a_dataset_of_other_channels_is_one_clear_line(phantoms, tmp_path, capsys):
    import json
    import shutil

    model_dir = tmp_path / "model"
    assert main(["train", str(phantoms), str(model_dir), "--preset", "tiny", "--random-init", "--epochs", "1",
                 "--iters-per-epoch", "1", "--fold", "all", "--device", "cpu", "--num-workers", "0"]) == 0
    capsys.readouterr()
    other = Path(shutil.copytree(phantoms, tmp_path / "two_channels"))
    for first in sorted((other / "imagesTr").glob("*_0000.nii.gz")):
        shutil.copyfile(first, first.with_name(first.name.replace("_0000", "_0001")))
    meta = json.loads((other / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "T1"}
    (other / "dataset.json").write_text(json.dumps(meta))
    before = _snapshot(model_dir)
    assert main(["train", str(other), str(model_dir), "--resume", "--num-workers", "0"]) == 1
    line = _error_line(capsys)
    assert "other image channels (CT)" in line and "(CT, T1)" in line and str(model_dir) in line
    assert _snapshot(model_dir) == before


def test_dataset_error_names_the_case_and_writes_nothing(phantoms, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(phantoms, broken)
    label_file = broken / "labelsTr" / "phantom_002.nii.gz"
    label, geometry = read_label(label_file)
    label = label.astype(np.int16)
    label[0, 0, 0] = 9                                    # not declared in dataset.json
    write_label(label, geometry, label_file)
    model_dir = tmp_path / "model"
    assert main(["train", str(broken), str(model_dir), "--preset", "tiny", "--epochs", "1"]) == 1
    line = _error_line(capsys)
    assert "phantom_002" in line and "9" in line
    assert not model_dir.exists()


@pytest.mark.parametrize("extra, expected", [
    (["--preset", "vit_b", "--sam-checkpoint", "no_such_sam.pth"], "does not exist"),
    (["--preset", "tiny", "--sam-checkpoint", "vit_b"], "tiny preset"),
    (["--preset", "vit_b", "--sam-checkpoint", "vit_l"], "does not fit"),
])
def test_bad_arguments_fail_before_anything_is_written(phantoms, tmp_path, capsys, extra, expected):
    model_dir = tmp_path / "model"
    assert main(["train", str(phantoms), str(model_dir), *extra]) == 1
    assert expected in _error_line(capsys)
    assert not model_dir.exists()


@pytest.mark.parametrize("extra, expected", [
    (["--fold", "7"], "argument --fold: invalid choice: '7'"),
    (["--epochs", "0"], "argument --epochs: must be at least 1, not 0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
    (["--lr", "-1"], "argument --lr: must be a positive number, not -1"),
    (["--lr", "nan"], "argument --lr: must be a positive number, not nan"),
    (["--seed", "-1"], "argument --seed: must be at least 0, not -1"),          # NumPy refuses it
    (["--seed", str(2 ** 64)], "argument --seed: must be at most 4294967295"),  # torch overflows
])
def test_bad_option_values_are_usage_errors_before_anything_is_read(phantoms, tmp_path, capsys, extra, expected):
    model_dir = tmp_path / "model"
    with pytest.raises(SystemExit) as stopped:
        main(["train", str(phantoms), str(model_dir), "--preset", "tiny", *extra])
    assert stopped.value.code == 2
    assert expected in _error_line(capsys)
    assert not model_dir.exists()


def test_the_command_exits_with_status_1_and_one_line(phantoms, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "x").write_text("x")
    done = subprocess.run([sys.executable, "-m", "MaskSAMCore", "train", str(phantoms), str(model_dir),
                           "--preset", "tiny"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("masksam: error: model folder")


def test_model_folder_under_a_file_is_refused_before_any_work(phantoms, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder was expected")
    assert main(["train", str(phantoms), str(blocker / "model"), "--preset", "tiny", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"masksam: error: {blocker / 'model'}: cannot create the model folder: "
                           f"{blocker} is a file, not a folder")    # refused before reading the dataset
    assert blocker.read_text() == "a file where a folder was expected"


def test_a_model_folder_on_a_read_only_file_system_is_called_so_not_a_permission_problem(phantoms, tmp_path,
                                                                                          capsys, monkeypatch):
    """As on a read-only mount (a snapshot, a DVD, a read-only share), where access() refuses too."""
    import MaskSAMCore.paths as paths

    statvfs = os.statvfs
    monkeypatch.setattr(paths.os, "statvfs", lambda path: SimpleNamespace(f_flag=statvfs(path).f_flag | os.ST_RDONLY))
    monkeypatch.setattr(paths.os, "access", lambda path, mode: False)
    model_dir = tmp_path / "model"
    assert main(["train", str(phantoms), str(model_dir), "--preset", "tiny", "--epochs", "1"]) == 1
    assert _error_line(capsys) == (f"masksam: error: {model_dir}: cannot write the model folder: {tmp_path} is on a "
                                   "read-only file system; choose a folder on a writable disk")


def test_an_operating_system_error_is_one_line_naming_the_file(monkeypatch, capsys):
    """A full disk or a folder deleted under a running job: one line, exit 1, no traceback."""
    import errno

    import MaskSAMCore.cli as cli

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/model/checkpoint_latest.pt")

    monkeypatch.setattr(cli, "resolve_handler", lambda command: full_disk)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "masksam: error: /data/model/checkpoint_latest.pt: No space left on device"


@pytest.mark.parametrize("rank, expected", [("0", ["masksam: cancelled"]), ("1", [])])
def test_under_torchrun_only_rank_0_says_cancelled(monkeypatch, capsys, rank, expected):
    """Ctrl-C reaches every rank: one line for the job, not one per process."""
    import MaskSAMCore.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(cli, "resolve_handler", lambda command: interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err.splitlines() == expected


@pytest.mark.parametrize("rank, expected", [("0", ["masksam: error: rank 1 failed: case_007: not an image"]),
                                             ("1", [])])
def test_under_torchrun_another_ranks_relayed_error_is_printed_once(monkeypatch, capsys, rank, expected):
    import MaskSAMCore.cli as cli
    from MaskSAMCore.errors import RankFailed

    def relayed(args):
        raise RankFailed("rank 1 failed: case_007: not an image")

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(cli, "resolve_handler", lambda command: relayed)
    assert main(["info"]) == 1
    assert capsys.readouterr().err.splitlines() == expected


def test_a_broken_connection_outside_torchrun_is_not_taken_for_a_peers_failure(monkeypatch):
    import MaskSAMCore.cli as cli

    def bug(args):
        raise RuntimeError("Connection closed by peer")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(cli, "resolve_handler", lambda command: bug)
    with pytest.raises(RuntimeError):
        main(["info"])


def test_train_defaults_to_the_papers_schedule():
    # Appendix A: 1000 epochs of 250 iterations, SGD at lr 0.01, batch size 2.
    from MaskSAMCore.cli import build_parser, train_arguments
    from MaskSAMCore.training.run import settings_from_arguments

    settings = settings_from_arguments(train_arguments(build_parser().parse_args(["train", "data", "model"])))
    assert (settings.epochs, settings.iters_per_epoch, settings.optimizer, settings.lr,
            settings.batch_size) == (1000, 250, "sgd", 0.01, 2)


def test_too_few_cases_for_a_fold_are_refused_before_planning_and_preprocessing(tmp_path, capsys, monkeypatch):
    import MaskSAMCore.training.run as run

    dataset = make_phantoms(tmp_path / "ds3", cases=3, seed=4, size=(24, 24, 8), progress=False)
    started = []
    monkeypatch.setattr(run, "preprocess_dataset", lambda *args, **kwargs: started.append("preprocess"))
    model_dir = tmp_path / "model"
    assert main(["train", str(dataset), str(model_dir), "--preset", "tiny", "--random-init", "--epochs", "1",
                 "--device", "cpu"]) == 1
    assert _error_line(capsys) == (f"masksam: error: {dataset}: 3 training case(s) are too few for 5-fold "
                                   "cross-validation; train with --fold all")
    assert started == [] and not model_dir.exists()


def _copy_with_labels(phantoms, folder, relabel):
    """A copy of the phantoms whose label maps go through `relabel` (an array -> array function)."""
    import shutil

    copy = Path(shutil.copytree(phantoms, folder))
    for label_file in sorted((copy / "labelsTr").glob("*.nii.gz")):
        label, geometry = read_label(label_file)
        write_label(relabel(label), geometry, label_file)
    return copy


def _train_until_fit(dataset, model_dir, monkeypatch):
    """`masksam train` through every check, planning and preprocessing, stopped where it would fit."""
    from MaskSAMCore.errors import Cancelled
    from MaskSAMCore.training.trainer import Trainer

    def cancelled(self):
        raise Cancelled("cancelled by signal SIGTERM")

    monkeypatch.setattr(Trainer, "fit", cancelled)
    return main(["train", str(dataset), str(model_dir), "--preset", "tiny", "--random-init", "--epochs", "1",
                 "--iters-per-epoch", "1", "--device", "cpu", "--num-workers", "0"])


def test_label_maps_without_foreground_are_refused_before_any_work(phantoms, tmp_path, capsys):
    empty = _copy_with_labels(phantoms, tmp_path / "empty", lambda label: np.zeros_like(label))
    model_dir = tmp_path / "model"
    assert main(["train", str(empty), str(model_dir), "--preset", "tiny", "--epochs", "1"]) == 1
    assert _error_line(capsys) == (f"masksam: error: {empty}: no label map in labelsTr holds any structure "
                                   "(every voxel is background 0); there is nothing to learn")
    assert not model_dir.exists()


def test_a_declared_label_no_case_holds_is_one_warning_and_training_goes_on(phantoms, tmp_path, capsys,
                                                                            monkeypatch):
    no_aorta = _copy_with_labels(phantoms, tmp_path / "no_aorta", lambda label: np.where(label == 5, 1, label))
    assert _train_until_fit(no_aorta, tmp_path / "model", monkeypatch) == 130   # it got as far as training
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam: warning:")]
    assert warnings == [f"masksam: warning: {no_aorta}: label(s) 'aorta' (5) declared in dataset.json appear in "
                        "no training case; the model cannot learn to segment them"]


def test_an_unrelated_file_in_imagests_does_not_stop_training(phantoms, tmp_path, capsys, monkeypatch):
    import shutil

    dataset = Path(shutil.copytree(phantoms, tmp_path / "with_imagesTs"))
    (dataset / "imagesTs").mkdir()
    shutil.copy(dataset / "imagesTr" / "phantom_000_0000.nii.gz", dataset / "imagesTs" / "scan.nii.gz")
    assert _train_until_fit(dataset, tmp_path / "model", monkeypatch) == 130
    assert "masksam: error" not in capsys.readouterr().err


def test_resuming_with_another_number_of_processes_says_the_batch_changes(phantoms, tmp_path, capsys):
    """--batch-size is per process: a run trained by 2 torchrun processes and resumed by one
    trains on half the patches per step from then on, which the user is told."""
    from MaskSAMCore.model_folder import load_checkpoint, save_checkpoint

    model_dir = tmp_path / "model"
    assert main(_train_arguments(phantoms, model_dir)) == 0
    latest = model_dir / "checkpoint_latest.pt"
    payload = load_checkpoint(latest)
    assert payload["world_size"] == 1
    # as written by 2 ranks (one random state each); checkpoints before "world_size" are told by these
    payload.update(rng=payload["rng"] * 2, world_size=2)
    save_checkpoint(latest, payload)
    capsys.readouterr()

    assert main(_train_arguments(phantoms, model_dir) + ["--resume", "--epochs", "2"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "process" in line]
    assert notes == ["masksam: note: trained with 2 processes, now 1 process: 2 patches per step instead of 4 "
                     "(--batch-size 2 is per process)"]
