"""Training started from Python with a `TrainArguments`, no command line: the library needs no
argparse namespace, and the options a caller names are the ones a run uses."""

import json

import pytest

from MaskSAMCore.data.phantoms import make_phantoms
from MaskSAMCore.errors import MaskSAMError
from MaskSAMCore.training.arguments import TrainArguments
from MaskSAMCore.training.run import run_train


def test_a_run_is_trained_from_python_with_train_arguments(tmp_path):
    dataset = make_phantoms(tmp_path / "ds", cases=5, seed=3, size=(32, 32, 10), progress=False)
    model_dir = tmp_path / "model"
    arguments = TrainArguments(dataset, model_dir, preset="tiny", random_init=True, epochs=1, iters_per_epoch=2,
                               optimizer="adamw", num_workers=0, device="cpu")
    assert run_train(arguments) == 0
    training = json.loads((model_dir / "model.json").read_text())["training"]
    assert (training["epochs"], training["finished_epochs"], training["preset"]) == (1, 1, "tiny")


def test_train_arguments_built_in_python_are_range_checked_as_the_command_line_does(tmp_path):
    with pytest.raises(MaskSAMError, match="--iters-per-epoch must be at least 1"):
        run_train(TrainArguments(tmp_path / "ds", tmp_path / "model", iters_per_epoch=0, device="cpu"))
    with pytest.raises(MaskSAMError, match="--fold must be 0, 1, 2, 3, 4 or all, not '7'"):
        run_train(TrainArguments(tmp_path / "ds", tmp_path / "model", fold="7", device="cpu"))
    assert not (tmp_path / "model").exists()
