"""Click handlers and job endings of the widget, run outside Slicer with `widget_harness`'s
stand-ins: what the user sees when a job cannot start, ends, or is interrupted."""

from __future__ import annotations

import json
from pathlib import Path

from slicer_support import model_json_meta
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


def test_a_model_trained_while_the_module_is_hidden_stays_selected_when_the_user_comes_back():
    """While the module is hidden the widget holds no parameter node; the model installed at the
    end of a training must still reach the parameters, or entering the module again would switch
    the list back to the old model while the status says the new one is ready."""
    output = run_widget_code("""
        import MaskSAMSegmentGui.segment_tab as segment_tab

        def model(name):
            return types.SimpleNamespace(display_name=name, folder="/models/" + name, channel_names={"0": "CT"},
                                         summary=lambda: name)

        installed = [model("old")]
        segment_tab.find_models = lambda: (list(installed), [])
        widget = make_widget()
        widget.ui.modelComboBox = Combo(changed=widget.onModelSelected)
        widget.ui.extraChannelsFormLayout = types.SimpleNamespace(rowCount=lambda: 0)
        widget.updateButtons = lambda: None
        widget._parameterNode = params          # the module is shown
        widget.refreshModels()
        widget._parameterNode = None            # exit(): hidden while training runs
        installed.append(model("new"))
        widget.refreshModels(select="/models/new")
        widget._parameterNode = params          # enter()
        widget._selectModelOfParameters(params.modelFolder)
        print("RESULT", params.modelFolder, widget.currentModel().display_name)
    """)
    assert "RESULT /models/new new" in output


def test_stop_cancels_a_running_sam_download():
    output = run_widget_code("""
        class Runner:
            cancelled = False
            def cancel(self):
                self.cancelled = True

        widget = make_widget()
        widget._downloadRunner = runner = Runner()
        widget.onStopTraining()
        print("RESULT", runner.cancelled)
    """)
    assert "RESULT True" in output


def test_closing_the_scene_during_a_dataset_build_says_the_build_was_stopped():
    """The pairs' nodes go with the scene, so the build is discarded; the status must not keep
    showing 'Writing case i/n...' as if it went on."""
    output = run_widget_code("""
        class Builder:
            aborted = False
            def abort(self):
                self.aborted = True

        widget = make_widget()
        widget.ui.trainingStatusLabel.text = "Writing case 2/5..."
        widget._datasetBuilder = builder = Builder()
        widget._abandonPairs()
        print("RESULT", builder.aborted, widget._datasetBuilder, "|", widget.ui.trainingStatusLabel.text)
    """)
    assert "RESULT True None |" in output
    status = output.split("|", 1)[1]
    assert "Writing case" not in status and "scene was closed" in status


def test_a_bug_while_building_a_dataset_is_shown_in_one_line_and_logged_with_its_traceback():
    """The dialog says what failed; a programming error also leaves its traceback in Slicer's log,
    while a problem the user can fix (the core's errors) is only shown."""
    output = run_widget_code("""
        import logging
        from MaskSAMCore.errors import DatasetError
        logging.basicConfig(stream=sys.stdout, format="LOG %(message)s")

        class Builder:
            finished_writing = False
            def __init__(self, error):
                self.error = error
            def step(self):
                raise self.error
            def abort(self):
                print("aborted")

        widget = make_widget()
        widget.updateButtons = lambda: None
        for error in (KeyError("segment_id"), DatasetError("case_001 has no segments")):
            widget._datasetBuilder = Builder(error)
            widget._stepDatasetBuilder()
            print("RESULT", widget._datasetBuilder)
    """)
    assert output.count("aborted\n") == 2 and output.count("RESULT None") == 2
    assert "errorDisplay: Could not build the dataset: 'segment_id'" in output
    assert "errorDisplay: Could not build the dataset: case_001 has no segments" in output
    assert output.count("Traceback") == 1 and "in step" in output


