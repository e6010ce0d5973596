"""Background jobs of the Slicer module: progress from machine lines, cancel that ends the whole
process tree and leaves the scene untouched, and failures that surface the core's one-line message."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from slicer_support import (REPO, add_scalar_volume, core_has, distinct_voxel_values,
                            live_processes_in_group, model_json_meta, new_scene, oblique_grid, scene_node_ids,
                            subprocess_environment)

from MaskSAMCore.errors import InputError
from MaskSAMCore.model.sam_checkpoints import REGISTRY
from MaskSAMCore.paths import SAM_CHECKPOINT_FILES, checkpoint_cache
from MaskSAMSegmentLib.commands import masksam_command
from MaskSAMSegmentLib.devices import DeviceChoice
from MaskSAMSegmentLib.job_runner import JobRunner, JobState
from MaskSAMSegmentLib.models import read_model_info
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest, segment_problems
from MaskSAMSegmentLib.volume_nodes import volume_to_array

posix_only = pytest.mark.skipif(os.name != "posix", reason="reads /proc to find left-over processes")


def slow_program(tmp_path: Path) -> Path:
    """An executable that behaves like a long core job: machine lines, a worker child, then sleep.
    It ignores its arguments, so it can stand in for the interpreter of any MaskSAM command."""
    script = tmp_path / "slow_job.py"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(tmp_path / 'worker.pid')!r}, "w").write(str(worker.pid))
        print("@masksam " + json.dumps({{"event": "stage", "stage": "predict", "total": 40}}), flush=True)
        for done in range(1, 41):
            print("@masksam " + json.dumps({{"event": "progress", "stage": "predict", "done": done,
                                             "total": 40, "fraction": done / 40, "eta_s": 40 - done}}), flush=True)
            print(f"window {{done}}", flush=True)
            time.sleep(1.0 if done > 2 else 0.01)
        """))
    script.chmod(0o755)
    return script


def fake_model_folder(folder: Path, labels=None, channel_names=None) -> Path:
    folder.mkdir(parents=True)
    meta = {**model_json_meta(labels or {"background": 0, "liver": 1, "spleen": 2}, channel_names or {"0": "CT"}),
            "name": "Test model", "version": "3", "modality": "CT", "training": {"preset": "tiny"}}
    (folder / "model.json").write_text(json.dumps(meta))
    (folder / "checkpoint_final.pt").write_bytes(b"weights")
    return folder


def test_runner_turns_machine_lines_into_progress_and_keeps_the_rest_as_log():
    code = textwrap.dedent("""
        import json
        for line in [{"event": "stage", "stage": "predict", "total": 4},
                     {"event": "progress", "stage": "predict", "done": 3, "total": 4, "fraction": 0.75, "eta_s": 2.0}]:
            print("@masksam " + json.dumps(line))
        print("a line for people")
        """)
    seen = []
    runner = JobRunner([sys.executable, "-c", code], on_event=seen.append)
    runner.start()
    assert runner.wait(timeout_s=30) is JobState.SUCCEEDED
    assert [e["event"] for e in seen] == ["stage", "progress"]
    assert runner.progress.overall_fraction() == pytest.approx(0.75)
    assert "predict 75%" in runner.status_text()
    assert re.search(r"ETA 0:0[12] ", runner.status_text())   # the core's 2 s, counting down since
    assert list(runner.log_lines) == ["a line for people"]


def test_failing_core_command_surfaces_its_one_line_message(tmp_path):
    missing = tmp_path / "no-such-prediction.nii.gz"
    runner = JobRunner(masksam_command(["evaluate", str(missing), str(missing)]), env=subprocess_environment())
    runner.start()
    assert runner.wait(timeout_s=60) is JobState.FAILED
    assert runner.returncode == 1
    assert "no-such-prediction.nii.gz" in runner.error_message
    assert "\n" not in runner.error_message and "Traceback" not in runner.log_text


