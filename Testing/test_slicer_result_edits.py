"""Segmenting again never replaces a segmentation someone edited: the widget keeps the last result
as the output, and a clinician may have corrected it in Segment Editor since."""

from __future__ import annotations

import numpy as np
from vtk.util.numpy_support import vtk_to_numpy

from slicer_support import add_scalar_volume, distinct_voxel_values, new_scene, oblique_grid
from test_slicer_jobs import fake_model_folder
from test_slicer_robustness import _segmented, fake_predictor

from MaskSAMSegmentLib.job_runner import JobState
from MaskSAMSegmentLib.models import read_model_info
from MaskSAMSegmentLib.result_fingerprint import FINGERPRINT_ATTRIBUTE, content_fingerprint
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest
from MaskSAMSegmentLib.segmentations import show_in_3d


def _set_up(tmp_path):
    scene = new_scene()
    volume = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid(), name="CT")
    return scene, volume, read_model_info(fake_model_folder(tmp_path / "model")), fake_predictor(tmp_path)


def erase_half_of(node, segment_id: str) -> np.ndarray:
    """What Segment Editor's Erase does: the segment's labelmap with voxels cleared, set back
    through the segmentations logic. Returns the segment's voxels after the edit."""
    import slicer

    logic = slicer.vtkSlicerSegmentationsModuleLogic
    image = slicer.vtkOrientedImageData()
    assert logic.GetSegmentBinaryLabelmapRepresentation(node, segment_id, image)
    voxels = vtk_to_numpy(image.GetPointData().GetScalars())
    voxels[: voxels.size // 2] = 0
    image.Modified()
    assert logic.SetBinaryLabelmapToSegment(image, node, segment_id, logic.MODE_REPLACE)
    return segment_voxels(node, segment_id)


def segment_voxels(node, segment_id: str) -> np.ndarray:
    import slicer

    image = slicer.vtkOrientedImageData()
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(node, segment_id, image)
    return vtk_to_numpy(image.GetPointData().GetScalars()).copy()


def test_segmenting_again_keeps_a_corrected_result_and_makes_a_new_segmentation(tmp_path):
    scene, volume, model, python = _set_up(tmp_path)
    result = _segmented(scene, volume, model, python).result_node
    liver = result.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    before = segment_voxels(result, liver)
    corrected = erase_half_of(result, liver)
    assert 0 < np.count_nonzero(corrected) < np.count_nonzero(before)

    again = _segmented(scene, volume, model, python, output=result)
    assert again.result_node is not result and again.result_node.GetName() == "CT Test model_1"
    assert segment_voxels(result, liver).tolist() == corrected.tolist()   # the correction is still there
    assert again.warnings == ["segmentation 'CT Test model' was edited after MaskSAM made it; the new result is a "
                              "new segmentation, your edits are kept"]


def test_a_renamed_or_added_segment_counts_as_an_edit(tmp_path):
    scene, volume, model, python = _set_up(tmp_path)
    renamed = _segmented(scene, volume, model, python).result_node
    renamed.GetSegmentation().GetNthSegment(0).SetName("Liver (checked)")
    added = _segmented(scene, volume, model, python).result_node
    added.GetSegmentation().AddEmptySegment("tumour")
    for node in (renamed, added):
        assert _segmented(scene, volume, model, python, output=node).result_node is not node


def test_an_unedited_result_is_replaced_even_after_display_changes(tmp_path):
    """Shown in 3D (as the widget does), recoloured, hidden: not an edit of its voxels."""
    scene, volume, model, python = _set_up(tmp_path)
    result = _segmented(scene, volume, model, python).result_node
    show_in_3d(result)
    result.GetSegmentation().GetNthSegment(0).SetColor(0.1, 0.9, 0.1)
    result.GetDisplayNode().SetSegmentVisibility(result.GetSegmentation().GetNthSegmentID(1), False)
    again = _segmented(scene, volume, model, python, output=result)
    assert again.result_node is result and again.warnings == []


def test_a_result_saved_and_read_back_is_still_unedited(tmp_path):
    """Saving writes the segments cropped and in shared layers; reading them back is no edit."""
    import slicer

    scene, volume, model, python = _set_up(tmp_path)
    result = _segmented(scene, volume, model, python).result_node
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "result.seg.nrrd"))
    assert storage.WriteData(result) == 1
    read_back = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert storage.ReadData(read_back) == 1
    assert content_fingerprint(read_back) == result.GetAttribute(FINGERPRINT_ATTRIBUTE)


