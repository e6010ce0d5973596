"""The whole Slicer path with the real command line: phantoms -> training from the Training tab's
logic (live plot, model installed); the session's phantom-trained model (conftest.py) segmenting an
OBLIQUE, ANISOTROPIC held-out phantom through the Segment tab's logic -> segments that, exported
with the segmentations logic, equal the core's own label map voxel for voxel; and a real
prediction cancelled mid-way leaves the scene untouched.

Waits for the core's `make-phantoms`, `train` and `predict` (skipped until they exist)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest

from MaskSAMCore.terminology import AnatomyTerminology
from slicer_support import (add_scalar_volume, core_has, live_processes_in_group, new_scene, oblique_grid,
                            scene_node_ids, subprocess_environment)

from MaskSAMSegmentLib.commands import masksam_command
from MaskSAMSegmentLib.devices import DeviceChoice
from MaskSAMSegmentLib.image_files import read_array_image
from MaskSAMSegmentLib.job_runner import JobRunner, JobState
from MaskSAMSegmentLib.models import find_models, read_model_info
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest
from MaskSAMSegmentLib.segmentations import (MODEL_NAME_ATTRIBUTE, MODEL_VERSION_ATTRIBUTE,
                                             export_label_values_on_volume, segment_label_values)
from MaskSAMSegmentLib.training_job import TrainingJob, TrainRequest
from MaskSAMSegmentLib.training_plot import TrainingPlot
from MaskSAMSegmentLib.volume_nodes import volume_to_array

pytestmark = pytest.mark.skipif(
    not all(core_has(m) for m in ("MaskSAMCore.data.phantoms", "MaskSAMCore.training.run", "MaskSAMCore.inference.run")),
    reason="waits for the core's make-phantoms, train and predict")

CPU = DeviceChoice("CPU", "cpu", None)


def run_cli(arguments, timeout_s=300) -> JobRunner:
    runner = JobRunner(masksam_command(arguments), env=subprocess_environment())
    runner.start()
    state = runner.wait(timeout_s=timeout_s)
    assert state is JobState.SUCCEEDED, f"{arguments[0]} failed: {runner.error_message}\n{runner.log_text[-3000:]}"
    return runner


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny phantom-trained model, trained and installed through the Training tab's logic."""
    root = tmp_path_factory.mktemp("e2e")
    dataset = root / "Dataset900_Phantoms"
    run_cli(["make-phantoms", str(dataset), "--cases", "3", "--seed", "7", "--size", "40", "40", "16"])
    scene = new_scene()
    plot = TrainingPlot(scene)
    log = []
    # 3 cases: the logic picks fold "all" by itself (5 folds need 5 cases).
    job = TrainingJob(TrainRequest(str(dataset), str(root / "model"), preset="tiny", random_init=True, epochs=1,
                                   iters_per_epoch=2, device=CPU, batch_size=1, val_cases_per_epoch=1),
                      base_env=subprocess_environment(), models_root=str(root / "installed"), on_epoch=plot.add_epoch,
                      on_log=log.append)
    job.start()
    assert job.wait(timeout_s=600) is JobState.SUCCEEDED, f"{job.error_message}\n{job.log_text[-3000:]}"
    return {"root": root, "dataset": dataset, "job": job, "plot": plot, "scene": scene, "log": log}


def test_training_tab_plots_each_epoch_and_installs_the_model(trained):
    rows = trained["plot"].rows()
    assert len(rows) == 1 and rows[0]["epoch"] == 1.0
    assert np.isfinite(rows[0]["train_loss"]) and 0.0 <= rows[0]["mean_dice"] <= 1.0
    models, problems = find_models(trained["root"] / "installed")
    assert problems == [] and [m.folder for m in models] == [trained["job"].installed_model.folder]
    assert models[0].has_final_checkpoint and models[0].preset == "tiny"


def test_training_log_shows_each_epoch_once_in_words_and_no_machine_lines(trained):
    """The module's log pane gets the console's own lines; the `@masksam` events feed only the
    plot and the progress bar, so an epoch is not reported twice."""
    log = trained["log"]
    assert [line for line in log if line.startswith("epoch ")] == [
        next(line for line in log if line.startswith("epoch 1/1: train loss "))]
    start = next(line for line in log if line.startswith("training tiny (random SAM weights) on cpu:"))
    assert "batch 1," in start, start   # the Training tab's batch size reached the core
    assert any(line.startswith("done: 1 epoch(s)") for line in log)
    assert not [line for line in log if "@masksam" in line or line.lstrip().startswith("{")]


