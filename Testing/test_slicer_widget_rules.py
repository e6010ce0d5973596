"""Decisions the widget delegates to MaskSAMSegmentLib so they are tested without Qt: which
button is enabled, which device entry stays selected, which output node stays chosen, what a
Reload drops."""

from __future__ import annotations

from slicer_support import MODULE_DIR  # first: it puts the module's folder on sys.path
from MaskSAMSegmentLib.action_states import Activity, action_states
from MaskSAMSegmentLib.segment_job import SegmentRequest
from MaskSAMSegmentLib.training_job import TrainRequest

assert (MODULE_DIR / "MaskSAMSegmentLib").is_dir()


def test_stop_ends_a_sam_download_that_would_otherwise_lock_the_training_tab(tmp_path):
    """A SAM checkpoint is up to 2.5 GB: while it downloads, Start, Build and Download wait, so
    Stop must reach the download (the core keeps the partial file for the next Download)."""
    train = TrainRequest(str(tmp_path / "ds"), str(tmp_path / "out"), preset="vit_b")
    states = action_states([], SegmentRequest([], None), train, [], "", Activity(downloading=True))
    assert states["stopTrainingButton"].enabled
    assert "download" in states["stopTrainingButton"].tooltip
    assert not states["startTrainingButton"].enabled and not states["downloadSamButton"].enabled
    idle = action_states([], SegmentRequest([], None), train, [], "", Activity())
    assert not idle["stopTrainingButton"].enabled
    training = action_states([], SegmentRequest([], None), train, [], "", Activity(training=True))
    assert training["stopTrainingButton"].enabled and "resumed" in training["stopTrainingButton"].tooltip


def test_a_device_chosen_before_the_probe_answers_stays_chosen():
    """The labels change when the probe answers ("CPU" -> "CPU (slow)"); the choice is kept by
    what the job runs on, and falls back to Auto when that device is gone."""
    from MaskSAMSegmentLib.devices import DeviceReport, device_choices, same_device_index, unprobed_choices

    auto, cpu = unprobed_choices()
    probed = device_choices(DeviceReport("2.5.0", ((0, "H100", 79.6), (1, "A100", 39.4))))
    assert probed[same_device_index(probed, cpu)].label == "CPU (slow)"
    assert same_device_index(probed, auto) == 0
    assert probed[same_device_index(probed, probed[2])].label.startswith("GPU 1: A100")
    without_gpus = device_choices(None)
    assert same_device_index(without_gpus, probed[2]) == 0
    assert without_gpus[same_device_index(without_gpus, probed[-1])].label == "CPU"
    assert same_device_index(without_gpus, None) == 0


def test_a_result_for_another_volume_is_not_kept_as_the_output_of_the_next_one():
    """The last result stays selected as the output; once the input volume changes, a result made
    for another volume would only be skipped with a warning on every run."""
    from slicer_support import add_scalar_volume, distinct_voxel_values, new_scene, oblique_grid

    from MaskSAMSegmentLib.segmentations import made_for_another_volume

    scene = new_scene()
    first = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid(), "CT 1")
    second = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid(), "CT 1")   # same name
    result = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT 1 MaskSAM")
    result.SetReferenceImageGeometryParameterFromVolumeNode(first)
    drawn = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    assert made_for_another_volume(result, second) and not made_for_another_volume(result, first)
    assert not made_for_another_volume(drawn, second) and not made_for_another_volume(None, second)


def test_an_empty_parameter_never_overwrites_path_text_ctk_does_not_accept():
    from MaskSAMSegmentLib.path_fields import field_takes_parameter

    assert not field_takes_parameter("/x/sam.", valid=False, parameter="")      # being typed: "no path"
    assert field_takes_parameter("/x/sam.", valid=False, parameter="/y/sam.pth")  # a scene or script chose one
    assert field_takes_parameter("/x/sam.pth", valid=True, parameter="")         # cleared by a script
    assert not field_takes_parameter("/x/sam.pth", valid=True, parameter="/x/sam.pth")


def test_reload_forgets_the_modules_packages_and_asks_before_stopping_work():
    from MaskSAMSegmentLib.reloading import modules_to_forget, reload_question

    loaded = ["MaskSAMSegment", "MaskSAMSegmentLib", "MaskSAMSegmentLib.devices", "MaskSAMSegmentGui.segment_tab",
              "MaskSAMCore.errors", "MaskSAMCoreX", "numpy", "slicer.util"]
    assert modules_to_forget(loaded) == ["MaskSAMCore.errors", "MaskSAMSegmentGui.segment_tab", "MaskSAMSegmentLib",
                                         "MaskSAMSegmentLib.devices"]
    assert reload_question(Activity()) is None
    assert "stops a training" in reload_question(Activity(training=True))
    assert "a segmentation" in reload_question(Activity(segmenting=True, downloading=True))
