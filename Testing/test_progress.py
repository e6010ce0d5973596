"""The progress bar as a person sees it: redrawn in place in a terminal, a few whole lines in a
log file, and never sharing its line with other output."""

from __future__ import annotations

import io
import re
from pathlib import Path

from MaskSAMCore import progress
from MaskSAMCore.progress import Progress, enable_machine_lines, print_message, print_note, print_warning


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_terminal_the_bar_redraws_one_line_and_other_output_starts_on_its_own():
    screen = Terminal()
    bar = Progress("train", total=10, stream=screen, min_interval_s=0.0)
    for _ in range(5):
        bar.advance()
    assert "\n" not in screen.getvalue()  # one line, redrawn with carriage returns
    bar.end_line()
    bar.end_line()  # a second call adds no empty line
    assert screen.getvalue().count("\n") == 1 and screen.getvalue().endswith("\n")
    screen.write("epoch 1: loss 0.5\n")  # what the trainer prints between epochs
    for _ in range(5):
        bar.advance()
    lines = screen.getvalue().split("\n")
    assert lines[1] == "epoch 1: loss 0.5"
    assert lines[2].lstrip("\r").startswith("train: [")


def test_in_a_log_file_end_line_writes_nothing():
    log = io.StringIO()
    bar = Progress("train", total=10, stream=log, min_interval_s=0.0)
    for _ in range(10):
        bar.advance()
    before = log.getvalue()
    bar.end_line()
    assert log.getvalue() == before
    assert all(line.startswith("train: [") for line in before.splitlines())


def test_a_log_file_gets_a_line_per_tenth_even_when_steps_come_faster_than_the_bar_draws():
    """Fast steps (many per half second) used to skip the lines of most tenths: a log showed
    1/600, 300/600 and 600/600 and nothing for minutes in between."""
    log = io.StringIO()
    bar = Progress("train", total=600, stream=log, min_interval_s=3600.0)   # the timer never fires
    for _ in range(600):
        bar.advance()
    bar.close()
    done = [int(line.split("] ")[1].split("/")[0]) for line in log.getvalue().splitlines()]
    assert done == [1, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600]


def test_a_resumed_bar_starts_where_the_first_run_stopped_and_rates_only_its_own_steps(capsys):
    """A training resumed after 6 of 10 epochs: the bar (and the Slicer module's, from the machine
    lines) starts at 60%, and the rate and ETA count only the steps this run took."""
    from MaskSAMCore.progress import enable_machine_lines, parse_machine_line

    log = io.StringIO()
    enable_machine_lines(True)
    try:
        bar = Progress("train", total=100, stream=log, min_interval_s=0.0, done_before=60)
        bar.start -= 10.0          # ten seconds ago
        for _ in range(10):
            bar.advance()
    finally:
        enable_machine_lines(False)
    events = [parse_machine_line(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0] == {"event": "stage", "stage": "train", "total": 100, "done": 60}
    assert events[-1]["done"] == 70 and events[-1]["fraction"] == 0.7
    assert 29.0 < bar.eta_s() < 31.0       # 10 steps in 10 s, 30 to go (not 70 steps in 10 s)
    assert log.getvalue().splitlines()[-1].startswith("train: [################--------] 70/100 it ")


def test_messages_notes_and_warnings_are_one_prefixed_line_each_on_stderr(capsys):
    enable_machine_lines(True)
    try:
        print_message("retrying")
        print_message("a file was replaced", event=True)
        print_note("the run now lasts 5 epoch(s)")
        print_warning("a case changed")
    finally:
        enable_machine_lines(False)
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["masksam: retrying", "masksam: a file was replaced",
                                         "masksam: note: the run now lasts 5 epoch(s)",
                                         "masksam: warning: a case changed"]
    assert captured.out.splitlines() == ['@masksam {"event": "message", "message": "a file was replaced"}',
                                         '@masksam {"event": "warning", "message": "a case changed"}']


def test_every_event_the_slicer_module_reads_is_one_the_core_names():
    """The Slicer module compares the "event" field with literal words; each must be an EVENT_*."""
    named = {value for name, value in vars(progress).items() if name.startswith("EVENT_")}
    lib = Path(__file__).resolve().parents[1] / "MaskSAMSegment" / "MaskSAMSegmentLib"
    text = "".join((lib / name).read_text(encoding="utf-8") for name in ("job_progress.py", "job_runner.py",
                                                                         "training_job.py"))
    read = set(re.findall(r'(?:kind|event\.get\("event"\)) == "(\w+)"', text))
    assert len(read) >= 5 and read <= named, read - named
