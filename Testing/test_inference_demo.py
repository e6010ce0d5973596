"""`masksam demo` (the README's main job; run whole by ./scripts/run-demo.sh, not in CI): its
training budget, its refusal to overwrite a folder it did not write, and what it leaves when a
step fails."""

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
