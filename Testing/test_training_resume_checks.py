"""What `masksam train --resume` refuses or says before any work: another dataset, a folder in
which another training runs, and command-line settings the resumed run does not use; and
`--epochs` with `--resume`, which trains a finished run longer."""

import json
import shutil
from pathlib import Path

import pytest

from MaskSAMCore.cli import main
from MaskSAMCore.data.phantoms import make_phantoms
from MaskSAMCore.progress import enable_machine_lines
from MaskSAMCore.training.folder_lock import training_lock

TINY = ["--preset", "tiny", "--random-init", "--epochs", "1", "--iters-per-epoch", "2", "--num-workers", "0",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_checks")
    dataset = make_phantoms(root / "ds", cases=5, seed=3, size=(32, 32, 10), progress=False)
    model_dir = root / "model"
    try:
        assert main(["train", str(dataset), str(model_dir), *TINY]) == 0
    finally:
        enable_machine_lines(False)
    return dataset, model_dir


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_resume_on_another_dataset_is_refused_before_any_work(trained, tmp_path, capsys):
    _, model_dir = trained
    before = _files(model_dir)
    more = make_phantoms(tmp_path / "more", cases=6, seed=3, size=(32, 32, 10), progress=False)
    assert main(["train", str(more), str(model_dir), "--resume", "--device", "cpu"]) == 1
    assert "not the dataset the training in" in (error := _error(capsys))
    assert "1 case(s) not in it (phantom_005)" in error
    renamed = make_phantoms(tmp_path / "renamed", cases=5, seed=3, size=(32, 32, 10), progress=False)
    for path in sorted((renamed / "imagesTr").iterdir()) + sorted((renamed / "labelsTr").iterdir()):
        path.rename(path.with_name(path.name.replace("phantom", "case")))
    assert main(["train", str(renamed), str(model_dir), "--resume", "--device", "cpu"]) == 1
    assert "5 case(s) not in it (case_000, case_001, case_002, ...); 5 of its case(s) missing" in _error(capsys)
    assert _files(model_dir) == before   # nothing preprocessed, nothing written


def test_a_second_training_in_a_busy_folder_is_refused(trained, capsys):
    dataset, model_dir = trained
    before = _files(model_dir)
    with training_lock(model_dir):   # as a running `masksam train` holds it
        assert main(["train", str(dataset), str(model_dir), "--resume", "--device", "cpu"]) == 1
    assert "another masksam train is running in this folder" in _error(capsys)
    assert _files(model_dir) == before


def test_a_training_still_in_its_first_epoch_is_called_running_not_stopped_and_keeps_its_files(trained, tmp_path,
                                                                                                  capsys):
    """Before its first checkpoint a running training's folder looks like a stopped one's; a
    second `train` (with or without --resume) must say it runs, and must not clear its files."""
    dataset, _ = trained
    busy = tmp_path / "busy"
    (busy / "preprocessed").mkdir(parents=True)
    (busy / "preprocessed" / "phantom_000.npy").write_bytes(b"being written")   # what the first run has so far
    before = _files(busy)
    with training_lock(busy):
        for resume in ([], ["--resume"]):
            assert main(["train", str(dataset), str(busy), *TINY, *resume]) == 1
            assert "another masksam train is running in this folder" in _error(capsys)
    assert _files(busy) == before


def test_a_stray_rank_outside_torchrun_does_not_skip_the_busy_folder_check(tmp_path, monkeypatch, capsys):
    """RANK exported by hand without WORLD_SIZE is a plain run, whose rank is 0: it must still see
    the training that runs in the folder (it used to take itself for rank 1 and skip the check)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "1")
    busy = tmp_path / "busy"
    busy.mkdir()
    with training_lock(busy):
        assert main(["train", str(tmp_path / "no_dataset"), str(busy), *TINY]) == 1
    assert "another masksam train is running in this folder" in _error(capsys)


def test_changed_cases_and_ignored_options_are_said_on_resume(trained, tmp_path, capsys):
    dataset, model_dir = trained
    other = make_phantoms(tmp_path / "other", cases=5, seed=4, size=(32, 32, 10), progress=False)
    try:
        assert main(["train", str(other), str(model_dir), "--resume", "--device", "cpu", "--seed", "9",
                     "--lr", "0.5"]) == 0
    finally:
        enable_machine_lines(False)
    err = capsys.readouterr().err
    assert "masksam: warning: 5 case(s) changed since the run started (phantom_000, phantom_001, phantom_002, ...)" \
        in err
    assert "masksam: note: a resumed run keeps its own settings; ignored here: --lr 0.5 (the run's 0.01), " \
           "--seed 9 (the run's 12345)" in err


def test_a_finished_run_is_trained_longer_with_epochs_on_resume(trained, tmp_path, capsys):
    """--epochs with --resume is the run's new length: the finished 1-epoch run gets a second
    epoch, its poly learning rate taken over 2 epochs; cutting it below what it has finished is
    refused without touching anything."""
    from MaskSAMCore.training.schedule import poly_lr
    from MaskSAMCore.training.training_log import read_csv

    dataset, trained_dir = trained
    model_dir = shutil.copytree(trained_dir, tmp_path / "model")
    try:
        assert main(["train", str(dataset), str(model_dir), "--resume", "--device", "cpu", "--num-workers", "0",
                     "--epochs", "2"]) == 0
    finally:
        enable_machine_lines(False)
    err = capsys.readouterr().err
    assert "masksam: note: the run now lasts 2 epoch(s) instead of 1; the poly learning rate follows the new " \
           f"length (the next epoch's: {poly_lr(0.01, 1, 2):.3g})" in err
    assert "ignored" not in err
    rows = read_csv(model_dir / "training_log.csv")
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert float(rows[1]["lr"]) == pytest.approx(poly_lr(0.01, 1, 2))
    training = json.loads((model_dir / "model.json").read_text())["training"]
    assert (training["epochs"], training["finished_epochs"]) == (2, 2)

    before = _files(model_dir)
    assert main(["train", str(dataset), str(model_dir), "--resume", "--device", "cpu", "--epochs", "1"]) == 1
    assert _error(capsys) == (f"masksam: error: the training in {model_dir} has finished 2 epochs already: "
                              "--epochs 1 cannot end it sooner (give at least 2)")
    assert _files(model_dir) == before


def test_an_unfinished_run_keeps_its_length_or_ends_sooner_but_not_before_its_finished_epochs(
        trained, monkeypatch, capsys):
    """A run planned for 3 epochs and stopped after its first: without --epochs it still lasts 3;
    --epochs 2 shortens it (the poly learning rate over 2 epochs); --epochs 1 ends it now, with a
    note saying so rather than a next epoch's learning rate."""
    from MaskSAMCore.cli import build_parser, train_arguments
    from MaskSAMCore.data.dataset import load_raw_dataset
    from MaskSAMCore.training import checkpoint_io
    from MaskSAMCore.training.run import load_resumed_run
    from MaskSAMCore.training.schedule import poly_lr

    dataset, model_dir = trained
    read = checkpoint_io.read_for_resume

    def planned_for_three_epochs(folder):
        payload = read(folder)
        assert int(payload["epoch"]) == 1
        return {**payload, "settings": {**payload["settings"], "epochs": 3}}

    monkeypatch.setattr(checkpoint_io, "read_for_resume", planned_for_three_epochs)
    raw = load_raw_dataset(dataset, progress=False)

    def resumed(*options, announce=True):
        args = build_parser().parse_args(["train", str(dataset), str(model_dir), "--resume", *options])
        epochs = load_resumed_run(train_arguments(args), model_dir, raw, announce=announce).settings.epochs
        return epochs, [line for line in capsys.readouterr().err.splitlines() if "now lasts" in line]

    assert resumed() == (3, []) and resumed("--epochs", "3") == (3, [])
    next_lr = poly_lr(0.01, 1, 2)
    assert resumed("--epochs", "2") == (2, ["masksam: note: the run now lasts 2 epoch(s) instead of 3; the poly learning "
                                            f"rate follows the new length (the next epoch's: {next_lr:.3g})"])
    assert resumed("--epochs", "1") == (1, ["masksam: note: the run now lasts 1 epoch(s) instead of 3; it ends now, "
                                            "with its last finished epoch as the final model"])
    assert resumed("--epochs", "2", announce=False) == (2, [])   # the other ranks of a multi-GPU run


def test_a_preprocessed_file_cut_short_is_preprocessed_anew_on_resume(trained, tmp_path, capsys):
    """A model folder copied to a GPU server by a copy that broke off: found when the run is
    resumed, not hours later when a batch happens to read it."""
    import numpy as np

    dataset, trained_dir = trained
    model_dir = shutil.copytree(trained_dir, tmp_path / "model")
    damaged = model_dir / "preprocessed" / "phantom_002_seg.npy"
    damaged.write_bytes(damaged.read_bytes()[:200])
    try:
        assert main(["train", str(dataset), str(model_dir), "--resume", "--device", "cpu", "--num-workers", "0",
                     "--epochs", "2"]) == 0
    finally:
        enable_machine_lines(False)
    assert np.load(damaged).shape == np.load(model_dir / "preprocessed" / "phantom_002.npy").shape[1:]   # whole


def test_a_restart_with_fewer_cases_in_a_killed_runs_folder_can_be_resumed_later(trained, tmp_path):
    """A run killed before its first checkpoint, started again on the dataset without one case:
    what the killed run kept of that case (its preprocessed files, its fold-0 splits.json) must
    not make a later --resume refuse the dataset."""
    from MaskSAMCore.folder_layout import never_checkpointed

    dataset, trained_dir = trained
    killed = tmp_path / "model"
    shutil.copytree(trained_dir, killed)
    for entry in killed.iterdir():   # what a run killed in its first epoch leaves
        if entry.name not in ("model.json", "plans.json", "dataset.json", "splits.json", "preprocessed"):
            entry.unlink()
    assert never_checkpointed(killed)
    fewer = Path(shutil.copytree(dataset, tmp_path / "fewer"))
    for path in [*fewer.glob("imagesTr/phantom_004*"), *fewer.glob("labelsTr/phantom_004*")]:
        path.unlink()
    meta = json.loads((fewer / "dataset.json").read_text())
    (fewer / "dataset.json").write_text(json.dumps({**meta, "numTraining": meta["numTraining"] - 1}))
    try:
        assert main(["train", str(fewer), str(killed), *TINY, "--fold", "all"]) == 0
        assert not list((killed / "preprocessed").glob("phantom_004*"))
        assert main(["train", str(fewer), str(killed), "--resume", "--epochs", "2", "--device", "cpu",
                     "--num-workers", "0"]) == 0
    finally:
        enable_machine_lines(False)
