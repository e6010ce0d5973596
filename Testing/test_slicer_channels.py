"""The input volumes of a multi-channel model (real slicer-core MRML nodes): the module accepts the
channel pairs `masksam predict` accepts (the core's grid rule) and writes them on one grid; it
refuses the others in the Segment button's tooltip."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from slicer_support import add_scalar_volume, distinct_voxel_values, new_scene, oblique_grid
from test_slicer_jobs import fake_model_folder

from MaskSAMSegmentLib.action_states import Activity, action_states
from MaskSAMSegmentLib.channels import image_geometry
from MaskSAMSegmentLib.geometry import LpsGrid
from MaskSAMSegmentLib.job_runner import JobState
from MaskSAMSegmentLib.models import read_model_info
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest, segment_problems
from MaskSAMSegmentLib.training_job import TrainRequest


def _moved(grid: LpsGrid, offset_mm: float) -> LpsGrid:
    return LpsGrid(grid.size, grid.spacing, (grid.origin[0] + offset_mm, grid.origin[1], grid.origin[2]),
                   grid.direction)


def _copying_program(tmp_path: Path, copy_to: Path) -> Path:
    """Stands in for the interpreter of ``masksam predict``: copies the input folder it is given
    to `copy_to`, then fails (nothing to import)."""
    script = tmp_path / "copy_input.py"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import shutil, sys
        shutil.copytree(sys.argv[sys.argv.index("predict") + 2], {str(copy_to)!r})
        sys.exit(1)
        """))
    script.chmod(0o755)
    return script


def _two_channel_scene(tmp_path: Path, offset_mm: float):
    folder = fake_model_folder(tmp_path / "model", labels={"background": 0, "prostate": 1},
                               channel_names={"0": "T2", "1": "ADC"})
    scene = new_scene()
    grid = oblique_grid()
    t2 = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid, "T2")
    adc = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), _moved(grid, offset_mm), "ADC")
    return scene, SegmentRequest([t2, adc], read_model_info(folder))


def test_channels_within_the_cores_tolerance_run_and_are_written_with_one_grid(tmp_path):
    """Two series of one scan whose origins differ by rounding (5 micrometres): the command
    line accepts them, so the module must too; both files carry channel 0's header."""
    grid = oblique_grid()
    assert not image_geometry(grid).grid_differences(image_geometry(_moved(grid, 0.005)))   # the core's rule
    scene, request = _two_channel_scene(tmp_path, 0.005)
    copied = tmp_path / "copied"
    job = SegmentJob(scene, request, python=str(_copying_program(tmp_path, copied)), work_dir=str(tmp_path))
    job.start()
    assert job.wait(timeout_s=60) is JobState.FAILED
    files = sorted(copied.iterdir())
    assert [f.name for f in files] == ["case_0000.nrrd", "case_0001.nrrd"]
    images = [sitk.ReadImage(str(f)) for f in files]
    for read in (sitk.Image.GetOrigin, sitk.Image.GetSpacing, sitk.Image.GetDirection):
        assert read(images[0]) == read(images[1])
    assert np.array_equal(sitk.GetArrayFromImage(images[1]), distinct_voxel_values(grid.shape_zyx))


def test_a_channel_off_the_grid_disables_segment_with_what_differs_and_by_how_much(tmp_path):
    """Said in the disabled button's tooltip while choosing volumes, not in an error after the click."""
    scene, request = _two_channel_scene(tmp_path, 1.5)
    expected = ("Volume 'ADC' is not on the grid of channel 0 ('T2'): its origin differs by 1.5 mm; all channels "
                "must share one voxel grid (resample it onto 'T2' first).")
    assert segment_problems(request) == [expected]
    state = action_states([], request, TrainRequest("", ""), [], "", Activity())["segmentButton"]
    assert not state.enabled and state.tooltip == expected
    grid = oblique_grid()
    small = LpsGrid((grid.size[0] - 1,) + grid.size[1:], grid.spacing, grid.origin, grid.direction)
    cropped = add_scalar_volume(scene, distinct_voxel_values(small.shape_zyx), small, "ADC cropped")
    request.input_volumes[1] = cropped
    assert segment_problems(request) == [
        "Volume 'ADC cropped' is not on the grid of channel 0 ('T2'): its size differs (12 x 11 x 7 voxels vs "
        "13 x 11 x 7); all channels must share one voxel grid (resample it onto 'T2' first)."]


def test_one_volume_chosen_for_two_channels_disables_segment(tmp_path):
    """The second selector left on the first volume: the model would see one image twice."""
    scene, request = _two_channel_scene(tmp_path, 0.0)
    request.input_volumes[1] = request.input_volumes[0]
    assert segment_problems(request) == ["'T2' is chosen for both T2 and ADC; choose one volume per channel."]
