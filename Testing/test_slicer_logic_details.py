"""Details of the Slicer module's logic a user depends on (real slicer-core MRML nodes): when two
grids are the same, label maps checked against their volume's grid, segmentations that
reference their volume (Segment Editor paints on the CT's voxels), colours and standard codes
of segments, sides read from abbreviations, segment volumes under scaling transforms, a second
channel on another grid refused, and cancelling: before a start, a core ignoring SIGTERM, a core
stopped from outside."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_support import add_scalar_volume, distinct_voxel_values, new_scene, oblique_grid
from test_slicer_jobs import fake_model_folder

from MaskSAMCore.errors import InputError
from MaskSAMSegmentLib.geometry import LpsGrid
from MaskSAMSegmentLib.volume_nodes import array_from_labelmap_node, labelmap_node_from_array, volume_grid


def test_volumes_of_different_size_on_the_same_placement_are_not_the_same_grid():
    """A cropped copy of a volume starts where it does but is not on
    its grid: a second channel of another size must not pass as the same grid."""
    scene = new_scene()
    grid = oblique_grid()
    big = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid, "big")
    small_shape = (grid.shape_zyx[0] - 1,) + grid.shape_zyx[1:]
    small_grid = LpsGrid((grid.size[0], grid.size[1], grid.size[2] - 1), grid.spacing, grid.origin, grid.direction)
    small = add_scalar_volume(scene, distinct_voxel_values(small_shape), small_grid, "small")
    assert not volume_grid(big).same_as(volume_grid(small))
    assert volume_grid(big).same_as(volume_grid(big))


def test_a_grid_moved_by_a_tenth_of_a_millimetre_is_another_grid():
    """0.1 mm is far above float rounding (1e-4) and must count."""
    grid = oblique_grid()
    moved = LpsGrid(grid.size, grid.spacing, (grid.origin[0] + 0.1, grid.origin[1], grid.origin[2]), grid.direction)
    stretched = LpsGrid(grid.size, (grid.spacing[0] * 1.01, grid.spacing[1], grid.spacing[2]), grid.origin,
                        grid.direction)
    assert not grid.same_as(moved) and not grid.same_as(stretched)
    nudged = LpsGrid(grid.size, grid.spacing, (grid.origin[0] + 1e-6, grid.origin[1], grid.origin[2]), grid.direction)
    assert grid.same_as(nudged)


def test_a_labelmap_on_another_grid_than_expected_is_refused_by_name():
    """Reading a labelmap node back against the volume's grid checks it."""
    grid = oblique_grid()
    labels = np.zeros(grid.shape_zyx, np.uint8)
    labels[2, 3, 4] = 1
    node = labelmap_node_from_array(labels, grid, name="exported")
    assert np.array_equal(array_from_labelmap_node(node, expected_grid=grid), labels)
    other = LpsGrid(grid.size, grid.spacing, (0.0, 0.0, 0.0), grid.direction)
    with pytest.raises(InputError, match="labelmap 'exported' is on"):
        array_from_labelmap_node(node, expected_grid=other)


def _reference_of(node):
    return node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())


@pytest.mark.parametrize("replace", [False, True])
def test_an_imported_segmentation_is_edited_on_its_volumes_grid(replace):
    """The new or replaced segmentation references the input volume, so
    Segment Editor paints on the CT's voxels rather than on a grid of its own."""
    from MaskSAMSegmentLib.segmentations import import_label_map

    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid)
    labels = np.zeros(grid.shape_zyx, np.uint8)
    labels[2:4, 3:6, 4:8] = 1
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "old") if replace else None
    node = import_label_map(scene, labels, grid, {1: "liver"}, segmentation_node=existing, reference_volume=volume)
    assert _reference_of(node) is volume


def test_unknown_labels_get_the_palette_colour_of_their_value():
    """Two structures the terminology does not know
    get different colours, fixed by their label value (the palette entry value - 1)."""
    from MaskSAMSegmentLib.segmentations import import_label_map
    from MaskSAMCore.terminology import load_table

    palette = load_table()["fallback_palette"]
    scene = new_scene()
    grid = oblique_grid()
    labels = np.zeros(grid.shape_zyx, np.uint8)
    labels[1, 1, 1], labels[3, 3, 3] = 1, 2
    node = import_label_map(scene, labels, grid, {1: "blob_a", 2: "blob_b"})
    segmentation = node.GetSegmentation()
    colours = {segmentation.GetNthSegment(i).GetName(): tuple(segmentation.GetNthSegment(i).GetColor())
               for i in range(segmentation.GetNumberOfSegments())}
    assert colours["Blob a"] == pytest.approx(tuple(c / 255 for c in palette[0]))
    assert colours["Blob b"] == pytest.approx(tuple(c / 255 for c in palette[1]))