def test_the_core_error_line_is_shown_without_its_prefix_even_when_other_lines_follow():
    """The Slicer user reads the core's one error line, not "masksam: error: ..." nor whatever
    was printed last (a worker's warning at shutdown)."""
    code = textwrap.dedent("""
        import sys
        print("predicting 1 case", flush=True)
        print("masksam: error: /x/y.nii.gz: not a NIfTI file", file=sys.stderr, flush=True)
        print("resource_tracker: 1 leaked semaphore object to clean up at shutdown", file=sys.stderr, flush=True)
        sys.exit(1)
        """)
    runner = JobRunner([sys.executable, "-c", code])
    runner.start()
    assert runner.wait(timeout_s=30) is JobState.FAILED
    assert runner.error_message == "/x/y.nii.gz: not a NIfTI file"
    assert "masksam: error: /x/y.nii.gz: not a NIfTI file" in runner.log_lines   # the log keeps the line as printed


@posix_only
def test_cancel_ends_the_process_tree_promptly(tmp_path):
    runner = JobRunner([str(slow_program(tmp_path))], cancel_grace_s=2.0)
    runner.start()
    deadline = time.monotonic() + 30
    while (runner.progress.overall_fraction() or 0) < 0.05 and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.02)
    worker = int((tmp_path / "worker.pid").read_text())
    assert worker in live_processes_in_group(runner.pid)
    runner.cancel()
    assert runner.wait(timeout_s=20) is JobState.CANCELLED
    assert live_processes_in_group(runner.pid) == []
    assert runner.error_message == "cancelled"


@posix_only
def test_cancelled_segment_job_leaves_scene_and_volume_unchanged(tmp_path):
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid())
    voxels_before, grid_before = volume_to_array(volume)
    nodes_before = scene_node_ids(scene)
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    work = tmp_path / "work"
    work.mkdir()

    job = SegmentJob(scene, SegmentRequest([volume], model), python=str(slow_program(tmp_path)),
                     work_dir=str(work))
    job.start()
    assert len(list(work.iterdir())) == 1          # the private folder with the written input
    deadline = time.monotonic() + 30
    while (job.runner.progress.overall_fraction() or 0) < 0.05 and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    assert job.state is JobState.RUNNING
    job.cancel()
    assert job.wait(timeout_s=20) is JobState.CANCELLED
    assert scene_node_ids(scene) == nodes_before
    voxels_after, grid_after = volume_to_array(volume)
    np.testing.assert_array_equal(voxels_after, voxels_before)
    assert grid_after == grid_before
    assert list(work.iterdir()) == []              # temporary input removed
    assert live_processes_in_group(job.runner.pid) == []
    assert job.result_node is None


def test_segment_button_problems_name_what_is_missing(tmp_path):
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid(), name="Abdomen")
    assert segment_problems(SegmentRequest([], None)) == [
        "Select an input volume.", "Select a model (or import one with 'Import model folder...')."]
    two_channel = read_model_info(fake_model_folder(tmp_path / "mr", labels={"background": 0, "tumor": 1}))
    object.__setattr__(two_channel, "channel_names", {"0": "T1", "1": "T2"})
    assert segment_problems(SegmentRequest([volume], two_channel)) == [
        "Model 'Test model' needs 2 input volume(s): T1, T2."]
    unfinished = tmp_path / "unfinished"
    fake_model_folder(unfinished)
    (unfinished / "checkpoint_final.pt").unlink()
    problems = segment_problems(SegmentRequest([volume], read_model_info(unfinished)))
    assert problems == ["Model 'Test model (v3)' has no checkpoint_final.pt: is its training finished?"]
    with pytest.raises(InputError, match="Select an input volume"):
        SegmentJob(scene, SegmentRequest([None], read_model_info(tmp_path / "mr"))).start()


