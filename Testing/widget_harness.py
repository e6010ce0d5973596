"""Run the module's widget code outside Slicer, in a subprocess, with small stand-ins for the
parts of Slicer's application that cannot be installed here (qt, ctk, ScriptedLoadableModule,
the parameter node wrapper) and the real MRML scene and `slicer.util` of slicer-core.

Not a test file: `test_slicer_widget_*.py` call `run_widget_code(snippet)`. The snippet runs
after `PRELUDE`, which gives it `MaskSAMSegment`, `make_widget()` (a widget whose `ui` members
are plain attribute holders, created on first use) and `params` (the widget's parameters as a
plain object with the fields' defaults). Whatever the snippet prints comes back. The stand-ins
alone (`slicer_stubs()`: `stub()`, `slicer.app`, the module bases, a unittest TestCase as the
self-test's) also serve `test_slicer_selftest_harness.py`, which runs the module file's self-test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from slicer_support import MODULE_DIR, REPO

SLICER_STUBS = textwrap.dedent("""
    import sys, types, unittest
    sys.path[:0] = [{module!r}, {repo!r}]
    import slicer

    def stub(name, **members):
        module = types.ModuleType(name)
        module.__dict__.update(members)
        sys.modules[name] = module
        return module

    class ScriptedLoadableModuleWidget:
        reloaded = 0
        def __init__(self, parent=None):
            self.parent = parent
        def onReload(self):
            ScriptedLoadableModuleWidget.reloaded += 1

    class ScriptedLoadableModuleTest(unittest.TestCase):   # Slicer's base: a TestCase with runTest
        def delayDisplay(self, message, msec=None):
            print("delayDisplay:", message)

        def runTest(self):
            pass

    def parameterNodeWrapper(cls):
        defaults = {{name: getattr(cls, name, None) for name in cls.__annotations__}}
        cls.__init__ = lambda self, node=None: self.__dict__.update(defaults)
        return cls

    stub("ctk")
    stub("qt", Qt=types.SimpleNamespace(WaitCursor=3))
    stub("slicer.ScriptedLoadableModule", ScriptedLoadableModule=type("ScriptedLoadableModule", (), {{}}),
         ScriptedLoadableModuleLogic=type("ScriptedLoadableModuleLogic", (), {{}}),
         ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
         ScriptedLoadableModuleTest=ScriptedLoadableModuleTest)
    stub("slicer.parameterNodeWrapper", Choice=lambda *a: None, WithinRange=lambda *a: None,
         parameterNodeWrapper=parameterNodeWrapper)
    slicer.mrmlScene = slicer.vtkMRMLScene()
    slicer.app = types.SimpleNamespace(testingEnabled=lambda: True, setOverrideCursor=lambda cursor: None,
                                       restoreOverrideCursor=lambda: None, temporaryPath="/tmp")
    slicer.util.errorDisplay = lambda text, **kwargs: print("errorDisplay:", text)
""")

PRELUDE = SLICER_STUBS + textwrap.dedent("""
    import MaskSAMSegment

    class Holder(types.SimpleNamespace):
        \"\"\"A widget stand-in: any attribute read before it is set is another Holder.\"\"\"
        def __getattr__(self, name):
            value = Holder()
            setattr(self, name, value)
            return value
        def __call__(self, *args, **kwargs):
            return None

    class Timer:
        started = False
        def start(self):
            self.started = True
        def stop(self):
            self.started = False

    class Combo:
        \"\"\"QComboBox's items and current index; `changed(index)` as its currentIndexChanged(int).\"\"\"
        def __init__(self, changed=None):
            self.items, self._index, self.changed, self.blocked = [], -1, changed, False
        def blockSignals(self, block):
            was, self.blocked = self.blocked, block
            return was
        def clear(self):
            self.items = []
            self.currentIndex = -1
        def addItem(self, text):
            self.items.append(text)
            if self._index < 0:
                self.currentIndex = 0
        @property
        def currentIndex(self):
            return self._index
        @currentIndex.setter
        def currentIndex(self, index):
            if index != self._index:
                self._index = index
                if self.changed is not None and not self.blocked:
                    self.changed(index)
        @property
        def currentText(self):
            return self.items[self._index] if 0 <= self._index < len(self.items) else ""

    params = MaskSAMSegment.MaskSAMSegmentParameterNode()
    logged = []

    def make_widget():
        widget = MaskSAMSegment.MaskSAMSegmentWidget()
        widget.ui, widget._timer = Holder(), Timer()
        widget.logic = types.SimpleNamespace(getParameterNode=lambda: params)
        widget._log = logged.append
        return widget
""")


def slicer_stubs() -> str:
    """The code that puts the stand-ins of Slicer's application in place (the start of a script)."""
    return SLICER_STUBS.format(module=str(MODULE_DIR), repo=str(REPO))


def run_widget_code(snippet: str) -> str:
    """stdout of PRELUDE + `snippet` in a fresh interpreter; fails the test on an error exit."""
    code = PRELUDE.format(module=str(MODULE_DIR), repo=str(REPO)) + textwrap.dedent(snippet)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout
