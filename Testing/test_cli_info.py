"""The smoke command of a fresh install (`masksam info`) and the checks every command makes first."""

import subprocess
import sys
from pathlib import Path

import pytest


def test_info_prints_parameter_table_and_runs_forward():
    result = subprocess.run([sys.executable, "-m", "MaskSAMCore", "info", "--preset", "tiny", "--forward",
                             "--classes", "4"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "prompt generator" in result.stdout and "total" in result.stdout
    assert "-> class scores (1, 4, 4, 64, 64)" in result.stdout


def test_unknown_preset_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "MaskSAMCore", "info", "--preset", "vit_x"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_a_too_old_pytorch_is_one_line_before_any_work(monkeypatch, capsys):
    import importlib.metadata

    from MaskSAMCore.cli import main

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.3.1" if name == "torch" else "1.0")
    assert main(["info", "--preset", "tiny"]) == 1
    assert capsys.readouterr().err.strip() == "masksam: error: PyTorch 2.3.1 is too old; MaskSAM needs 2.4 or newer"


@pytest.mark.parametrize("arguments,expected", [
    (["predict", "m", "in.nrrd", "out.nrrd", "--step", "0"], "argument --step: must be a fraction of the patch size in (0, 1]"),
    (["predict", "m", "in.nrrd", "out.nrrd", "--step", "1.5"], "argument --step: must be a fraction"),
    (["predict", "m", "in.nrrd", "out.nrrd", "--window-batch", "0"], "argument --window-batch: must be at least 1"),
    (["benchmark", "--classes", "1"], "argument --classes: must be at least 2"),
    (["info", "--classes", "two"], "argument --classes: not a whole number: 'two'"),
    (["demo", "--cases", "3"], "argument --cases: must be at least 5"),
    (["demo", "--minutes", "nan"], "argument --minutes: must be a positive number, not nan"),
    (["info", "--channels", "0"], "argument --channels: must be at least 1, not 0"),
    (["benchmark", "--shape", "1", "64", "64"], "argument --shape: must be at least 2, not 1"),
    (["train", "d", "m", "--num-workers", "-2"], "argument --num-workers: must be at least 0, not -2"),
    # argparse reports these from the top-level parser; the line names the sub-command's help
    (["train", "d", "m", "--epochz", "3"],
     "train: unrecognized arguments: --epochz 3; did you mean --epochs? (see 'masksam train --help')"),
    (["predict", "m", "i", "o", "--no-mirorr"], "--no-mirorr; did you mean --no-mirror? (see"),
    (["predict", "m", "i", "o", "--zzz"], "unrecognized arguments: --zzz (see"),   # nothing close: no guess
    (["evaluate", "p", "t", "x"], "evaluate: unrecognized arguments: x (see 'masksam evaluate --help')"),
])
def test_out_of_range_numbers_are_usage_errors_before_any_work(arguments, expected, capsys):
    from MaskSAMCore.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(arguments)
    assert stopped.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()   # one line, as any other error
    assert len(said) == 1 and said[0].startswith("masksam: error:") and expected in said[0], said


@pytest.mark.parametrize("value, on", [("", False), ("0", False), ("false", False), ("No", False),
                                       ("off", False), ("1", True), ("yes", True), ("TRUE", True)])
def test_environment_switches_read_false_as_off(monkeypatch, value, on):
    from MaskSAMCore.inference.predictor import PredictOptions
    from MaskSAMCore.paths import environment_flag

    monkeypatch.setenv("MASKSAM_COMPILE", value)
    assert environment_flag("MASKSAM_COMPILE") is on and PredictOptions().compile is on


def test_an_empty_xdg_cache_home_is_unset_not_the_working_folder(monkeypatch, tmp_path):
    from MaskSAMCore.paths import masksam_home

    if sys.platform in ("win32", "darwin"):
        pytest.skip("XDG applies to Linux and other Unix systems")
    monkeypatch.delenv("MASKSAM_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert masksam_home() == tmp_path / ".cache" / "masksam"


@pytest.mark.parametrize("failure, expected", [
    (MemoryError(), "out of memory: the machine cannot hold what this asks for"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 6400000256 bytes"), "out of memory: the machine cannot hold"),
])
def test_running_out_of_memory_is_one_line_not_a_traceback(monkeypatch, capsys, failure, expected):
    from MaskSAMCore import cli

    def handler(args):
        raise failure

    monkeypatch.setattr(cli, "resolve_handler", lambda command: handler)
    assert cli.main(["info", "--preset", "tiny"]) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(f"masksam: error: {expected}"), said


@pytest.mark.parametrize("arguments, advice", [
    (["predict", "model", "ct.nii.gz", "labels.nii.gz"],
     "close other programs, leave out --probabilities if given, or use a machine with more memory"),
    (["make-phantoms", "out", "--size", "600", "600", "400"], "choose a smaller --size"),
    (["benchmark", "--preset", "tiny"], "choose a smaller --shape or fewer --classes"),
    (["info", "--preset", "tiny"], "close other programs or use a machine with more memory"),
])
def test_running_out_of_host_memory_names_only_what_the_command_can_change(monkeypatch, capsys, arguments, advice):
    """predict has neither --size nor --classes: each command's line names its own options, or none."""
    from MaskSAMCore import cli

    def handler(args):
        raise MemoryError()

    monkeypatch.setattr(cli, "resolve_handler", lambda command: handler)
    assert cli.main(arguments) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert said == [f"masksam: error: out of memory: the machine cannot hold what this asks for; {advice}"]


@pytest.mark.parametrize("arguments, advice", [
    (["predict", "model", "ct.nii.gz", "labels.nii.gz"],
     "free the GPU of other work, lower MASKSAM_GPU_MEMORY_GB or --window-batch, or use --device cpu"),
    (["train", "dataset", "model"], "free the GPU of other work, or lower --batch-size"),
    (["benchmark", "--preset", "tiny"],
     "free the GPU of other work, or lower MASKSAM_GPU_MEMORY_GB, --window-batch or --shape"),
    (["info", "--preset", "tiny"], "free the GPU of other work, or use --device cpu"),
])
def test_running_out_of_gpu_memory_names_only_what_the_command_can_change(monkeypatch, capsys, arguments, advice):
    """--batch-size is train's, --window-batch predict's and benchmark's: neither is offered elsewhere."""
    from MaskSAMCore import cli

    class OutOfMemoryError(RuntimeError):   # torch's own is named so; no torch needed here
        pass

    def handler(args):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "resolve_handler", lambda command: handler)
    assert cli.main(arguments) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"masksam: error: out of GPU memory; {advice}"]


def test_a_bug_is_not_disguised_as_a_user_error(monkeypatch):
    from MaskSAMCore import cli

    def handler(args):
        raise RuntimeError("shape mismatch in a matmul")

    monkeypatch.setattr(cli, "resolve_handler", lambda command: handler)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["info", "--preset", "tiny"])


def test_a_tilde_the_shell_left_alone_is_the_home_folder(monkeypatch, tmp_path):
    """`--output=~/report.json` reaches MaskSAM unexpanded; it must not make a folder named '~'."""
    from MaskSAMCore.cli import build_parser

    monkeypatch.setenv("HOME", str(tmp_path))
    args = build_parser().parse_args(["evaluate", "~/pred", "~/gt", "--output=~/report.json",
                                      "--dataset-json=~/dataset.json"])
    assert (args.prediction, args.output, args.dataset_json) == (
        f"{tmp_path}/pred", f"{tmp_path}/report.json", f"{tmp_path}/dataset.json")
    assert build_parser().parse_args(["predict", "~/m", "~/in", "~/out/"]).output == f"{tmp_path}/out/"


def test_every_option_with_a_default_says_it_in_its_help():
    import argparse

    from MaskSAMCore.cli import build_parser, command_parsers

    flags = (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction)
    silent = [f"{command} {'/'.join(action.option_strings) or action.dest}"
              for command, parser in command_parsers(build_parser()).items() for action in parser._actions
              if (action.option_strings or action.nargs == "?") and not isinstance(action, flags)
              and "default" not in (action.help or "")]
    assert silent == []


def test_the_largest_seed_and_a_window_step_of_1_are_accepted():
    from MaskSAMCore.cli import build_parser

    args = build_parser().parse_args(["train", "d", "m", "--seed", "4294967295"])
    assert args.seed == 4294967295
    assert build_parser().parse_args(["predict", "m", "i.nrrd", "o.nrrd", "--step", "1"]).step == 1.0


@pytest.mark.parametrize("arguments, expected", [
    (["train", "d", "m", "--lr", "inf"], "argument --lr: must be a positive number, not inf"),
    (["demo", "--minutes", "inf"], "argument --minutes: must be a positive number, not inf"),
    (["train", "d", "m", "--iters-per-epoch", "0"], "argument --iters-per-epoch: must be at least 1, not 0"),
    (["train", "d", "m", "--val-cases-per-epoch", "0"], "argument --val-cases-per-epoch: must be at least 1"),
    (["benchmark", "--repeat", "0"], "argument --repeat: must be at least 1, not 0"),
    (["make-phantoms", "o", "--seed", "4294967296"], "argument --seed: must be at most 4294967295"),
    (["make-phantoms", "o", "--annotate-every", "0"], "argument --annotate-every: must be at least 1, not 0"),
    (["train", "d", ""], "argument model_dir: an empty path (an unset variable in a script?)"),   # "$OUT" unset
    (["predict", "m", " ", "o"], "argument input: an empty path"),
])
def test_more_out_of_range_values_are_usage_errors(arguments, expected, capsys):
    from MaskSAMCore.cli import build_parser

    with pytest.raises(SystemExit) as stopped:   # parsed only: a mutant must not start the command
        build_parser().parse_args(arguments)
    assert stopped.value.code == 2 and expected in capsys.readouterr().err


def test_environment_numbers_refuse_infinity_and_accept_their_maximum(monkeypatch):
    from MaskSAMCore.errors import MaskSAMError
    from MaskSAMCore.paths import environment_number

    monkeypatch.setenv("MASKSAM_TEST_NUMBER", "inf")
    with pytest.raises(MaskSAMError, match="MASKSAM_TEST_NUMBER='inf' is not a budget"):
        environment_number("MASKSAM_TEST_NUMBER", 8.0, "a budget")
    monkeypatch.setenv("MASKSAM_TEST_NUMBER", "10")
    assert environment_number("MASKSAM_TEST_NUMBER", 8.0, "a budget", maximum=10.0) == 10.0
    monkeypatch.setenv("MASKSAM_TEST_NUMBER", "   ")
    assert environment_number("MASKSAM_TEST_NUMBER", 8.0, "a budget") == 8.0


def test_shorten_cuts_at_a_late_sentence_end_or_a_word():
    from MaskSAMCore.errors import shorten

    early = "Bad. " + " ".join(["word"] * 60)                  # the sentence ends in the first half
    assert shorten(early, 100).startswith("Bad. word word")
    late = " ".join(["word"] * 12) + ". " + " ".join(["more"] * 40)
    assert shorten(late, 100) == " ".join(["word"] * 12) + "."
    listed = ", ".join(["item"] * 50)
    assert shorten(listed, 100).endswith("item ...")            # no dangling comma


@pytest.mark.parametrize("text", ["a" * 158 + " " + "b" * 50, "x" * 300, "word " * 60])
def test_shorten_keeps_its_limit(text):
    from MaskSAMCore.errors import shorten

    assert len(shorten(text)) <= 160 and shorten(text).endswith("...")


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


class _InterruptedImport:
    """Stands for MaskSAMCore.cli while Ctrl-C lands in its import: taking `main` from it is interrupted."""

    def __getattr__(self, name):
        _ctrl_c()


@pytest.mark.parametrize("interrupted", ["import", "parsing"])
def test_ctrl_c_before_the_command_handles_it_is_a_cancel_not_a_traceback(monkeypatch, capsys, interrupted):
    """A Ctrl-C in the first second (torch still importing) ends `masksam` as a later one does."""
    from MaskSAMCore import __main__ as entry, cli

    if interrupted == "import":
        monkeypatch.setitem(sys.modules, "MaskSAMCore.cli", _InterruptedImport())
    else:
        monkeypatch.setattr(cli, "build_parser", _ctrl_c)
    monkeypatch.setattr(sys, "argv", ["masksam", "info", "--preset", "tiny"])
    assert entry.run() == 130
    assert capsys.readouterr().err == "masksam: cancelled\n"


def test_the_masksam_command_starts_where_an_early_ctrl_c_is_handled():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert 'masksam = "MaskSAMCore.__main__:run"' in text
