"""The label names of a dataset built from MaskSAM results (real slicer-core MRML nodes): the
model's, not the names its segments show, so fine-tuning goes on with the model's labels."""

from __future__ import annotations

import json

import numpy as np

from slicer_support import add_scalar_volume, distinct_voxel_values, new_scene, oblique_grid

from MaskSAMSegmentLib.dataset_builder import CasePair, build_dataset_from_scene, plan_labels
from MaskSAMSegmentLib.segmentations import import_label_map

MODEL_LABELS = {1: "kidney_left", 2: "blob_3"}


def _result(scene, name: str):
    """A volume and a MaskSAM result on it: segments 'Left kidney' and 'Blob 3', tagged with the model's labels."""
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(grid.shape_zyx), grid, name)
    labels = np.zeros(grid.shape_zyx, np.uint8)
    labels[1:4, 2:7, 3:9] = 1
    labels[4:7, 6:11, 0:5] = 2
    return volume, import_label_map(scene, labels, grid, MODEL_LABELS, reference_volume=volume)


def test_a_dataset_of_masksam_results_keeps_the_models_label_names(tmp_path):
    scene = new_scene()
    volume, result = _result(scene, "A")
    segmentation = result.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(2)] == ["Left kidney", "Blob 3"]
    assert plan_labels([CasePair(volume, result)]) == {"background": 0, "kidney_left": 1, "blob_3": 2}

    # A case drawn by hand with the display name joins the model's label; a renamed result segment is what it says.
    hand_volume, _ = _result(scene, "B")
    drawn = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    drawn.SetReferenceImageGeometryParameterFromVolumeNode(hand_volume)
    drawn.GetSegmentation().AddEmptySegment("", "left kidney")
    renamed_volume, renamed = _result(scene, "C")
    renamed.GetSegmentation().GetNthSegment(0).SetName("Cyst")
    pairs = [CasePair(volume, result), CasePair(hand_volume, drawn), CasePair(renamed_volume, renamed)]
    summary = build_dataset_from_scene(pairs, tmp_path / "Dataset502_Results")
    expected = {"background": 0, "kidney_left": 1, "blob_3": 2, "cyst": 3}
    assert summary.labels == expected
    assert json.loads((summary.folder / "dataset.json").read_text())["labels"] == expected