def test_oblique_volume_segmented_in_the_scene_equals_the_core_label_map(trained_phantom_model, tmp_path):
    """The session's phantom-trained model (conftest.py) segments a held-out phantom on an
    oblique, anisotropic grid; the model finds the organs, so the comparison below is between
    many-label maps, not empty ones."""
    model = read_model_info(trained_phantom_model.model_dir)
    dataset = trained_phantom_model.dataset
    voxels, phantom_grid = read_array_image(dataset / "imagesTs" / "phantom_test_000_0000.nii.gz")
    truth, _ = read_array_image(dataset / "labelsTs" / "phantom_test_000.nii.gz")
    # The phantom's voxels and anisotropic spacing, turned 12, -20 and 33 degrees about the three
    # axes (the phantoms themselves are only slightly oblique) and moved far from the origin.
    grid = dataclasses.replace(oblique_grid(voxels.shape), spacing=phantom_grid.spacing)
    assert max(grid.spacing) > 1.5 * min(grid.spacing)
    scene = new_scene()
    volume = add_scalar_volume(scene, voxels, grid, name="Phantom")

    job = SegmentJob(scene, SegmentRequest([volume], model, device=CPU, quality="fast"),
                     base_env=subprocess_environment(), work_dir=str(tmp_path), keep_files=True)
    job.start()
    assert job.wait(timeout_s=300) is JobState.SUCCEEDED, job.error_message
    node = job.result_node

    # The label map the core wrote (kept for this test) is on the input's grid, and the segments,
    # exported by Slicer's segmentations logic onto the volume, give it back voxel for voxel.
    core_labels, core_grid = read_array_image(job.label_file)
    assert core_grid.same_as(grid)
    assert len(np.unique(core_labels)) >= 4 and set(np.unique(core_labels)) <= set(model.labels.values())
    exported = export_label_values_on_volume(node, volume)
    np.testing.assert_array_equal(exported, core_labels)
    input_voxels, input_grid = read_array_image(next(job.label_file.parent.glob("input.*")))
    np.testing.assert_array_equal(input_voxels, voxels)      # what the core was given: the node's voxels
    assert input_grid.same_as(grid)
    liver = model.labels["liver"]
    overlap = 2 * np.sum((exported == liver) & (truth == liver)) / (np.sum(exported == liver) + np.sum(truth == liver))
    assert overlap > 0.7, f"liver Dice {overlap:.2f} against the phantom's truth"

    # One segment per label (background skipped), named and coloured from the model's labels.
    terminology = AnatomyTerminology()
    segmentation = node.GetSegmentation()
    values = segment_label_values(node)
    assert sorted(values.values()) == sorted(v for v in model.labels.values() if v != 0)
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = values[segmentation.GetNthSegmentID(index)]
        style = terminology.style(model.names_by_value[value], value)
        assert segment.GetName() == style.name
        np.testing.assert_allclose(segment.GetColor(), style.color)
    assert node.GetAttribute(MODEL_NAME_ATTRIBUTE) == model.name
    assert node.GetAttribute(MODEL_VERSION_ATTRIBUTE) == model.version


@pytest.mark.skipif(os.name != "posix", reason="process-group check reads /proc")
def test_cancelling_a_real_prediction_leaves_the_scene_unchanged(trained, tmp_path):
    model = trained["job"].installed_model
    scene = new_scene()
    rng = np.random.default_rng(0)
    big = rng.normal(40, 30, size=(96, 192, 192)).astype(np.int16)   # enough windows to take a while
    volume = add_scalar_volume(scene, big, oblique_grid(big.shape))
    nodes_before = scene_node_ids(scene)
    work = tmp_path / "work"
    work.mkdir()
    job = SegmentJob(scene, SegmentRequest([volume], model, device=CPU, quality="full"),
                     base_env=subprocess_environment(), work_dir=str(work))
    job.start()
    deadline = time.monotonic() + 120
    while not job.runner.events and job.poll() is JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.state is JobState.RUNNING, job.error_message
    job.cancel()
    assert job.wait(timeout_s=60) is JobState.CANCELLED
    assert scene_node_ids(scene) == nodes_before
    np.testing.assert_array_equal(volume_to_array(volume)[0], big)
    assert list(work.iterdir()) == [] and live_processes_in_group(job.runner.pid) == []
    assert Path(model.folder).is_dir()
