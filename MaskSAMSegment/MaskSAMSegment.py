"""MaskSAM Segment: fully automatic CT/MRI segmentation and model training in 3D Slicer.

Module, widget, logic and self-test. Everything the buttons do is in MaskSAMSegmentLib (no Qt
there, tested outside Slicer); the widget turns clicks into requests, drives the background jobs
from a QTimer and shows their progress. The handlers of its two tabs and of the first-use
requirements banner are in MaskSAMSegmentGui (mixins); this file keeps the set-up, the parameter
node and what the tabs share. Long work never
runs in Slicer's process: it runs as ``PythonSlicer -m MaskSAMCore ...`` in the background, and
Cancel/Stop ends its process tree.
"""

import os
import sys
from typing import Annotated, List, Optional

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _make_core_importable() -> None:
    """MaskSAMCore sits beside this file (installed extension) or one folder up (source tree)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, "MaskSAMCore", "__init__.py")):
            if folder not in sys.path:
                sys.path.append(folder)
            return


_make_core_importable()

from MaskSAMCore.errors import ModelAlreadyInstalled  # noqa: E402
from MaskSAMSegmentGui.requirements_banner import RequirementsBannerMixin  # noqa: E402
from MaskSAMSegmentGui.segment_tab import SegmentTabMixin  # noqa: E402
from MaskSAMSegmentGui.training_tab import TrainingTabMixin  # noqa: E402
from MaskSAMSegmentLib import commands, devices, requirements_check  # noqa: E402
from MaskSAMSegmentLib.action_states import Activity, action_states  # noqa: E402
from MaskSAMSegmentLib.dataset_builder import CasePair, dataset_summary  # noqa: E402
from MaskSAMSegmentLib.job_runner import JobRunner, JobState, stop_jobs, wait_for  # noqa: E402
from MaskSAMSegmentLib.models import install_model_folder, read_model_info  # noqa: E402
from MaskSAMSegmentLib.path_fields import field_takes_parameter  # noqa: E402
from MaskSAMSegmentLib.reloading import modules_to_forget, reload_question  # noqa: E402
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest  # noqa: E402
from MaskSAMSegmentLib.segmentations import show_in_3d  # noqa: E402
from MaskSAMSegmentLib.volume_nodes import first_scalar_volume  # noqa: E402

PRESETS = ["vit_b", "vit_l", "vit_h", "tiny"]
POLL_INTERVAL_MS = 200


class MaskSAMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MaskSAM Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MaskSAM for 3D Slicer contributors"]
        self.parent.helpText = (
            "Fully automatic segmentation of CT and MRI volumes with MaskSAM (Segment Anything adapted to 3D, "
            "prompting itself and naming every structure). <b>Segment</b>: pick a volume and a model, click Segment. "
            "<b>Training</b>: fine-tune a model on labelled cases (a dataset folder, or volume + segmentation pairs "
            "of the scene). Long work runs in the background and can be cancelled.")
        self.parent.acknowledgementText = (
            "MaskSAM: Xie et al., 'MaskSAM: Towards Auto-prompt SAM with Mask Classification for Volumetric Medical "
            "Image Segmentation'. Segment Anything: Kirillov et al., Meta AI. Dataset layout: nnU-Net v2.")


@parameterNodeWrapper
class MaskSAMSegmentParameterNode:
    """Settings saved with the scene. Paths are strings ("" = not chosen)."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelFolder: str = ""
    quality: Annotated[str, Choice(list(commands.QUALITIES))] = commands.QUALITY_FULL
    datasetFolder: str = ""
    newDatasetFolder: str = ""
    channelName: str = "CT"
    drawnSlicesOnly: bool = False
    preset: Annotated[str, Choice(PRESETS)] = "vit_b"
    samCheckpoint: str = ""
    randomInit: bool = False
    epochs: Annotated[int, WithinRange(1, 10000)] = 100
    batchSize: Annotated[int, WithinRange(1, 64)] = 2
    trainOutputFolder: str = ""
    resume: bool = False


class MaskSAMSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, RequirementsBannerMixin, SegmentTabMixin,
                           TrainingTabMixin):
    """Set-up, the parameter node, and what both tabs share: one timer that polls every background
    job, progress display, button states and the log pane."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = []
        self._deviceChoices = devices.unprobed_choices()
        self._extraChannelSelectors = []
        self._outputInputVolume = None
        self._invalidPaths = set()   # names of the path fields whose text CTK does not accept
        self._pairs: List[CasePair] = []
        self._segmentJob = self._trainingJob = self._downloadRunner = self._probeRunner = None
        self._retiredProbes: List[JobRunner] = []   # cancelled device probes, polled until they end
        self._datasetBuilder = None
        self._plot = None
        self._timer = None

    # -- set-up --------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MaskSAMSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MaskSAMSegmentLogic()

        for lineEdit in (self.ui.datasetPathLineEdit, self.ui.newDatasetPathLineEdit, self.ui.outputModelPathLineEdit):
            lineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.samCheckpointPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.samCheckpointPathLineEdit.nameFilters = ["Segment Anything checkpoint (*.pth *.pt)"]
        # Path widgets <-> string parameters (the wrapper's pathlib type would show "." when empty).
        self._pathWidgets = {"datasetFolder": self.ui.datasetPathLineEdit, "newDatasetFolder": self.ui.newDatasetPathLineEdit,
                             "samCheckpoint": self.ui.samCheckpointPathLineEdit, "trainOutputFolder": self.ui.outputModelPathLineEdit}
        self._connectPathWidgets()
        self.ui.fastQualityRadioButton.connect("toggled(bool)", lambda fast: self._setParameter(
            "quality", commands.QUALITY_FAST if fast else commands.QUALITY_FULL))
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.refreshModelsButton.connect("clicked(bool)", lambda _: self.refreshModels())
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelSegmentButton.connect("clicked(bool)", self.onCancelSegment)
        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePair)
        self.ui.buildDatasetButton.connect("clicked(bool)", self.onBuildDataset)
        self.ui.downloadSamButton.connect("clicked(bool)", self.onDownloadSam)
        self.ui.startTrainingButton.connect("clicked(bool)", self.onStartTraining)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)
        self.ui.installRequirementsButton.connect("clicked(bool)", self.onInstallRequirements)
        for combo in (self.ui.deviceComboBox, self.ui.trainDeviceComboBox):
            combo.connect("currentIndexChanged(int)", lambda _: self.updateButtons())

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self._checkRequirements()
        self.refreshModels()
        self._fillDeviceCombos(self._deviceChoices)
        self._startDeviceProbe()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        if self._datasetBuilder is not None:
            self._datasetBuilder.abort()
        # Never leave a background job running after Slicer closes, nor its temporary files.
        stop_jobs([self._segmentJob, self._trainingJob, self._downloadRunner, self._probeRunner, *self._retiredProbes])

    def onReload(self) -> None:
        """Slicer's Reload re-executes this file only: forget the packages it imports, so their
        edits take effect too, after asking when it would stop a job (cleanup() stops them all)."""
        question = reload_question(self._activity())
        if question and not slicer.util.confirmOkCancelDisplay(question, "Reload MaskSAM Segment"):
            return
        for name in modules_to_forget(list(sys.modules)):
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        if self._segmentJob is not None:
            self._segmentJob.cancel()   # its input and output belong to the scene being closed
        self._abandonPairs()            # so do the pairs' nodes

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = first_scalar_volume(slicer.mrmlScene)

    def setParameterNode(self, parameterNode: Optional[MaskSAMSegmentParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _parameters(self) -> MaskSAMSegmentParameterNode:
        """The parameter node, also while the module is not shown (jobs finish in the background)."""
        return self._parameterNode or self.logic.getParameterNode()

    def _setParameter(self, name: str, value) -> None:
        if self._parameterNode is not None and getattr(self._parameterNode, name) != value:
            setattr(self._parameterNode, name, value)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if self._forgetOutputOfOtherVolume(node):
            return   # the change updated the widget already
        for name, lineEdit in self._pathWidgets.items():
            if field_takes_parameter(lineEdit.currentPath, name not in self._invalidPaths, getattr(node, name)):
                lineEdit.currentPath = getattr(node, name)
        self.ui.fastQualityRadioButton.checked = node.quality == commands.QUALITY_FAST
        self.ui.fullQualityRadioButton.checked = node.quality != commands.QUALITY_FAST
        self.ui.datasetInfoLabel.text = dataset_summary(node.datasetFolder)
        self._selectModelOfParameters(node.modelFolder)
        self.updateButtons()

    # -- Segment tab: import a model folder (a file dialog, so here: only this file imports qt) ---
    def onImportModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Select a MaskSAM model folder")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Could not import the model folder.", waitCursor=True):
            try:
                model = install_model_folder(folder)
            except ModelAlreadyInstalled as error:
                if not slicer.util.confirmYesNoDisplay(f"{error}. Replace it?"):
                    raise
                model = install_model_folder(folder, replace=True)
            self._log(f"Installed model '{model.display_name}' in {model.folder}")
            self.refreshModels(select=str(model.folder))

    # -- path fields ---------------------------------------------------------------------------
    def _connectPathWidgets(self) -> None:
        """CTK reports a path only while it is acceptable (see MaskSAMSegmentLib.path_fields): a
        field turning unacceptable sets its parameter to "", else erasing it would keep the old path."""
        for name, lineEdit in self._pathWidgets.items():
            lineEdit.connect("currentPathChanged(QString)", lambda text, name=name: self._setParameter(name, text))
            lineEdit.connect("validInputChanged(bool)", lambda valid, name=name: self._onPathValidity(name, valid))

    def _onPathValidity(self, name: str, valid: bool) -> None:
        if valid:
            self._invalidPaths.discard(name)
        else:
            self._invalidPaths.add(name)
            self._setParameter(name, "")

    # -- shared ----------------------------------------------------------------------------------
    def _startJob(self, job, what: str, message: str):
        """Start a background job; returns it, or None when it could not start (the error is shown)."""
        try:
            with slicer.util.tryWithErrorDisplay(f"Could not start the {what}.", waitCursor=True):
                job.start()
        except Exception:  # noqa: BLE001 - shown by tryWithErrorDisplay, which then re-raises it
            return None
        self._log(message)
        self._timer.start()
        return job

    def _poll(self) -> None:
        self._pollDeviceProbes()
        if self._segmentJob is not None:
            self._pollSegment()
        if self._trainingJob is not None:
            self._pollTraining()
        if self._downloadRunner is not None:
            self._pollDownload()
        if self._datasetBuilder is not None:
            self._stepDatasetBuilder()
        if not any((self._probeRunner, self._retiredProbes, self._segmentJob, self._trainingJob, self._downloadRunner,
                    self._datasetBuilder)):
            self._timer.stop()

    def _showProgress(self, bar, label, runner) -> None:
        fraction = runner.progress_fraction() if runner is not None else None
        if fraction is None:
            bar.setRange(0, 0)   # busy
        else:
            bar.setRange(0, 1000)
            bar.value = int(1000 * fraction)
        label.text = runner.status_text() if runner is not None else ""

    def _reportEnd(self, state, job, label, what: str, cancelledNote: str) -> None:
        for bar in (self.ui.segmentProgressBar, self.ui.trainingProgressBar):
            bar.setRange(0, 1000)
        if state is JobState.CANCELLED:
            label.text = f"{what} cancelled; {cancelledNote}."
            return
        message = job.error_message or "see the log for details"
        label.text = f"{what} failed: {message}"
        slicer.util.errorDisplay(f"{what} failed: {message}", detailedText=job.log_text)

    def updateButtons(self) -> None:
        if self._parameterNode is None:
            return
        states = action_states(self._checkRequirements(), self._segmentRequest(), self._trainRequest(), self._pairs,
                               self._parameterNode.newDatasetFolder, self._activity())
        for name, state in states.items():
            button = getattr(self.ui, name)
            button.enabled, button.toolTip = state.enabled, state.tooltip

    def _activity(self) -> Activity:
        return Activity(self._segmentJob is not None, self._trainingJob is not None,
                        self._downloadRunner is not None, self._datasetBuilder is not None)

    def _log(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)


class MaskSAMSegmentLogic(ScriptedLoadableModuleLogic):
    """Scriptable entry points; the real work is in MaskSAMSegmentLib."""

    def getParameterNode(self):
        return MaskSAMSegmentParameterNode(super().getParameterNode())

    def segmentVolume(self, volumeNode, modelFolder: str, quality: str = commands.QUALITY_FULL,
                      device: str = "auto", outputSegmentation=None, timeoutSeconds: Optional[float] = None):
        """Segment `volumeNode` with the model in `modelFolder`, waiting while Slicer stays responsive.
        Returns the segmentation node; RuntimeError with the core's one-line message otherwise."""
        request = SegmentRequest([volumeNode], read_model_info(modelFolder), devices.DeviceChoice(device, device, None),
                                 quality, outputSegmentation)
        job = SegmentJob(slicer.mrmlScene, request, base_env=commands.slicer_startup_environment(),
                         work_dir=slicer.app.temporaryPath)
        job.start()
        if wait_for(job, slicer.app.processEvents, timeoutSeconds, cancel_on_timeout=True) is not JobState.SUCCEEDED:
            raise RuntimeError(f"segmentation {job.state.value}: {job.error_message}")
        show_in_3d(job.result_node)
        return job.result_node


