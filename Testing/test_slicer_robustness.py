"""The Slicer module when things around a job go wrong: Slicer closing mid-run, a worker that
outlives its process, a kill by the system, a result that cannot be imported, nodes removed or
renamed while work runs, and a second volume segmented after the first."""

from __future__ import annotations

import collections
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slicer_support import (add_scalar_volume, distinct_voxel_values, live_processes_in_group, new_scene,
                            oblique_grid)
from test_slicer_dataset import rename_segments, two_cases
from test_slicer_jobs import fake_model_folder, slow_program

from MaskSAMCore.errors import InputError
from MaskSAMSegmentLib.dataset_builder import CasePair, DatasetBuilder, build_dataset_from_scene, check_pairs
from MaskSAMSegmentLib.job_runner import JobRunner, JobState, stop_jobs
from MaskSAMSegmentLib.models import read_model_info
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX process groups and signals")


def program(tmp_path: Path, name: str, body: str) -> str:
    """An executable standing in for the interpreter of a MaskSAM command (it gets
    ``-m MaskSAMCore --machine-progress predict MODEL INPUT OUTPUT ...``)."""
    script = tmp_path / name
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return str(script)


def fake_predictor(tmp_path: Path, labels_expression: str = "(voxels > 0).astype('uint8')") -> str:
    """Writes `labels_expression` of the input's voxels on the input's grid, as the core would."""
    return program(tmp_path, "fake_predict.py", f"""\
        import sys
        import SimpleITK as sitk
        arguments = sys.argv[sys.argv.index("predict") + 1:]
        image = sitk.ReadImage(arguments[1])
        voxels = sitk.GetArrayFromImage(image)
        labels = sitk.GetImageFromArray({labels_expression})
        labels.CopyInformation(image)
        sitk.WriteImage(labels, arguments[2])
        """)


def node_classes(scene) -> collections.Counter:
    classes = (scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes()))
    return collections.Counter(c for c in classes if c != "vtkMRMLSubjectHierarchyNode")


@posix_only
def test_closing_slicer_mid_run_ends_every_job_and_removes_their_copies_of_the_volume(tmp_path):
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid())
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    work = tmp_path / "work"
    work.mkdir()
    jobs = [SegmentJob(scene, SegmentRequest([volume], model), python=str(slow_program(tmp_path)),
                       work_dir=str(work)) for _ in range(2)]   # a segmentation and, say, a second one
    for job in jobs:
        job.start()
    assert len(list(work.iterdir())) == 2
    stop_jobs([jobs[0], None, jobs[1]])   # what the widget's cleanup() does; nothing polls afterwards
    assert [job.state for job in jobs] == [JobState.CANCELLED] * 2
    assert list(work.iterdir()) == []
    assert [live_processes_in_group(job.runner.pid) for job in jobs] == [[], []]


@posix_only
def test_a_job_ends_even_when_a_worker_outlives_it_holding_the_output(tmp_path):
    crashing = program(tmp_path, "crash.py", """\
        import os, subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])   # inherits stdout
        print("loading data", flush=True)
        os._exit(3)
        """)
    runner = JobRunner([crashing])
    runner.start()
    started = time.monotonic()
    assert runner.wait(timeout_s=30) is JobState.FAILED
    assert time.monotonic() - started < 15
    assert runner.returncode == 3 and live_processes_in_group(runner.pid) == []


@posix_only
def test_a_process_killed_by_the_system_says_so_instead_of_its_last_line(tmp_path):
    killed = program(tmp_path, "killed.py", """\
        import os, signal
        print("epoch 3/100: train loss 0.41", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    runner = JobRunner([killed])
    runner.start()
    assert runner.wait(timeout_s=30) is JobState.FAILED
    assert runner.error_message == ("the MaskSAM process was killed by SIGKILL "
                                    "(the system may have run out of memory)")


def test_a_result_that_cannot_be_imported_fails_the_job_with_one_line(tmp_path):
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid())
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    work = tmp_path / "work"
    work.mkdir()
    nodes_before = node_classes(scene)
    python = fake_predictor(tmp_path, "voxels.astype('float32') * float('nan')")
    job = SegmentJob(scene, SegmentRequest([volume], model), python=python, work_dir=str(work))
    job.start()
    assert job.wait(timeout_s=60) is JobState.FAILED     # poll() reported it, did not raise
    assert job.error_message and "\n" not in job.error_message
    assert node_classes(scene) == nodes_before and list(work.iterdir()) == []


def test_a_bug_while_importing_the_result_keeps_its_traceback_in_the_log(tmp_path, monkeypatch, caplog):
    """The status says what failed in one line; a programming error must also leave its traceback
    in Slicer's log, or nobody can find where it happened."""
    import MaskSAMSegmentLib.segment_job as segment_job

    def broken_import(*args, **kwargs):
        raise KeyError("segment_id")

    monkeypatch.setattr(segment_job, "import_label_map", broken_import)
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid())
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    job = SegmentJob(scene, SegmentRequest([volume], model), python=fake_predictor(tmp_path), work_dir=str(tmp_path))
    job.start()
    assert job.wait(timeout_s=60) is JobState.FAILED
    assert job.error_message == "could not import the result: KeyError: 'segment_id'"
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1 and "broken_import" in caplog.text


