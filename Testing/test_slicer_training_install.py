"""Installing models: a finished training whose model cannot be installed (a full disk, a
read-only models folder) says so in one line, naming the folder, and keeps the trained model
folder; a model imported again from the models folder is the one the model list shows."""

from __future__ import annotations

import errno
import json
import shutil

from test_slicer_jobs import fake_model_folder
from test_slicer_robustness import program

from MaskSAMSegmentLib.devices import DeviceChoice
from MaskSAMSegmentLib.job_runner import JobState
from MaskSAMSegmentLib.models import find_models, install_model_folder
from MaskSAMSegmentLib.training_job import TrainingJob, TrainRequest


def fake_trainer(tmp_path) -> str:
    """Stands in for ``python -m MaskSAMCore ... train DATASET OUTPUT ...``: writes a finished
    model folder at OUTPUT at once."""
    trained = fake_model_folder(tmp_path / "trained")
    return program(tmp_path, "fake_train.py", f"""\
        import shutil, sys
        arguments = sys.argv[sys.argv.index("train") + 1:]
        shutil.copytree({str(trained)!r}, arguments[1])
        """)


def finished_training(tmp_path, models_root) -> TrainingJob:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({"numTraining": 2}))
    request = TrainRequest(str(dataset), str(tmp_path / "model"), preset="tiny", random_init=True, epochs=1,
                           device=DeviceChoice("CPU", "cpu", None))
    job = TrainingJob(request, python=fake_trainer(tmp_path), models_root=str(models_root))
    job.start()
    assert job.wait(timeout_s=60) is JobState.SUCCEEDED   # poll() raised nothing
    return job


def test_a_full_disk_while_installing_is_reported_and_the_trained_folder_kept(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "models" / ".partial"))

    monkeypatch.setattr(shutil, "copytree", disk_full)
    job = finished_training(tmp_path, tmp_path / "models")
    assert job.installed_model is None
    assert job.finished_status() == (
        f"Training finished, but the model could not be installed in {tmp_path / 'models'} (No space left on "
        f"device); the trained model folder is intact at {tmp_path / 'model'}: install it with 'Import model "
        "folder...'.")
    assert job.unlogged_warnings == [job.install_failure]   # the widget logs it
    assert (tmp_path / "model" / "model.json").is_file()


def test_a_models_folder_that_cannot_be_made_is_reported(tmp_path):
    blocker = tmp_path / "not a folder"
    blocker.write_text("")
    job = finished_training(tmp_path, blocker / "models")
    assert job.finished_status().startswith(f"Training finished, but the model could not be installed in "
                                            f"{blocker / 'models'} (")


def test_an_installed_model_is_named_in_the_status(tmp_path):
    job = finished_training(tmp_path, tmp_path / "models")
    assert job.finished_status() == "Training finished; 'Test model (v3)' is ready in the Segment tab."


def test_importing_an_installed_model_again_gives_the_folder_the_model_list_shows(tmp_path):
    """The widget selects the imported model by its folder among `find_models`' ones; a folder
    picked through a link or typed with '..' must still select it, not the first model."""
    real_root = tmp_path / "disk" / "models"
    real_root.mkdir(parents=True)
    root = tmp_path / "models"
    root.symlink_to(real_root)   # a models folder reached through a link (a home on another disk)
    installed = install_model_folder(fake_model_folder(tmp_path / "trained"), root=root)
    listed = [str(model.folder) for model in find_models(root)[0]]
    assert listed == [str(installed.folder)]
    (root / "x").mkdir()
    for picked in (real_root / installed.folder.name, root / "x" / ".." / installed.folder.name):
        assert str(install_model_folder(picked, root=root).folder) in listed