def test_a_new_device_probe_ends_the_running_one_and_keeps_the_chosen_device():
    """Installing the packages probes again: the probe still running is cancelled and polled until
    its process ends (not forgotten), and "CPU" chosen before the answer stays chosen although
    its label becomes "CPU (slow)"."""
    output = run_widget_code("""
        import MaskSAMSegmentGui.segment_tab as segment_tab
        from MaskSAMSegmentLib.job_runner import JobState

        class Probe:
            def __init__(self, *args, **kwargs):
                self.state, self.log_lines, self.polls = JobState.RUNNING, [], 0
            def start(self):
                pass
            def cancel(self):
                self.state = "cancelling"
            def poll(self):
                self.polls += 1
                if self.state == "cancelling":
                    self.state = JobState.CANCELLED
                return self.state

        segment_tab.JobRunner = Probe
        widget = make_widget()
        widget.updateButtons = lambda: None
        widget.ui.deviceComboBox, widget.ui.trainDeviceComboBox = Combo(), Combo()
        widget._fillDeviceCombos(widget._deviceChoices)
        widget.ui.deviceComboBox.currentIndex = 1          # "CPU", before the probe answers
        widget._startDeviceProbe()
        first = widget._probeRunner
        widget._startDeviceProbe()                          # Install required packages... probes again
        second = widget._probeRunner
        second.state = JobState.SUCCEEDED
        second.log_lines = ['@masksam-devices {"torch": "2.5.0", "cuda": [{"index": 0, "name": "H100", '
                            '"memory_gb": 79.6}], "error": null}']
        widget._poll()
        print("RESULT", first.state.value, first.polls > 0, widget._retiredProbes, widget._probeRunner,
              "|", widget.ui.deviceComboBox.currentText, "|", widget.ui.trainDeviceComboBox.currentText)
    """)
    assert "RESULT cancelled True [] None | CPU (slow) | Auto (GPU 0: H100)" in output


def test_choosing_another_input_volume_resets_the_output_to_a_new_segmentation():
    output = run_widget_code("""
        import vtk
        scene = slicer.mrmlScene
        first, second = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name) for name in ("CT 1", "CT 2"))
        image = vtk.vtkImageData()
        image.SetDimensions(4, 4, 4)
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        first.SetAndObserveImageData(image)
        result = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT 1 MaskSAM")
        result.SetReferenceImageGeometryParameterFromVolumeNode(first)
        widget = make_widget()
        params.inputVolume, params.outputSegmentation = first, result    # just segmented CT 1
        kept = widget._forgetOutputOfOtherVolume(params), params.outputSegmentation is result
        params.inputVolume = second                                       # the next patient
        reset = widget._forgetOutputOfOtherVolume(params), params.outputSegmentation
        print("RESULT", kept, reset)
    """)
    assert "RESULT (False, True) (True, None)" in output


def test_an_erased_sam_checkpoint_field_does_not_come_back_with_the_old_path():
    """The stand-in emits what CTK's ctkPathLineEdit::updateHasValidInput emits for the name
    filter "*.pth *.pt" (validator regexp (.*\\\\.pth?$|.*\\\\.pt?$)): currentPathChanged only for
    acceptable text, validInputChanged only when acceptability flips. Erasing the path key by key
    passes "/x/sam." (not acceptable) before "" (neither), so no signal reports the empty field."""
    output = run_widget_code(r'''
        import re

        class PathEdit:
            pattern = re.compile(r"(.*\.pth?$|.*\.pt?$)")
            def __init__(self):
                self._text, self.valid, self.slots = "", False, {}
            def connect(self, signal, slot):
                self.slots[signal] = slot
            @property
            def currentPath(self):
                return self._text
            @currentPath.setter
            def currentPath(self, text):
                self._text, was = text, self.valid
                self.valid = bool(self.pattern.fullmatch(text))
                if self.valid:
                    self.slots["currentPathChanged(QString)"](text)
                if self.valid != was:
                    self.slots["validInputChanged(bool)"](self.valid)

        widget = make_widget()
        widget.updateButtons = lambda: None
        widget._pathWidgets, widget.ui.modelComboBox = {"samCheckpoint": PathEdit()}, Combo()
        widget._parameterNode = params
        widget._connectPathWidgets()
        edit = widget._pathWidgets["samCheckpoint"]
        edit.currentPath = "/x/sam.pth"
        chosen = params.samCheckpoint
        for end in range(len("/x/sam.pth") - 1, -1, -1):        # backspace, key by key
            edit.currentPath = "/x/sam.pth"[:end]
            if edit.currentPath == "/x/sam":
                widget._onParameterNodeModified()                # an unrelated change meanwhile
                typing = edit.currentPath
        widget._onParameterNodeModified()                        # the next unrelated change
        print("RESULT", chosen, typing, repr(params.samCheckpoint), repr(edit.currentPath))
    ''')
    assert "RESULT /x/sam.pth /x/sam '' ''" in output