@pytest.mark.parametrize("keep_files", [False, True])
def test_the_work_folder_goes_after_success_unless_the_files_are_kept(tmp_path, keep_files):
    """The temporary folder holds a copy of the patient's volume: removed once the result is in
    the scene, kept (with the core's label map) only when asked for, for debugging."""
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid())
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    work = tmp_path / "work"
    work.mkdir()
    job = SegmentJob(scene, SegmentRequest([volume], model), python=fake_predictor(tmp_path), work_dir=str(work),
                     keep_files=keep_files)
    job.start()
    assert job.wait(timeout_s=60) is JobState.SUCCEEDED, job.error_message
    assert job.result_node is not None
    if not keep_files:
        assert list(work.iterdir()) == []
        return
    folders = list(work.iterdir())
    assert len(folders) == 1, "the kept folder was removed"
    folder = folders[0]
    assert sorted(p.name for p in folder.iterdir()) == ["input.nrrd", "kept-for-debugging", "labels.nrrd"]
    assert job.label_file == folder / "labels.nrrd"


@pytest.mark.parametrize("ending", ["core fails", "result unreadable", "cancelled"])
def test_kept_files_are_removed_all_the_same_when_the_job_does_not_succeed(tmp_path, ending):
    """keep_files is for looking at a result; a failed or cancelled job leaves no copy of the volume."""
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid())
    model = read_model_info(fake_model_folder(tmp_path / "model"))
    work = tmp_path / "work"
    work.mkdir()
    python = {"core fails": lambda: program(tmp_path, "fails.py", """\
                  import sys
                  print("masksam: error: out of memory", file=sys.stderr)
                  sys.exit(1)
                  """),
              "result unreadable": lambda: fake_predictor(tmp_path, "voxels.astype('float32') * float('nan')"),
              "cancelled": lambda: str(slow_program(tmp_path))}[ending]()
    job = SegmentJob(scene, SegmentRequest([volume], model), python=python, work_dir=str(work), keep_files=True)
    job.start()
    assert len(list(work.iterdir())) == 1
    if ending == "cancelled":
        job.cancel()
    assert job.wait(timeout_s=60) is (JobState.CANCELLED if ending == "cancelled" else JobState.FAILED)
    assert list(work.iterdir()) == []


def _two_volumes(tmp_path, first_name: str, second_name: str):
    """A scene with two volumes, a model and a fake predictor: (scene, first, second, model, python)."""
    scene = new_scene()
    first = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid(), name=first_name)
    second = add_scalar_volume(scene, -distinct_voxel_values(), oblique_grid(), name=second_name)
    return scene, first, second, read_model_info(fake_model_folder(tmp_path / "model")), fake_predictor(tmp_path)


def _segmented(scene, volume, model, python, output=None) -> SegmentJob:
    job = SegmentJob(scene, SegmentRequest([volume], model, output_segmentation=output), python=python)
    job.start()
    assert job.wait(timeout_s=60) is JobState.SUCCEEDED
    return job


def test_segmenting_another_volume_makes_a_new_segmentation_instead_of_replacing(tmp_path):
    scene, first, second, model, python = _two_volumes(tmp_path, "Patient A", "Patient B")

    result_a = _segmented(scene, first, model, python).result_node
    segments_a = result_a.GetSegmentation().GetNumberOfSegments()
    again = _segmented(scene, first, model, python, output=result_a)
    assert again.result_node is result_a and again.warnings == []   # same volume: replaced in place

    # The widget keeps the last result as the output; segmenting the next patient must not overwrite it.
    job_b = _segmented(scene, second, model, python, output=result_a)
    assert job_b.result_node is not result_a and job_b.result_node.GetName() == "Patient B Test model"
    assert result_a.GetSegmentation().GetNumberOfSegments() == segments_a
    assert "belongs to volume 'Patient A'" in job_b.warnings[0]


