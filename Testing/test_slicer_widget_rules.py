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
