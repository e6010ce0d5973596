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


@pytest.mark.parametrize("inside, problem", [
    ("", "is the dataset folder; give a new folder for the model"),
    ("imagesTr/model", "lies inside the dataset's imagesTr folder, among its cases; give a folder outside it"),
    ("labelsTr", "lies inside the dataset's labelsTr folder"),
])
def test_a_model_folder_in_the_dataset_is_refused_before_anything_is_read_or_written(tmp_path, capsys, inside,
                                                                                   problem):
    from MaskSAMCore.cli import main

    dataset = tmp_path / "ds"
    for folder in ("imagesTr", "labelsTr"):
        (dataset / folder).mkdir(parents=True)
    (dataset / "dataset.json").write_text("{}")
    model_dir = dataset / inside
    assert main(["train", str(dataset), str(model_dir), "--preset", "tiny", "--device", "cpu"]) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("masksam: error: MODEL_DIR ") and problem in said[0], said
    assert sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*")) == [
        "dataset.json", "imagesTr", "labelsTr"]