def test_many_unknown_labels_all_get_colours_of_their_own():
    """Beyond the palette's 20 colours: a model of 120 lesion or vertebra labels shows no two
    alike (before, label 21 had label 1's colour)."""
    from MaskSAMCore.terminology import AnatomyTerminology

    styles = AnatomyTerminology().styles([(f"lesion_{value}", value) for value in range(1, 121)])
    colours = [tuple(round(c * 255) for c in style.color) for style in styles]
    assert len(set(colours)) == 120
    assert all(0 <= c <= 255 for colour in colours for c in colour)
    closest = min(sum((a - b) ** 2 for a, b in zip(one, other)) ** 0.5
                  for k, one in enumerate(colours[20:], start=20) for other in colours[k - 20:k])
    assert closest > 20   # each is visibly unlike the 20 labels before it (of 441 possible)


def test_a_segment_under_a_scaling_transform_has_its_world_volume():
    """A segment of 24 voxels of 1 mm³ under a 2x scaling
    transform covers 24 * 8 mm³ in the world (what the dataset builder compares with)."""
    import vtk
    from MaskSAMSegmentLib.segmentations import import_label_map, segment_volume_mm3

    scene = new_scene()
    grid = LpsGrid((8, 7, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    labels = np.zeros(grid.shape_zyx, np.uint8)
    labels[1:3, 1:4, 1:5] = 1     # 2 * 3 * 4 = 24 voxels
    node = import_label_map(scene, labels, grid, {1: "liver"})
    segment_id = node.GetSegmentation().GetNthSegmentID(0)
    assert segment_volume_mm3(node, segment_id) == pytest.approx(24.0)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    scaling = vtk.vtkTransform()
    scaling.Scale(2.0, 2.0, 2.0)
    transform.SetMatrixTransformToParent(scaling.GetMatrix())
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert segment_volume_mm3(node, segment_id) == pytest.approx(24.0 * 8)


def test_known_structures_carry_their_standard_terminology_code():
    """A 'liver' segment gets the SNOMED CT liver code (10200004) in Slicer's
    terminology tag, so DICOM SEG export and the Terminologies module know what it is."""
    from MaskSAMSegmentLib.segmentations import import_label_map, segment_tag

    scene = new_scene()
    grid = oblique_grid()
    labels = np.zeros(grid.shape_zyx, np.uint8)
    labels[2, 2, 2] = 1
    segment = import_label_map(scene, labels, grid, {1: "liver"}).GetSegmentation().GetNthSegment(0)
    assert "10200004" in segment_tag(segment, segment.GetTerminologyEntryTagName())


@pytest.mark.parametrize("label, name", [("kidney_r", "Right kidney"), ("kidney_l", "Left kidney"),
                                         ("rt_lung", "Right lung")])
def test_abbreviated_sides_name_the_right_side(label, name):
    """A model's 'kidney_r' is the right kidney, not the left."""
    from MaskSAMCore.terminology import AnatomyTerminology

    assert AnatomyTerminology().style(label, 1).name == name


def test_a_second_channel_on_another_grid_is_refused_before_anything_runs(tmp_path):
    """A T2 volume not resampled onto the T1's grid: the model would see the two
    channels misaligned. Refused at start, naming the volume, with no temporary folder left."""
    from MaskSAMSegmentLib.models import read_model_info
    from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest

    folder = fake_model_folder(tmp_path / "model", labels={"background": 0, "prostate": 1},
                               channel_names={"0": "T2", "1": "ADC"})
    scene = new_scene()
    grid = oblique_grid()
    t2 = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid, "T2")
    shifted = LpsGrid(grid.size, grid.spacing, (grid.origin[0] + 5.0, grid.origin[1], grid.origin[2]), grid.direction)
    adc = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), shifted, "ADC")
    work = tmp_path / "work"
    work.mkdir()
    job = SegmentJob(scene, SegmentRequest([t2, adc], read_model_info(folder)), python="/bin/false", work_dir=str(work))
    refusal = r"Volume 'ADC' is not on the grid of channel 0 \('T2'\): its origin differs by 5 mm"
    with pytest.raises(InputError, match=refusal):
        job.start()
    assert list(work.iterdir()) == [] and job.runner is None


