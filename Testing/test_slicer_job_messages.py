"""What the core says about a volume reaches the Segment tab in the scene's terms: its warnings
are gathered into the job's warnings (the status line counts them), and its warnings, errors and
log lines name the volume node, never the private file the module wrote it to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slicer_support import add_scalar_volume, new_scene, oblique_grid, subprocess_environment

from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.config import preset
from MaskSAMSegmentLib.devices import DeviceChoice
from MaskSAMSegmentLib.job_progress import warnings_note
from MaskSAMSegmentLib.job_runner import JobState
from MaskSAMSegmentLib.models import read_model_info
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest

CPU = DeviceChoice("CPU", "cpu", None)
PRIVATE_FOLDER = "masksam-segment-"   # the prefix of the job's temporary folder


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory) -> Path:
    config = preset("tiny", num_classes=3)
    plan = synthetic_plan(config, (3.0, 1.5, 1.5), ct_window=(-100.0, 250.0))
    return write_random_model_folder(tmp_path_factory.mktemp("models") / "ct", config, plan,
                                      name="Abdomen CT")


def run_segment_job(scene, volume, model_dir: Path, work_dir: Path):
    logged = []
    job = SegmentJob(scene, SegmentRequest([volume], read_model_info(model_dir), device=CPU, quality="fast"),
                     base_env=subprocess_environment(), work_dir=str(work_dir), on_log=logged.append)
    job.start()
    job.wait(timeout_s=300)
    return job, logged


def test_a_volume_not_in_hounsfield_units_is_segmented_with_a_warning_naming_the_volume(ct_model, tmp_path):
    scene = new_scene()
    picture = np.random.default_rng(1).integers(0, 256, (8, 24, 20)).astype(np.uint8)   # an 8-bit image
    volume = add_scalar_volume(scene, picture, oblique_grid(picture.shape), name="Screenshot stack")

    job, logged = run_segment_job(scene, volume, ct_model, tmp_path)

    assert job.state is JobState.SUCCEEDED, job.error_message
    assert job.result_node is not None
    assert len(job.warnings) == 1 and "Hounsfield units" in job.warnings[0]
    assert job.warnings[0].startswith("volume 'Screenshot stack': its darkest voxel is 0, ")
    assert warnings_note(job.warnings) == " 1 warning: see the log."
    assert not [line for line in [*job.warnings, *logged] if PRIVATE_FOLDER in line]
    shown = [line for line in logged if "its darkest voxel" in line]
    assert shown == [f"Warning: {job.warnings[0]}"]   # once, as it came, in the module's style
    assert job.unlogged_warnings == []                  # so the tab does not log it again


def test_the_log_shows_each_warning_once_the_cores_as_they_come_and_the_jobs_own_at_the_end(ct_model, tmp_path):
    scene = new_scene()
    picture = np.random.default_rng(3).integers(0, 256, (8, 24, 20)).astype(np.uint8)
    volume = add_scalar_volume(scene, picture, oblique_grid(picture.shape), name="Screenshot stack")
    logged = []
    job = SegmentJob(scene, SegmentRequest([volume], read_model_info(ct_model), device=CPU, quality="fast"),
                     base_env=subprocess_environment(), work_dir=str(tmp_path), on_log=logged.append)
    job.start()
    scene.RemoveNode(volume)   # the job finds this itself, after the core has finished

    assert job.wait(timeout_s=300) is JobState.SUCCEEDED, job.error_message
    core_warning, own_warning = job.warnings
    assert "Hounsfield units" in core_warning and "was removed during the run" in own_warning
    assert [line for line in logged if line.startswith("Warning: ")] == [f"Warning: {core_warning}"]
    assert not [line for line in logged if "masksam: warning" in line]
    assert job.unlogged_warnings == [own_warning]


def test_a_volume_in_hounsfield_units_gets_no_warning(ct_model, tmp_path):
    scene = new_scene()
    body = np.full((8, 24, 20), -1000, dtype=np.int16)
    body[:, 4:-4, 4:-4] = 40
    volume = add_scalar_volume(scene, body, oblique_grid(body.shape), name="CT")

    job, _ = run_segment_job(scene, volume, ct_model, tmp_path)

    assert job.state is JobState.SUCCEEDED, job.error_message
    assert job.warnings == [] and warnings_note(job.warnings) == ""


def test_the_core_error_about_a_volume_names_the_volume_not_its_private_file(ct_model, tmp_path):
    scene = new_scene()
    voxels = np.zeros((8, 24, 20), dtype=np.float32)
    voxels[2, 3, 4] = np.nan
    voxels[:, 10:, :] = 50.0
    volume = add_scalar_volume(scene, voxels, oblique_grid(voxels.shape), name="Broken CT")
    nodes_before = scene.GetNumberOfNodes()

    job, logged = run_segment_job(scene, volume, ct_model, tmp_path)

    assert job.state is JobState.FAILED
    assert job.error_message.startswith("volume 'Broken CT': "), job.error_message
    assert "NaN" in job.error_message and PRIVATE_FOLDER not in job.error_message
    assert not [line for line in logged if PRIVATE_FOLDER in line]
    assert scene.GetNumberOfNodes() == nodes_before


def test_a_two_channel_job_names_each_volume_and_the_result_in_its_messages(tmp_path):
    """A CT + PET model: the PET channel is z-scored (any scale), the CT channel must be in HU."""
    config = preset("tiny", num_classes=3, in_channels=2)
    channels = {"0": "CT", "1": "PET"}
    model_dir = write_random_model_folder(tmp_path / "model", config,
                                          synthetic_plan(config, (3.0, 1.5, 1.5), channel_names=channels,
                                                         ct_window=(-100.0, 250.0)),
                                          channel_names=channels, name="Lesions PET/CT")
    scene = new_scene()
    grid = oblique_grid((8, 24, 20))
    ct = np.full((8, 24, 20), 24, dtype=np.int16)          # a lost intercept: air at 0 (here 24)
    ct[:, 4:-4, 4:-4] = 1064
    pet = np.random.default_rng(2).gamma(2.0, 500.0, (8, 24, 20)).astype(np.float32)
    volumes = [add_scalar_volume(scene, ct, grid, name="CT no intercept"),
               add_scalar_volume(scene, pet, grid, name="PET")]
    logged = []
    job = SegmentJob(scene, SegmentRequest(volumes, read_model_info(model_dir), device=CPU, quality="fast"),
                     base_env=subprocess_environment(), work_dir=str(tmp_path), on_log=logged.append)
    job.start()

    assert job.wait(timeout_s=300) is JobState.SUCCEEDED, job.error_message
    assert job.result_node is not None
    assert len(job.warnings) == 1 and "Hounsfield units" in job.warnings[0]
    assert job.warnings[0].startswith("volume 'CT no intercept': the darkest voxel of channel 0 (CT) is 24, ")
    assert any("-> the segmentation (" in line for line in logged), logged
    assert not [line for line in [*job.warnings, *logged] if PRIVATE_FOLDER in line]


def test_the_status_line_counts_the_warnings():
    assert warnings_note([]) == ""
    assert warnings_note(["a", "b"]) == " 2 warnings: see the log."