def test_a_model_needing_sam_weights_not_downloaded_says_where_to_get_them(tmp_path, monkeypatch):
    """The core's advice ('masksam download-sam', '--sam-checkpoint') has no meaning in Slicer: the
    Segment button names the Training tab's Download instead, and enables once the file is there."""
    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid())
    folder = fake_model_folder(tmp_path / "model")
    meta = json.loads((folder / "model.json").read_text())
    meta["sam"] = {"model_type": "vit_b", "random_init": False, "sha256": REGISTRY["vit_b"].sha256}
    (folder / "model.json").write_text(json.dumps(meta))
    request = SegmentRequest([volume], read_model_info(folder))
    assert segment_problems(request) == [
        "Model 'Test model (v3)' needs the official SAM vit_b weights it was trained on: in the Training tab "
        "choose preset vit_b and click Download (once), or choose the sam_vit_b_01ec64.pth you have in its SAM "
        "checkpoint field."]
    checkpoint_cache().mkdir(parents=True)
    (checkpoint_cache() / SAM_CHECKPOINT_FILES["vit_b"]).write_bytes(b"downloaded")
    assert segment_problems(request) == []


def test_a_model_trained_on_a_fine_tuned_sam_asks_for_that_file_once(tmp_path, monkeypatch):
    """A model trained on a SAM of its own (MedSAM, say) cannot use the official download: the
    Segment button asks for the file in the Training tab's field, which the request then carries;
    once used (or trained with on this computer) the file is found without it."""
    from MaskSAMCore.model.sam_checkpoints import remembered_sha256
    from MaskSAMSegmentLib.segment_job import needs_sam_file

    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid())
    folder = fake_model_folder(tmp_path / "model")
    meta = json.loads((folder / "model.json").read_text())
    meta["sam"] = {"model_type": "vit_b", "random_init": False, "sha256": hashlib.sha256(b"MedSAM").hexdigest()}
    (folder / "model.json").write_text(json.dumps(meta))
    model = read_model_info(folder)
    checkpoint_cache().mkdir(parents=True)
    (checkpoint_cache() / SAM_CHECKPOINT_FILES["vit_b"]).write_bytes(b"downloaded")   # the official one: no use
    assert segment_problems(SegmentRequest([volume], model)) == [
        "Model 'Test model (v3)' was trained on a SAM checkpoint of its own (SHA-256 "
        f"{hashlib.sha256(b'MedSAM').hexdigest()[:12]}...): choose that file in the Training tab's SAM checkpoint "
        "field (once: it is remembered)."]
    medsam = tmp_path / "medsam.pth"
    problems = segment_problems(SegmentRequest([volume], model, sam_checkpoint=str(medsam)))
    assert problems == [f"The SAM checkpoint chosen in the Training tab does not exist: {medsam}."]
    medsam.write_bytes(b"MedSAM")
    assert segment_problems(SegmentRequest([volume], model, sam_checkpoint=str(medsam))) == []
    assert needs_sam_file(model)
    remembered_sha256(medsam)                  # the core, using it once
    assert not needs_sam_file(model) and segment_problems(SegmentRequest([volume], model)) == []


def test_a_single_slice_or_damaged_volume_is_refused_before_anything_is_written(tmp_path):
    """A 2D image, or image data holding fewer values than its declared size (a script gone
    wrong): named on the Segment button, never a late core error or a numpy traceback."""
    import vtk
    from vtk.util import numpy_support

    scene = new_scene()
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    one_slice = add_scalar_volume(scene, distinct_voxel_values()[:1], oblique_grid(), name="One slice")
    short = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Short")
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 8)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.zeros(10, np.int16), deep=True))
    short.SetAndObserveImageData(image)
    shape = " x ".join(str(n) for n in one_slice.GetImageData().GetDimensions())
    assert segment_problems(SegmentRequest([one_slice], model)) == [
        f"Volume 'One slice' is a single slice ({shape} voxels); MaskSAM segments 3D volumes."]
    assert segment_problems(SegmentRequest([short], model)) == [
        "Volume 'Short' holds 10 voxel values for its 512 voxels: its image data is damaged."]
    with pytest.raises(InputError, match=r"volume 'Short' holds 10 voxel values for its 8 x 8 x 8 voxels"):
        volume_to_array(short)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError, match="'Short' holds 10 voxel values"):
        SegmentJob(scene, SegmentRequest([short], model), work_dir=str(work)).start()
    assert list(work.iterdir()) == []


