"""`masksam demo` (the README's main job; run whole by ./scripts/run-demo.sh, not in CI): its
training budget and its refusal to overwrite a folder it did not write."""

from MaskSAMCore.cli import main
from MaskSAMCore.inference.demo import MIN_EPOCHS, MIN_ITERATIONS, training_schedule


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
    assert main(["demo", str(tmp_path / "demo"), "--device", "cpu"]) == 130
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam:")]
    assert said == ["masksam: cancelled by signal SIGTERM"]     # not also "error: the demo step failed"