def test_a_segmentation_with_segments_masksam_did_not_make_is_kept(tmp_path):
    """Drawn by hand and chosen as the output: its segments stay; an empty one receives the result."""
    scene, volume, model, python = _set_up(tmp_path)
    drawn = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my drawing")
    drawn.GetSegmentation().AddEmptySegment("lesion")
    job = _segmented(scene, volume, model, python, output=drawn)
    assert job.result_node is not drawn and drawn.GetSegmentation().GetNumberOfSegments() == 1
    assert job.warnings == ["segmentation 'my drawing' was not made by MaskSAM; the new result is a new "
                            "segmentation, its segments are kept"]

    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "for the result")
    assert _segmented(scene, volume, model, python, output=empty).result_node is empty


def test_a_result_of_an_earlier_version_without_fingerprint_is_kept(tmp_path):
    scene, volume, model, python = _set_up(tmp_path)
    result = _segmented(scene, volume, model, python).result_node
    result.RemoveAttribute(FINGERPRINT_ATTRIBUTE)
    job = _segmented(scene, volume, model, python, output=result)
    assert job.result_node is not result
    assert "made by an earlier MaskSAM version" in job.warnings[0]


def test_segmenting_again_keeps_the_colours_the_user_chose(tmp_path):
    """A result recoloured (no edit: it is replaced in place) keeps its colours; the others keep theirs."""
    scene, volume, model, python = _set_up(tmp_path)
    result = _segmented(scene, volume, model, python).result_node
    segmentation = result.GetSegmentation()
    chosen = (0.1, 0.9, 0.2)
    segmentation.GetNthSegment(0).SetColor(*chosen)
    default = segmentation.GetNthSegment(1).GetColor()
    again = _segmented(scene, volume, model, python, output=result)
    assert again.result_node is result
    assert np.allclose(segmentation.GetNthSegment(0).GetColor(), chosen)
    assert np.allclose(segmentation.GetNthSegment(1).GetColor(), default)


def test_results_replaced_in_place_use_up_no_number_of_the_next_new_name(tmp_path):
    scene, volume, model, python = _set_up(tmp_path)
    result = _segmented(scene, volume, model, python).result_node
    for _ in range(2):
        assert _segmented(scene, volume, model, python, output=result).result_node is result
    assert result.GetName() == "CT Test model"
    assert _segmented(scene, volume, model, python).result_node.GetName() == "CT Test model_1"


def test_the_log_names_the_structures_the_model_did_not_find(tmp_path):
    """Every label of the model gets a segment; one the model did not find is empty, and the log says so."""
    scene, volume, model, python = _set_up(tmp_path)
    lines = []
    job = SegmentJob(scene, SegmentRequest([volume], model), python=python, on_log=lines.append)
    job.start()
    assert job.wait(timeout_s=60) is JobState.SUCCEEDED
    assert job.result_node.GetSegmentation().GetNumberOfSegments() == 2
    assert job.not_found == ["Spleen"] and lines[-1] == "Not found (empty): Spleen."


def test_a_result_of_a_transformed_volume_says_it_does_not_follow_that_transform(tmp_path):
    """A new result lies in the world where the volume is (under no transform): a refined registration
    would move the volume away from it, which the user is told. Under the volume's transform, nothing is said."""
    from slicer_support import chain_of_transforms

    scene, volume, model, python = _set_up(tmp_path)
    chain_of_transforms(scene, volume, ((15.0, -7.0, 4.0), (0.3, 1.0, 0.2), 25.0))
    transform = volume.GetParentTransformNode()
    transform.SetName("registration")
    job = _segmented(scene, volume, model, python)
    assert job.result_node.GetParentTransformNode() is None
    assert job.warnings == ["volume 'CT' is under transform 'registration': the segmentation lies where the volume "
                            "is now, and does not follow later changes of that transform"]
    job.result_node.SetAndObserveTransformNodeID(transform.GetID())
    again = _segmented(scene, volume, model, python, output=job.result_node)
    assert again.result_node is job.result_node and again.warnings == []