class MaskSAMSegmentTest(ScriptedLoadableModuleTest):
    """Trains a tiny model on synthetic phantoms, then segments one in the scene (minutes on a CPU)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_segmentation()

    def _requirementsMissing(self) -> bool:
        # Checked in the test method itself: Slicer's ctest harness (slicer.testing.runUnitTest)
        # runs test_* methods through unittest's loader and never calls runTest.
        missing = [requirement.name for requirement in requirements_check.missing_requirements()]
        if missing:
            self.delayDisplay(f"Python packages not installed ({', '.join(missing)}): skipping the self-test")
        return bool(missing)

    def _run(self, arguments):
        runner = JobRunner(commands.masksam_command(arguments),
                           env=commands.job_environment(commands.slicer_startup_environment()))
        runner.start()
        self.assertEqual(wait_for(runner, slicer.app.processEvents), JobState.SUCCEEDED, runner.error_message)

    def test_phantom_segmentation(self):
        import tempfile
        from MaskSAMSegmentLib.segmentations import export_label_values_on_volume

        if self._requirementsMissing():
            return
        folder = tempfile.mkdtemp(prefix="MaskSAMSegmentTest-", dir=slicer.app.temporaryPath)
        dataset, model = os.path.join(folder, "phantoms"), os.path.join(folder, "model")
        self.delayDisplay("Making phantoms and training a tiny model")
        self._run(["make-phantoms", dataset, "--cases", "3", "--size", "40", "40", "16"])
        self._run(commands.train_arguments(dataset, model, preset="tiny", random_init=True, epochs=1, iters_per_epoch=2,
                                           device="cpu", fold="all", batch_size=1, val_cases_per_epoch=1))
        image = sorted(os.listdir(os.path.join(dataset, "imagesTr")))[0]
        volume = slicer.util.loadVolume(os.path.join(dataset, "imagesTr", image))
        self.delayDisplay("Segmenting a phantom")
        node = MaskSAMSegmentLogic().segmentVolume(volume, model, quality=commands.QUALITY_FAST, device="cpu")
        info = read_model_info(model)
        self.assertEqual(node.GetSegmentation().GetNumberOfSegments(), len(info.structures))
        self.assertEqual(node.GetAttribute("MaskSAM.ModelName"), info.name)
        labels = export_label_values_on_volume(node, volume)
        self.assertEqual(labels.shape, slicer.util.arrayFromVolume(volume).shape)
        self.delayDisplay("Test passed")