def test_a_new_result_is_filed_in_its_volumes_study(tmp_path):
    """In the Data module's tree a new result sits beside its volume (in the patient's study,
    where a DICOM SEG export needs it); a replaced result stays where the user moved it."""
    import slicer

    scene, first, _, model, python = _two_volumes(tmp_path, "CT", "Other")
    tree = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = tree.CreateStudyItem(tree.CreateSubjectItem(tree.GetSceneItemID(), "Patient"), "Study")
    tree.CreateItem(study, first)
    result = _segmented(scene, first, model, python).result_node
    assert tree.GetItemParent(tree.GetItemByDataNode(result)) == study
    reviewed = tree.CreateFolderItem(tree.GetSceneItemID(), "Reviewed")
    tree.SetItemParent(tree.GetItemByDataNode(result), reviewed)
    assert _segmented(scene, first, model, python, output=result).result_node is result
    assert tree.GetItemParent(tree.GetItemByDataNode(result)) == reviewed


def test_two_volumes_of_one_name_get_segmentations_that_can_be_told_apart(tmp_path):
    """Two series both called 'CT' (loaded from two studies): the second result is not named
    like the first, and the log does not say 'belongs to volume CT' of a volume called CT."""
    scene, first, second, model, python = _two_volumes(tmp_path, "CT", "CT")
    job_a = _segmented(scene, first, model, python)

    job_b = _segmented(scene, second, model, python, output=job_a.result_node)
    assert job_a.result_node.GetName() == "CT Test model"
    assert job_b.result_node is not job_a.result_node and job_b.result_node.GetName() == "CT Test model_1"
    assert job_b.warnings == ["segmentation 'CT Test model' belongs to another volume named 'CT'; "
                              "the result is a new segmentation"]


def test_segmenting_with_another_model_keeps_the_first_models_result(tmp_path):
    """After the abdomen model's run the widget selects its result as the output; segmenting the
    same CT with a heart model must not turn 'CT Test model' into the heart's segments."""
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid(), name="CT")
    abdomen = read_model_info(fake_model_folder(tmp_path / "abdomen"))
    heart_folder = fake_model_folder(tmp_path / "heart", labels={"background": 0, "LV": 1, "RV": 2})
    meta = json.loads((heart_folder / "model.json").read_text())
    (heart_folder / "model.json").write_text(json.dumps({**meta, "name": "Heart"}))
    python = fake_predictor(tmp_path)
    first = SegmentJob(scene, SegmentRequest([volume], abdomen), python=python)
    first.start()
    assert first.wait(timeout_s=60) is JobState.SUCCEEDED
    abdomen_result = first.result_node

    job = SegmentJob(scene, SegmentRequest([volume], read_model_info(heart_folder), output_segmentation=abdomen_result),
                     python=python)
    job.start()
    assert job.wait(timeout_s=60) is JobState.SUCCEEDED
    assert job.result_node is not abdomen_result and job.result_node.GetName() == "CT Heart"
    segmentation = abdomen_result.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
        "Liver", "Spleen"]
    assert "holds the result of model 'Test model'" in job.warnings[0]


def test_an_output_segmentation_deleted_during_the_run_gives_a_new_one(tmp_path):
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid(), name="CT")
    chosen = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my output")
    job = SegmentJob(scene, SegmentRequest([volume], read_model_info(fake_model_folder(tmp_path / "model")),
                                           output_segmentation=chosen), python=fake_predictor(tmp_path))
    job.start()
    scene.RemoveNode(chosen)
    assert job.wait(timeout_s=60) is JobState.SUCCEEDED
    assert job.result_node.GetScene() is scene
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert "'my output' was removed during the run" in job.warnings[0]


def test_an_input_volume_deleted_during_the_run_keeps_its_result_where_it_was(tmp_path):
    from MaskSAMSegmentLib.segmentations import export_segments_on_volume

    scene = new_scene()
    voxels = distinct_voxel_values()
    volume = add_scalar_volume(scene, voxels, oblique_grid(), name="CT")
    job = SegmentJob(scene, SegmentRequest([volume], read_model_info(fake_model_folder(tmp_path / "model"))),
                     python=fake_predictor(tmp_path))
    job.start()
    scene.RemoveNode(volume)
    assert job.wait(timeout_s=60) is JobState.SUCCEEDED
    result = job.result_node
    assert result.GetScene() is scene and result.GetName() == "CT Test model"
    assert result.GetNodeReference(result.GetReferenceImageGeometryReferenceRole()) is None   # none dangling
    assert "volume 'CT' was removed during the run" in job.warnings[0]
    # The labels lie where the volume was: read back on a volume of the same oblique grid.
    same_grid = add_scalar_volume(scene, voxels, oblique_grid(), name="CT again")
    segment_id = result.GetSegmentation().GetNthSegmentID(0)
    assert (export_segments_on_volume(result, same_grid, [segment_id]) > 0).tolist() == (voxels > 0).tolist()


