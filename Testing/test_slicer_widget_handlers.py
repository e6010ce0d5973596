"""Click handlers and job endings of the widget, run outside Slicer with `widget_harness`'s
stand-ins: what the user sees when a job cannot start, ends, or is interrupted."""

from __future__ import annotations

from widget_harness import run_widget_code


def test_a_sam_download_that_cannot_start_leaves_the_training_tab_idle():
    """Download goes through `_startJob` like every other job: a start failure shows Slicer's
    error dialog and leaves nothing running, instead of ending in a traceback."""
    output = run_widget_code("""
        import MaskSAMSegmentGui.training_tab as training_tab

        class Runner:
            def __init__(self, *args, **kwargs):
                pass
            def start(self):
                raise OSError("PythonSlicer not found")

        training_tab.JobRunner = Runner
        widget = make_widget()
        widget.onDownloadSam()
        print("RESULT", widget._downloadRunner, widget._timer.started)
    """)
    assert "RESULT None False" in output
