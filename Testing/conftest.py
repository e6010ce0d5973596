"""Shared pytest fixtures (only fixtures here; each test file keeps its own helpers)."""

from __future__ import annotations

import contextlib
import io
import locale
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _same_random_state_for_every_test() -> None:
    """Each test draws the same random numbers whichever tests ran before it (a subset, another
    order), so a threshold that passes once passes every time."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _own_masksam_home(tmp_path_factory: pytest.TempPathFactory):
    """MaskSAM's cache folder (SAM checkpoints, their remembered hashes, installed models) is a
    fresh one for the test session, never the user's; tests that need their own still set it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MASKSAM_HOME", str(tmp_path_factory.mktemp("masksam_home")))
    yield
    patch.undo()


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_pytest(tmp_path_factory: pytest.TempPathFactory):
    """Temporary files of the tests and of the processes they start (torchrun's and
    multiprocessing's folders, which a killed rank leaves behind) go under pytest's own base
    folder, which pytest prunes, not the machine's temporary folder."""
    import tempfile

    patch = pytest.MonkeyPatch()
    patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmp")))
    patch.setattr(tempfile, "tempdir", None)     # gettempdir() reads TMPDIR again
    yield
    patch.undo()


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CT dataset in nnU-Net raw format (3 training cases, 1 test case,
    .nii.gz, 40 x 36 x 12 voxels, oblique and anisotropic). Shared: copy it before changing it."""
    from MaskSAMCore.data.phantoms import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("phantoms") / "Dataset001_Phantoms", cases=3, seed=7,
                         test_cases=1, size=(40, 36, 12), progress=False)


@dataclass(frozen=True)
class TrainedPhantomModel:
    dataset: Path          # 12 training cases (imagesTr/labelsTr), 3 held-out cases (imagesTs/labelsTs)
    model_dir: Path        # the model folder `masksam train` wrote
    minutes: float         # wall-clock training time
    console: str           # what `masksam train` printed on stdout


# The learning recipe (see test_training_learning.py for why these settings): AdamW at lr 5e-3,
# 6 epochs of 100 steps of 2 patches, fold 0 (3 of the 12 training cases validate).
LEARNING_RECIPE = ["--preset", "tiny", "--random-init", "--optimizer", "adamw", "--lr", "0.005",
                   "--epochs", "6", "--iters-per-epoch", "100", "--batch-size", "2", "--fold", "0",
                   "--val-cases-per-epoch", "1", "--device", "cpu"]


@pytest.fixture(scope="session")
def trained_phantom_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedPhantomModel:
    """A tiny MaskSAM trained from random weights on 12 phantoms through `masksam train`, trained
    once per test session (about 2-3 minutes on 2 CPU cores) and shared by the learning test and
    the end-to-end tests of the command line and of the Slicer module. Read-only."""
    from MaskSAMCore.cli import main
    from MaskSAMCore.data.phantoms import make_phantoms
    from MaskSAMCore.progress import enable_machine_lines

    root = tmp_path_factory.mktemp("trained_phantoms")
    dataset = make_phantoms(root / "Dataset002_Phantoms", cases=12, seed=0, test_cases=3, progress=False)
    model_dir = root / "model"
    started = time.monotonic()
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console):
            status = main(["train", str(dataset), str(model_dir), *LEARNING_RECIPE])
    finally:
        enable_machine_lines(False)
    assert status == 0, "masksam train failed on the phantoms"
    return TrainedPhantomModel(dataset, model_dir, (time.monotonic() - started) / 60, console.getvalue())


@pytest.fixture()
def dicom_locale_kept():
    """GDCM's DICOM writer (used here to make test series, never by MaskSAM) sets the C locale
    and leaves it: every later test would then read UTF-8 files as ASCII."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="session")
def dicom_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-class model with random weights and the target spacing of the DICOM tests' series."""
    from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
    from MaskSAMCore.model.config import preset

    config = preset("tiny", num_classes=3)
    return write_random_model_folder(tmp_path_factory.mktemp("models") / "tiny", config,
                                     synthetic_plan(config, (3.0, 0.85, 0.85)))