def test_reload_asks_before_stopping_a_training_and_then_reimports_the_modules_packages():
    """Slicer's reloadScriptedModule re-executes MaskSAMSegment.py only; the packages it imports
    must leave sys.modules first, or their edits would not take effect."""
    output = run_widget_code("""
        answers = []
        slicer.util.confirmOkCancelDisplay = lambda text, title=None, **kwargs: answers.pop(0)
        base = MaskSAMSegment.ScriptedLoadableModuleWidget
        widget = make_widget()
        widget._trainingJob = object()
        answers.append(False)
        widget.onReload()
        kept = base.reloaded, "MaskSAMSegmentLib.devices" in sys.modules, "MaskSAMCore.errors" in sys.modules
        answers.append(True)
        widget.onReload()
        packages = ("MaskSAMSegmentLib", "MaskSAMSegmentGui", "MaskSAMCore")
        after = base.reloaded, [name for name in sys.modules if name.startswith(packages)]
        print("RESULT", kept, after)
    """)
    assert "RESULT (0, True, True) (1, [])" in output


def test_the_status_says_3d_surfaces_are_built_before_that_work_starts_and_names_what_was_not_found():
    output = run_widget_code("""
        import MaskSAMSegmentGui.segment_tab as segment_tab
        from MaskSAMSegmentLib.job_runner import JobState

        widget = make_widget()
        widget.updateButtons = lambda: None
        widget._parameterNode = params
        seen = []
        segment_tab.show_in_3d = lambda node: seen.append(widget.ui.segmentStatusLabel.text)
        result = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT MaskSAM")
        runner = types.SimpleNamespace(elapsed_s=3.0, progress_fraction=lambda: 1.0, status_text=lambda: "Done")
        widget._segmentJob = types.SimpleNamespace(poll=lambda: JobState.SUCCEEDED, runner=runner, result_node=result,
                                                   warnings=[], unlogged_warnings=[], not_found=[])
        widget._pollSegment()
        print("RESULT", seen, "|", widget.ui.segmentStatusLabel.text)
        widget._segmentJob = types.SimpleNamespace(poll=lambda: JobState.SUCCEEDED, runner=runner, result_node=result,
                                                   warnings=[], unlogged_warnings=[],
                                                   not_found=["Left kidney", "Spleen", "Liver", "Aorta"])
        widget._pollSegment()
        print("NOT FOUND", widget.ui.segmentStatusLabel.text)
    """)
    assert "RESULT ['Building 3D surfaces...'] | Done in 3 s: 'CT MaskSAM'." in output
    assert "NOT FOUND Done in 3 s: 'CT MaskSAM'. Not found (empty): Left kidney, Spleen, Liver, ..." in output


def test_import_asks_to_replace_only_a_model_that_is_already_installed(tmp_path):
    """The question "Replace it?" follows the kind of error, not its words: a folder whose path
    says "already installed" but that cannot be installed at all is refused without the question."""
    def model_folder(folder: Path, final: bool = True) -> str:
        folder.mkdir(parents=True)
        meta = {**model_json_meta({"background": 0, "liver": 1}, {"0": "CT"}), "name": "Liver"}
        (folder / "model.json").write_text(json.dumps(meta))
        if final:
            (folder / "checkpoint_final.pt").write_bytes(b"weights")
        return str(folder)

    chosen = [model_folder(tmp_path / "already installed" / "unfinished", final=False),
              model_folder(tmp_path / "trained again"), model_folder(tmp_path / "trained")]
    output = run_widget_code(f"""
        import os
        from pathlib import Path
        os.environ["MASKSAM_HOME"] = {str(tmp_path / "home")!r}
        chosen, asked = {chosen!r}, []
        stub("qt", Qt=types.SimpleNamespace(WaitCursor=3),
             QFileDialog=types.SimpleNamespace(getExistingDirectory=lambda *args: chosen.pop()))
        MaskSAMSegment.qt = sys.modules["qt"]
        slicer.util.mainWindow = lambda: None
        slicer.util.confirmYesNoDisplay = lambda text, **kwargs: asked.append(text) or True
        widget = make_widget()
        widget.refreshModels = lambda select=None: print("listed", Path(select).name)
        for _ in range(3):
            try:
                widget.onImportModel()
            except Exception as error:   # tryWithErrorDisplay re-raises what it showed
                print("refused:", error)
        print("ASKED", len(asked), asked[0])
    """)
    assert output.count("listed Liver-v1") == 2
    assert "ASKED 1 a model named 'Liver (v1)' is already installed" in output
    assert "unfinished has no checkpoint_final.pt" in output


def test_the_module_preselects_a_scalar_volume_not_the_labelmap_loaded_first():
    """The input selector shows plain scalar volumes only: preselecting a labelmap (a subclass)
    would leave a node selected that the selector cannot show."""
    output = run_widget_code("""
        slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
        slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        widget = make_widget()
        widget.setParameterNode = lambda node: setattr(widget, "_parameterNode", node)
        widget.initializeParameterNode()
        print("RESULT", params.inputVolume.GetName())
    """)
    assert "RESULT CT" in output
