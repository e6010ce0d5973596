"""Prediction, evaluation and benchmarking started from Python with the argument dataclasses of
`MaskSAMCore.inference.arguments`, no command line; and the command line's options all reach them."""

import json

import pytest

from MaskSAMCore.cli import ARGUMENT_TYPES, build_parser, command_arguments, command_parsers, run_command
from MaskSAMCore.data.image_io import read_geometry
from MaskSAMCore.errors import MaskSAMError
from MaskSAMCore.inference.arguments import BenchmarkArguments, DemoArguments, EvaluateArguments, PredictArguments
from MaskSAMCore.inference.benchmark import run_benchmark
from MaskSAMCore.inference.demo import run_demo
from MaskSAMCore.inference.evaluate import run_evaluate
from MaskSAMCore.inference.run import run_predict

PARSER_ONLY = {"help", "command", "machine_progress"}


@pytest.mark.parametrize("command", sorted(ARGUMENT_TYPES))
def test_every_option_of_the_command_line_is_a_field_of_its_arguments(command):
    """A new option added to the parser but not to the dataclass would be dropped silently."""
    parser = command_parsers(build_parser())[command]
    destinations = {action.dest for action in parser._actions} - PARSER_ONLY
    fields = set(ARGUMENT_TYPES[command].__dataclass_fields__)
    assert destinations == fields


def test_parsed_options_become_the_arguments_a_python_caller_would_build():
    parsed = command_arguments(build_parser().parse_args(
        ["predict", "model", "scans", "out", "--no-mirror", "--step", "0.75", "--continue", "--device", "cpu"]))
    assert parsed == PredictArguments("model", "scans", "out", mirror=False, step=0.75, continue_run=True, device="cpu")


def test_a_case_is_segmented_and_scored_from_python(dicom_model_dir, phantom_dataset, tmp_path, capsys):
    image = phantom_dataset / "imagesTs" / "phantom_test_000_0000.nii.gz"
    truth = phantom_dataset / "labelsTs" / "phantom_test_000.nii.gz"
    output = tmp_path / "labels.nii.gz"
    assert run_predict(PredictArguments(dicom_model_dir, image, output, fast=True, device="cpu")) == 0
    assert read_geometry(output).same_grid(read_geometry(image), tol=1e-6)
    report = tmp_path / "report.json"
    arguments = EvaluateArguments(output, truth, dataset_json=phantom_dataset / "dataset.json", output=report)
    assert run_evaluate(arguments) == 0
    assert len(json.loads(report.read_text())["cases"]) == 1


@pytest.mark.parametrize("handler, arguments, message", [
    (run_predict, PredictArguments("m", "i", "o", step=1.5), "--step must be a fraction of the patch size in (0, 1]"),
    (run_predict, PredictArguments("m", "i", "o", window_batch=0), "--window-batch must be at least 1, not 0"),
    (run_predict, PredictArguments("m", "i", "o", checkpoint="last"), "--checkpoint must be final, best or latest"),
    (run_benchmark, BenchmarkArguments(shape=(8, 8)), "--shape needs three sizes"),
    (run_benchmark, BenchmarkArguments(shape=(8, 1, 8)), "--shape must be at least 2, not 1"),
    (run_benchmark, BenchmarkArguments(repeat=0), "--repeat must be at least 1"),
    (run_demo, DemoArguments(minutes=float("nan")), "--minutes must be a positive number"),
    (run_demo, DemoArguments(cases=4), "--cases must be at least 5, not 4"),
])
def test_arguments_built_in_python_are_range_checked_as_the_command_line_does(handler, arguments, message, tmp_path):
    with pytest.raises(MaskSAMError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        handler(arguments)


def test_a_bad_value_built_in_python_is_one_error_line_through_run_command(capsys):
    assert run_command("benchmark", BenchmarkArguments(step=0.0)) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "masksam: error: --step must be a fraction of the patch size in (0, 1], not 0"]