def test_an_output_segmentation_under_a_non_linear_transform_is_refused_before_the_run(tmp_path):
    """Its segments could not be placed through the transform: say so before predicting (an hour
    on a CPU), not when importing the result, which was then thrown away."""
    import vtk

    from MaskSAMSegmentLib.segment_job import segment_problems

    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid(), name="CT")
    chosen = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my output")
    warp = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "deformable registration")
    warp.SetAndObserveTransformToParent(vtk.vtkGridTransform())
    chosen.SetAndObserveTransformNodeID(warp.GetID())
    request = SegmentRequest([volume], read_model_info(fake_model_folder(tmp_path / "model")),
                             output_segmentation=chosen)
    message = ("Segmentation 'my output' is under the non-linear transform 'deformable registration'; "
               "harden the transform (Data module) first.")
    assert segment_problems(request) == [message]
    work = tmp_path / "work"
    work.mkdir()
    nodes_before = node_classes(scene)
    job = SegmentJob(scene, request, python=fake_predictor(tmp_path), work_dir=str(work))
    with pytest.raises(InputError, match="'my output' is under the non-linear transform"):
        job.start()
    assert job.runner is None and list(work.iterdir()) == [] and node_classes(scene) == nodes_before


def test_building_a_dataset_adds_nothing_to_the_users_scene(tmp_path):
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    before = node_classes(scene)
    build_dataset_from_scene(pairs, tmp_path / "Dataset502_Scene")
    assert node_classes(scene) == before     # no colour table per exported segment


def test_a_segment_renamed_during_the_build_stops_it_with_its_name(tmp_path):
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    builder = DatasetBuilder(pairs, tmp_path / "ds")
    builder.step()
    rename_segments(pairs[1].segmentation, ["Pancreas"])
    with pytest.raises(InputError, match="segment 'Pancreas' .* was added or renamed after the build started"):
        builder.step()
    builder.abort()
    assert list(tmp_path.iterdir()) == []


def test_pairs_whose_nodes_left_the_scene_are_refused_by_name(tmp_path):
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    builder = DatasetBuilder(pairs, tmp_path / "ds")
    scene.RemoveNode(pairs[1].volume)
    assert check_pairs(pairs) == ["'Patient B' is no longer in the scene; remove its pair."]
    builder.step()
    with pytest.raises(InputError, match="case_001: 'Patient B' is no longer in the scene"):
        builder.step()
    builder.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_segment_empty_in_every_case_is_warned_about(tmp_path):
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    pairs[0].segmentation.GetSegmentation().AddEmptySegment("gallbladder", "Gallbladder")
    summary = build_dataset_from_scene(pairs, tmp_path / "Dataset503_Scene")
    assert summary.labels["gallbladder"] == 3
    # (two_cases: A has liver and kidney, B spleen and kidney; gallbladder is said once, as empty everywhere)
    segmentations = [pair.segmentation.GetName() for pair in pairs]
    assert summary.warnings == [
        f"case_000 ('{segmentations[0]}') has no segment spleen: the model learns it as background there "
        "(right only if that case has none)",
        f"case_001 ('{segmentations[1]}') has no segment liver: the model learns it as background there "
        "(right only if that case has none)",
        "segment(s) gallbladder are empty in every case: the model cannot learn them"]


def test_segments_slicer_cannot_convert_stop_the_build_with_one_line_and_leave_nothing(tmp_path):
    """A segment stored only as planar contours (an RT structure set without SlicerRT's converter)
    has no way to a label map: the build names the segmentation, the volume and the reason,
    writes no folder, and leaves the scene as it was."""
    import slicer
    import vtk

    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid, name="Patient C")
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "RT structures")
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation = segmentation_node.GetSegmentation()
    segmentation.SetSourceRepresentationName("Planar contour")
    contour = vtk.vtkSphereSource()
    contour.SetCenter(*grid.origin)
    contour.SetRadius(5.0)
    contour.Update()
    segment = slicer.vtkSegment()
    segment.SetName("liver")
    segment.AddRepresentation("Planar contour", contour.GetOutput())
    segmentation.AddSegment(segment)
    before = node_classes(scene)
    with pytest.raises(InputError, match=r"^Slicer could not export segmentation 'RT structures' onto volume "
                                         r"'Patient C' \(its segments are stored as 'Planar contour', which could "
                                         r"not be converted to a label map\)$"):
        build_dataset_from_scene([CasePair(volume, segmentation_node)], tmp_path / "Dataset504_Scene")
    assert list(tmp_path.iterdir()) == []
    assert node_classes(scene) == before
