"""The module's self-test as Slicer's ctest harness runs it.

`slicer_add_python_unittest(SCRIPT MaskSAMSegment.py)` (the module's CMakeLists.txt) runs
``slicer.testing.runUnitTest([...], 'MaskSAMSegment')``, which is
``unittest.TestLoader().loadTestsFromName('MaskSAMSegment')``: the loader picks every ``test*``
method of every TestCase of the module file and never calls `runTest` (Slicer's GUI "Reload and
Test" calls `runTest`). So a check made only in `runTest` is skipped by ctest.

Slicer's application modules (qt, ctk, slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper)
cannot be installed here: this test gives the module file stand-ins for them, with the real MRML
scene and `slicer.util` of the slicer-core package, in a separate process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from slicer_support import MODULE_DIR, REPO

HARNESS = textwrap.dedent("""
    import sys, types, unittest
    sys.path[:0] = [{module!r}, {repo!r}]
    import slicer

    def stub(name, **members):
        module = types.ModuleType(name)
        module.__dict__.update(members)
        sys.modules[name] = module
        return module

    stub("qt"), stub("ctk")

    class ScriptedLoadableModuleTest(unittest.TestCase):   # Slicer's base: a TestCase with runTest
        def delayDisplay(self, message, msec=None):
            print("delayDisplay:", message)

        def runTest(self):
            pass

    stub("slicer.ScriptedLoadableModule", ScriptedLoadableModule=type("ScriptedLoadableModule", (), {{}}),
         ScriptedLoadableModuleLogic=type("ScriptedLoadableModuleLogic", (), {{}}),
         ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (), {{}}),
         ScriptedLoadableModuleTest=ScriptedLoadableModuleTest)
    stub("slicer.parameterNodeWrapper", Choice=lambda *a: None, WithinRange=lambda *a: None,
         parameterNodeWrapper=lambda cls: cls)
    slicer.mrmlScene = slicer.vtkMRMLScene()

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
    code = HARNESS.format(module=str(MODULE_DIR), repo=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "test_phantom_segmentation" in output, output[-3000:]   # the loader did pick it
    assert "RAN 2 OK True" in output, output[-3000:]
    assert "skipping the self-test" in output and "PyTorch" in output
