"""`masksam demo` (the README's main job; run whole by ./scripts/run-demo.sh, not in CI): its
training budget, its refusal to overwrite a folder it did not write, and what it leaves when a
step fails."""

import os
from pathlib import Path

from MaskSAMCore.cli import main
from MaskSAMCore.inference.demo import MARKER, MIN_EPOCHS, MIN_ITERATIONS, training_schedule


def test_the_demo_never_trains_less_than_the_learning_test():
    for minutes, step_seconds in ((0.1, 1.0), (4.0, 0.3), (4.0, 5.0)):
        epochs, iterations = training_schedule(minutes, step_seconds)
        assert epochs >= MIN_EPOCHS and epochs * iterations >= MIN_EPOCHS * MIN_ITERATIONS - epochs
    epochs, iterations = training_schedule(20.0, 0.1)       # room for more: it trains longer
    assert epochs * iterations > 5 * MIN_EPOCHS * MIN_ITERATIONS


def test_a_folder_the_demo_did_not_write_is_left_alone(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    assert main(["demo", str(tmp_path), "--device", "cpu"]) == 1
    assert "was not written by the demo" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_a_cancelled_step_cancels_the_demo_with_one_line(tmp_path, capsys, monkeypatch):
    from MaskSAMCore.data import phantoms
    from MaskSAMCore.errors import Cancelled

    def interrupted(args):
        raise Cancelled("cancelled by signal SIGTERM")

    monkeypatch.setattr(phantoms, "run_make_phantoms", interrupted)
    assert main(["demo", str(tmp_path / "a" / "b" / "demo"), "--device", "cpu"]) == 130
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam:")]
    assert said == ["masksam: cancelled by signal SIGTERM"]     # not also "error: the demo step failed"
    assert list(tmp_path.iterdir()) == []   # the folders it made are gone with what it wrote


def test_a_demo_cancelled_while_training_does_not_advise_resuming_what_it_removes(tmp_path, capsys, monkeypatch):
    """A cancelled `masksam train` names the --resume command; the demo removes its folder when
    cancelled, so its training step must not send the user to a folder that is gone."""
    from pathlib import Path

    from MaskSAMCore.errors import Cancelled
    from MaskSAMCore.training.trainer import Trainer

    def cancelled_after_an_epoch(trainer):
        (Path(trainer.model_dir) / "checkpoint_latest.pt").write_bytes(b"epoch 1")
        raise Cancelled("cancelled by signal SIGTERM")

    monkeypatch.setattr(Trainer, "fit", cancelled_after_an_epoch)
    assert main(["demo", str(tmp_path / "demo"), "--device", "cpu", "--cases", "5", "--minutes", "0.01"]) == 130
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam:")]
    assert said == ["masksam: cancelled by signal SIGTERM"]
    assert list(tmp_path.iterdir()) == []


def _earlier_demo(folder):
    folder.mkdir()
    (folder / MARKER).write_text("written by `masksam demo`")
    (folder / "model").mkdir()
    (folder / "model" / "checkpoint_final.pt").write_bytes(b"weights")
    (folder / "evaluation.json").write_text("{}")
    return folder


def _fail_at_phantoms(monkeypatch):
    from MaskSAMCore.data import phantoms

    def broken(args):
        raise OSError("disk on fire")

    monkeypatch.setattr(phantoms, "run_make_phantoms", broken)


def test_files_beside_an_earlier_demo_are_named_and_nothing_is_deleted(tmp_path, capsys):
    demo = _earlier_demo(tmp_path / "demo")
    (demo / "my_notes.txt").write_text("keep me")
    assert main(["demo", str(demo), "--device", "cpu"]) == 1
    assert "holds an earlier demo and files it did not write (my_notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in demo.iterdir()) == [MARKER, "evaluation.json", "model", "my_notes.txt"]
    assert (demo / "model" / "checkpoint_final.pt").is_file()


def test_an_earlier_demo_in_the_current_folder_is_replaced_by_what_the_new_run_writes(tmp_path, capsys,
                                                                                      monkeypatch):
    """`masksam demo .` inside a demo folder: its results go, the folder itself stays."""
    demo = _earlier_demo(tmp_path / "demo")
    monkeypatch.chdir(demo)
    _fail_at_phantoms(monkeypatch)
    assert main(["demo", ".", "--device", "cpu"]) == 1
    assert "disk on fire" in capsys.readouterr().err
    assert demo.is_dir() and list(demo.iterdir()) == []   # nothing half-made left; the folder was there before


def _complete_earlier_demo(folder: Path) -> Path:
    folder.mkdir()
    (folder / MARKER).write_text("written by `masksam demo`")
    for name in ("dataset", "model", "predictions"):
        (folder / name).mkdir()
        (folder / name / "x").write_bytes(b"x")
    (folder / "evaluation.json").write_text("{}")
    (folder / "prediction_overlay.png").write_bytes(b"png")
    return folder


def test_a_complete_earlier_demo_is_cleared_before_the_first_step(tmp_path, capsys, monkeypatch):
    from MaskSAMCore.data import phantoms

    demo = _complete_earlier_demo(tmp_path / "demo")
    seen = []

    def first_step(args):
        seen.append(sorted(p.name for p in demo.iterdir()))
        raise OSError("disk on fire")

    monkeypatch.setattr(phantoms, "run_make_phantoms", first_step)
    assert main(["demo", str(demo), "--device", "cpu"]) == 1
    assert "disk on fire" in capsys.readouterr().err
    assert seen == [[MARKER]]            # make-phantoms gets an empty dataset folder to write
    assert list(demo.iterdir()) == []


def test_an_earlier_demo_entry_that_links_elsewhere_loses_only_the_link(tmp_path, capsys, monkeypatch):
    from MaskSAMCore.data import phantoms

    mine = tmp_path / "my_dataset"
    mine.mkdir()
    (mine / "scan.nii.gz").write_bytes(b"years of work")
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / MARKER).write_text("x")
    (demo / "dataset").symlink_to(mine, target_is_directory=True)

    def broken(args):
        raise OSError("disk on fire")

    monkeypatch.setattr(phantoms, "run_make_phantoms", broken)
    assert main(["demo", str(demo), "--device", "cpu"]) == 1
    assert "disk on fire" in capsys.readouterr().err
    assert (mine / "scan.nii.gz").read_bytes() == b"years of work"
    assert not os.path.lexists(demo / "dataset")


def test_a_demo_output_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "demo").write_text("mine")
    assert main(["demo", str(tmp_path / "demo"), "--device", "cpu"]) == 1
    assert "demo: exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "demo").read_text() == "mine"
