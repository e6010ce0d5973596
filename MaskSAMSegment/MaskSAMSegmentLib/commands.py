"""Command lines for the MaskSAMCore jobs the module starts, and the interpreter that runs them.

Inside Slicer, `sys.executable` is not a plain Python one can start (library paths are set by
Slicer's launcher), so the jobs run under ``PythonSlicer`` (the launcher for Slicer's Python,
on PATH inside Slicer), the way the TotalSegmentator and nnU-Net extensions do it. Elsewhere
(tests, a developer's venv) it is `sys.executable`.

The core package may live beside the module (an installed extension) or one folder up (the
source tree added with "Add module path"); either way its parent folder goes first on the
job's PYTHONPATH so that ``python -m MaskSAMCore`` finds this very copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional

QUALITY_FULL = "full"   # mirroring (8 flips, 4 for left/right labels), step 0.5: the paper's inference
QUALITY_FAST = "fast"   # the core's --fast: no mirroring, larger step
QUALITIES = (QUALITY_FULL, QUALITY_FAST)


def python_interpreter() -> str:
    """The Python to run jobs with: PythonSlicer when there is one, else this interpreter."""
    slicer_python = shutil.which("PythonSlicer")
    if slicer_python:
        return slicer_python
    beside = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
    return str(beside) if beside.is_file() else sys.executable


def core_parent_folder() -> Optional[str]:
    """The folder holding the ``MaskSAMCore`` package this process would import, or None."""
    here = Path(__file__).resolve().parents[1]           # the folder of MaskSAMSegment.py
    for candidate in (here, here.parent):                 # installed extension, source tree
        if (candidate / "MaskSAMCore" / "__init__.py").is_file():
            return str(candidate)
    spec = importlib.util.find_spec("MaskSAMCore")
    if spec is not None and spec.submodule_search_locations:
        return str(Path(list(spec.submodule_search_locations)[0]).parent)
    return None


def slicer_startup_environment() -> Optional[Dict[str, str]]:
    """Slicer's start-up environment, the base for background jobs (PythonSlicer sets up the rest
    itself); None outside the Slicer application (PythonSlicer, tests): jobs then start from this
    process's environment."""
    try:
        import slicer

        return dict(slicer.util.startupEnvironment())
    except Exception:  # no Slicer application: slicer is missing or lacks util.startupEnvironment
        return None


def job_environment(base: Optional[Mapping[str, str]] = None, gpu_index: Optional[int] = None) -> Dict[str, str]:
    """The environment of a job: `base` (default: this process's) with the core on PYTHONPATH and,
    for a chosen GPU, only that GPU visible (the core's ``--device cuda`` then uses it)."""
    env = dict(base if base is not None else os.environ)
    core = core_parent_folder()
    if core:
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != core]
        env["PYTHONPATH"] = os.pathsep.join([core] + parts)
    if gpu_index is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu_index)
    return env


def masksam_command(arguments: List[str], python: Optional[str] = None) -> List[str]:
    """``python -m MaskSAMCore --machine-progress ARGUMENTS``."""
    return [python or python_interpreter(), "-m", "MaskSAMCore", "--machine-progress", *arguments]


def predict_arguments(model_dir: str, input_path: str, output_path: str, device: str = "auto",
                      quality: str = QUALITY_FULL, sam_checkpoint: Optional[str] = None) -> List[str]:
    """``predict MODEL_DIR INPUT OUTPUT`` with the device and the quality chosen in the Segment tab."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, not {quality!r}")
    arguments = ["predict", str(model_dir), str(input_path), str(output_path), "--device", device]
    arguments += ["--fast"] if quality == QUALITY_FAST else ["--mirror", "--step", "0.5"]
    if sam_checkpoint:
        arguments += ["--sam-checkpoint", str(sam_checkpoint)]
    return arguments


def train_arguments(dataset_dir: str, model_dir: str, preset: str = "vit_b",
                    sam_checkpoint: Optional[str] = None, random_init: bool = False,
                    epochs: Optional[int] = 100, iters_per_epoch: Optional[int] = None,
                    device: str = "auto", resume: bool = False, fold: str = "0",
                    batch_size: Optional[int] = None, val_cases_per_epoch: Optional[int] = None) -> List[str]:
    """``train DATASET MODEL_DIR`` with the choices of the Training tab.

    sam_checkpoint: a checkpoint file, or vit_b/vit_l/vit_h for the downloaded one; `random_init`
    trains on a random frozen backbone instead (the tiny preset, demos), with the demo's AdamW.
    fold: 0-4 (validate on that fifth of the cases) or "all" (train and validate on every case)
    epochs: the run's length; None keeps a resumed run's own
    batch_size, val_cases_per_epoch: the core's defaults when None (quick trials lower them)
    """
    arguments = ["train", str(dataset_dir), str(model_dir), "--preset", preset, "--device", device,
                 "--fold", str(fold)]
    if epochs is not None:
        arguments += ["--epochs", str(int(epochs))]
    if random_init:
        arguments.append("--random-init")
        if not resume:
            # The paper's SGD learns next to nothing from a random backbone in the minutes a
            # workflow trial lasts (mean Dice 0.48 after 800 steps on the phantoms, 0.00 after 250);
            # AdamW at 5e-3 is the demo's and the phantom learning test's recipe (0.86 in 600).
            arguments += ["--optimizer", "adamw", "--lr", "0.005"]
    elif sam_checkpoint:
        arguments += ["--sam-checkpoint", str(sam_checkpoint)]
    if iters_per_epoch:
        arguments += ["--iters-per-epoch", str(int(iters_per_epoch))]
    if batch_size:
        arguments += ["--batch-size", str(int(batch_size))]
    if val_cases_per_epoch:
        arguments += ["--val-cases-per-epoch", str(int(val_cases_per_epoch))]
    if resume:
        arguments.append("--resume")
    return arguments


def download_sam_arguments(model_type: str) -> List[str]:
    """``download-sam vit_b``: the official checkpoint into the cache, SHA-256 checked."""
    return ["download-sam", model_type]