@pytest.mark.parametrize("kind", ["segment", "training"])
def test_cancelling_a_job_before_it_starts_ends_it(tmp_path, kind):
    """Cancel pressed before the job started: it is finished and cancelled, and poll() and wait()
    keep saying so (the widget's timer stops on `finished`), for either kind of job."""
    from MaskSAMSegmentLib.job_runner import JobState
    from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest
    from MaskSAMSegmentLib.training_job import TrainingJob, TrainRequest

    if kind == "segment":
        scene = new_scene()
        grid = oblique_grid()
        volume = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid)
        job = SegmentJob(scene, SegmentRequest([volume], None), work_dir=str(tmp_path))
    else:
        job = TrainingJob(TrainRequest(str(tmp_path / "Dataset001_X"), str(tmp_path / "model"), preset="tiny"))
    job.cancel()
    assert job.finished and job.state is JobState.CANCELLED and job.poll() is JobState.CANCELLED
    assert job.wait(timeout_s=1) is JobState.CANCELLED


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period():
    """Cancel must end a core that does not stop on SIGTERM (a hung CUDA call)."""
    import sys
    import time
    from MaskSAMSegmentLib.job_runner import JobRunner, JobState

    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    runner = JobRunner([sys.executable, "-c", code], cancel_grace_s=0.5)
    runner.start()
    deadline = time.monotonic() + 20
    while "ready" not in runner.log_text and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.02)
    started = time.monotonic()
    runner.cancel()
    assert runner.wait(timeout_s=15) is JobState.CANCELLED
    assert time.monotonic() - started < 10


def test_a_core_stopped_from_outside_with_status_130_counts_as_cancelled():
    """The core's exit status after Ctrl-C / SIGTERM from a terminal is 'cancelled',
    not a failure with an error message."""
    import sys
    from MaskSAMSegmentLib.job_runner import JobRunner, JobState

    runner = JobRunner([sys.executable, "-c", "import sys; sys.exit(130)"])
    runner.start()
    assert runner.wait(timeout_s=20) is JobState.CANCELLED
    assert runner.error_message == "cancelled"


def test_an_empty_channel_slot_is_a_problem_even_for_a_one_channel_model(tmp_path):
    """[volume, None] (a second selector left empty) does not match a 1-channel model."""
    from MaskSAMSegmentLib.models import read_model_info
    from MaskSAMSegmentLib.segment_job import SegmentRequest, segment_problems

    folder = fake_model_folder(tmp_path / "model")
    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid)
    model = read_model_info(folder)
    assert segment_problems(SegmentRequest([volume], model)) == []
    assert any("needs 1 input volume" in p for p in segment_problems(SegmentRequest([volume, None], model)))


def test_a_resumed_trainings_plot_shows_its_earlier_epochs_and_replaces_the_old_one(tmp_path):
    """A resumed run's epoch lines start after its last checkpoint: the plot takes the earlier
    epochs from the folder's training_log.csv, and the interrupted start's chart of the same name
    is replaced, not doubled."""
    from MaskSAMSegmentLib.training_plot import TrainingPlot

    scene = new_scene()
    first = TrainingPlot(scene, title="MaskSAM training run")
    first.add_epoch({"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "mean_dice": 0.2, "ema_dice": 0.2})
    (tmp_path / "training_log.csv").write_text(
        "epoch,train_loss,val_loss,dice_liver,mean_dice,ema_dice,lr,epoch_time_s\n"
        "1,2.0,1.5,0.2,0.2,0.2,0.01,3.0\n"
        "2,1.0,0.9,0.5,0.5,0.23,0.009,3.1\n")

    resumed = TrainingPlot(scene, title="MaskSAM training run")
    assert resumed.add_logged_epochs(tmp_path)
    resumed.add_epoch({"epoch": 3, "train_loss": 0.5, "val_loss": 0.4, "mean_dice": 0.7, "ema_dice": 0.3})
    assert [(row["epoch"], row["train_loss"], row["mean_dice"]) for row in resumed.rows()] == [
        (1.0, 2.0, pytest.approx(0.2)), (2.0, 1.0, 0.5), (3.0, 0.5, pytest.approx(0.7))]
    charts = [scene.GetNthNodeByClass(i, "vtkMRMLPlotChartNode")
              for i in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode"))]
    assert [chart.GetName() for chart in charts] == ["MaskSAM training run"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 4
    assert first.table_node.GetScene() is None

    assert not TrainingPlot(new_scene()).add_logged_epochs(tmp_path / "no training here")


def test_the_preselected_input_is_the_first_plain_scalar_volume_not_a_labelmap_or_vector_volume():
    """The module preselects an input volume the input selector can show: GetFirstNodeByClass
    returned the labelmap loaded first, which the selector hides and Segment refuses."""
    from MaskSAMSegmentLib.volume_nodes import first_scalar_volume

    scene = new_scene()
    assert first_scalar_volume(scene) is None
    grid = oblique_grid()
    labelmap_node_from_array(np.zeros(grid.shape_zyx, np.uint8), grid, scene=scene, name="labels")
    scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    hidden = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid, "hidden")
    hidden.SetHideFromEditors(True)
    assert first_scalar_volume(scene) is None
    ct = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid, "CT")
    add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid, "MR")
    assert first_scalar_volume(scene) is ct