def test_a_labelmap_is_refused_as_the_image_to_segment_or_to_train_on(tmp_path):
    """A labelmap is a scalar volume too: segmenting it would run the model on label values
    (and training on it would teach the model labels as images)."""
    from MaskSAMSegmentLib.dataset_builder import CasePair, check_pairs
    from MaskSAMSegmentLib.volume_nodes import labelmap_node_from_array

    scene = new_scene()
    grid = oblique_grid()
    labelmap = labelmap_node_from_array(np.ones(grid.shape_zyx, np.uint8), grid, scene, name="CT-label")
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    assert segment_problems(SegmentRequest([labelmap], model)) == [
        "Volume 'CT-label' is a labelmap; select the CT or MRI image."]
    with pytest.raises(InputError, match="'CT-label' is a labelmap"):
        SegmentJob(scene, SegmentRequest([labelmap], model), work_dir=str(tmp_path)).start()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Labels")
    segmentation.GetSegmentation().AddEmptySegment("liver", "Liver")
    assert check_pairs([CasePair(labelmap, segmentation)]) == [
        "'CT-label' is a labelmap; pair the CT or MRI image with its segmentation."]


@pytest.mark.skipif(not core_has("MaskSAMCore.inference.run"), reason="waits for `masksam predict` (core)")
def test_predict_with_a_vanished_model_folder_fails_with_the_core_message(tmp_path):
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid())
    folder = fake_model_folder(tmp_path / "gone")
    model = read_model_info(folder)
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    nodes_before = scene_node_ids(scene)
    job = SegmentJob(scene, SegmentRequest([volume], model, device=DeviceChoice("CPU", "cpu", None)),
                     base_env=subprocess_environment())
    job.start()
    assert job.wait(timeout_s=120) is JobState.FAILED
    assert "gone" in job.error_message and "\n" not in job.error_message
    assert scene_node_ids(scene) == nodes_before
    assert REPO  # the subprocess found this checkout's core through PYTHONPATH


def test_sam_download_failure_reports_the_core_message_and_keeps_nothing(tmp_path):
    import socket

    from MaskSAMSegmentLib.commands import download_sam_arguments
    from MaskSAMSegmentLib.training_job import downloaded_checkpoint

    with socket.socket() as probe:       # a local port nobody listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**subprocess_environment(), "MASKSAM_HOME": str(tmp_path / "home")}
    runner = JobRunner(masksam_command(download_sam_arguments("vit_b") + ["--url", f"http://127.0.0.1:{port}/sam.pth"]),
                       env=env)
    runner.start()
    assert runner.wait(timeout_s=60) is JobState.FAILED
    assert f"127.0.0.1:{port}/sam.pth" in runner.error_message and "\n" not in runner.error_message
    assert downloaded_checkpoint(runner.log_lines) is None
    cache = tmp_path / "home" / "sam_checkpoints"
    assert not cache.exists() or list(cache.iterdir()) == []
    checkpoint = tmp_path / "sam_vit_b_01ec64.pth"
    checkpoint.write_bytes(b"weights")
    assert downloaded_checkpoint(["download sam_vit_b_01ec64.pth: [####] 1/1", str(checkpoint), ""]) == str(checkpoint)


