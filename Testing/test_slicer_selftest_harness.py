"""The module file under stand-ins of Slicer's application: the self-test as Slicer's ctest
harness runs it, and what the widget does when a job cannot start.

`slicer_add_python_unittest(SCRIPT MaskSAMSegment.py)` (the module's CMakeLists.txt) runs
``slicer.testing.runUnitTest([...], 'MaskSAMSegment')``, which is
``unittest.TestLoader().loadTestsFromName('MaskSAMSegment')``: the loader picks every ``test*``
method of every TestCase of the module file and never calls `runTest` (Slicer's GUI "Reload and
Test" calls `runTest`). So a check made only in `runTest` is skipped by ctest.

Slicer's application modules (qt, ctk, slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper)
cannot be installed here: this test gives the module file the widget tests' stand-ins for them
(`widget_harness.slicer_stubs`), with the real MRML scene and `slicer.util` of the slicer-core
package, in a separate process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from slicer_support import REPO
from widget_harness import slicer_stubs

SELF_TEST = textwrap.dedent("""
    import MaskSAMSegment
    from MaskSAMSegmentLib.requirements_check import REQUIREMENTS

    MaskSAMSegment.requirements_check.missing_requirements = lambda: [REQUIREMENTS[0]]

    def no_jobs(*args, **kwargs):
        raise AssertionError("a job was started although the requirements are missing")

    MaskSAMSegment.JobRunner = no_jobs
    suite = unittest.TestLoader().loadTestsFromName("MaskSAMSegment")   # as slicer.testing.runUnitTest
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    print("RAN", result.testsRun, "OK", result.wasSuccessful())
""")


def test_ctest_harness_skips_the_self_test_when_packages_are_missing():
    """On a machine without torch (the extension factory's), ctest must not fail the module:
    the self-test says it skips, as "Reload and Test" does."""
    code = slicer_stubs() + SELF_TEST
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "test_phantom_segmentation" in output, output[-3000:]   # the loader did pick it
    assert "RAN 2 OK True" in output, output[-3000:]
    assert "skipping the self-test" in output and "PyTorch" in output


def test_a_job_that_cannot_start_leaves_the_widget_idle():
    """`_startJob` returns None when the job's start raises (after Slicer's error dialog, which
    `slicer.util.tryWithErrorDisplay` shows and then re-raises): the click handler goes on to
    update the buttons instead of ending in a traceback, and no timer starts."""
    code = slicer_stubs() + textwrap.dedent("""
        import MaskSAMSegment
        from MaskSAMCore.errors import InputError

        class Job:
            def start(self):
                raise InputError("'/data/out' is not empty: choose a new folder for the model.")

        class Timer:
            started = False
            def start(self):
                self.started = True

        widget = object.__new__(MaskSAMSegment.MaskSAMSegmentWidget)
        widget._timer, logged = Timer(), []
        widget._log = logged.append
        print("RESULT", widget._startJob(Job(), "training", "Training..."), widget._timer.started, logged)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "RESULT None False []" in result.stdout