# The core checks a cached checkpoint's SHA-256 (a damaged copy is downloaded again), so a test
# stand-in for the 375 MB file needs the registry to expect it: the job's Python says so first.
_REGISTER_STAND_IN = textwrap.dedent("""
    import hashlib, sys
    from MaskSAMCore.model import sam_checkpoints as s
    official = s.REGISTRY["vit_b"]
    s.REGISTRY["vit_b"] = s.SamCheckpointInfo("vit_b", official.url, 7, hashlib.sha256(b"weights").hexdigest())
    from MaskSAMCore.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _with_stand_in_checkpoint(command):
    """``python -m MaskSAMCore ARGS`` as ``python -c <register the stand-in, then main> ARGS``."""
    assert command[1:3] == ["-m", "MaskSAMCore"]
    return [command[0], "-c", _REGISTER_STAND_IN, *command[3:]]


def test_download_of_a_cached_checkpoint_shows_a_full_bar_not_a_busy_one(tmp_path):
    """An already cached checkpoint is 'downloaded' without a single progress line; the Training
    tab's bar must end full, not keep its 'busy' animation with nothing running."""
    from MaskSAMSegmentLib.commands import download_sam_arguments
    from MaskSAMSegmentLib.training_job import downloaded_checkpoint

    cached = tmp_path / "home" / "sam_checkpoints" / "sam_vit_b_01ec64.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    env = {**subprocess_environment(), "MASKSAM_HOME": str(tmp_path / "home")}
    runner = JobRunner(_with_stand_in_checkpoint(masksam_command(download_sam_arguments("vit_b"))), env=env)
    assert runner.progress_fraction() is None          # not started: unknown
    runner.start()
    assert runner.wait(timeout_s=60) is JobState.SUCCEEDED
    assert downloaded_checkpoint(runner.log_lines) == str(cached)
    assert runner.progress.overall_fraction() is None  # the core printed no progress
    assert runner.progress_fraction() == 1.0


@pytest.mark.parametrize("user", ["Jörg", "Иван"])
def test_a_path_with_letters_outside_the_code_page_reaches_the_module_intact(tmp_path, user):
    """On Windows a Python child writes to a pipe in the ANSI code page (cp1252 in Western
    Europe) unless told otherwise; the module reads UTF-8. A SAM cache under the user's profile
    must come back as the path it is, not garbled ("J\ufffdrg") nor as a UnicodeEncodeError."""
    from MaskSAMSegmentLib.commands import download_sam_arguments
    from MaskSAMSegmentLib.training_job import downloaded_checkpoint

    home = tmp_path / user / "home"
    cached = home / "sam_checkpoints" / "sam_vit_b_01ec64.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    # PYTHONIOENCODING stands in for the Windows default of a pipe on this POSIX test machine.
    env = {**subprocess_environment(), "MASKSAM_HOME": str(home), "PYTHONIOENCODING": "cp1252"}
    runner = JobRunner(_with_stand_in_checkpoint(masksam_command(download_sam_arguments("vit_b"))), env=env)
    runner.start()
    assert runner.wait(timeout_s=60) is JobState.SUCCEEDED, runner.error_message
    assert downloaded_checkpoint(runner.log_lines) == str(cached)


def test_a_volume_whose_voxel_axes_are_parallel_is_refused_naming_it(tmp_path):
    """A damaged IJK to RAS matrix (two axes along one line) places no volume in space: said in
    one sentence before the Segment button runs, not as ITK's refusal to take the matrix."""
    import vtk

    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, np.zeros(grid.shape_zyx, np.int16), grid, name="Damaged CT")
    matrix = vtk.vtkMatrix4x4()
    for row, values in enumerate([[1.4, 1.6, 0, 0], [0, 0, 0, 0], [0, 0, 3.3, 0]]):
        for column, value in enumerate(values):
            matrix.SetElement(row, column, value)
    volume.SetIJKToRASMatrix(matrix)
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    problems = segment_problems(SegmentRequest([volume], model))
    assert problems == ["Volume 'Damaged CT' cannot be placed in space: its IJK to RAS matrix has (nearly) "
                        "parallel axes (determinant 0); fix its geometry in the Volumes module."]
    with pytest.raises(InputError, match=r"^Volume 'Damaged CT' cannot be placed in space: .* parallel axes"):
        SegmentJob(scene, SegmentRequest([volume], model), work_dir=str(tmp_path)).start()
    assert list(tmp_path.glob("masksam-segment-*")) == []
