"""MaskSAM Segment: fully automatic CT/MRI segmentation and model training in 3D Slicer.

Module, widget, logic and self-test. Everything the buttons do is in MaskSAMSegmentLib (no Qt
there, tested outside Slicer); this file turns clicks into requests, drives the background jobs
from a QTimer and shows their progress. Long work never runs in Slicer's process: it runs as
``PythonSlicer -m MaskSAMCore ...`` in the background, and Cancel/Stop ends its process tree.
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

from MaskSAMCore.errors import MaskSAMError  # noqa: E402
from MaskSAMSegmentLib import commands, devices, requirements_check  # noqa: E402
from MaskSAMSegmentLib.action_states import Activity, action_states  # noqa: E402
from MaskSAMSegmentLib.dataset_builder import CasePair, DatasetBuilder, dataset_summary  # noqa: E402
from MaskSAMSegmentLib.job_runner import JobRunner, JobState, wait_for  # noqa: E402
from MaskSAMSegmentLib.models import find_models, install_model_folder, read_model_info  # noqa: E402
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest  # noqa: E402
from MaskSAMSegmentLib.segmentations import show_in_3d  # noqa: E402
from MaskSAMSegmentLib.training_job import SAM_TYPES, TrainingJob, TrainRequest, downloaded_checkpoint  # noqa: E402
from MaskSAMSegmentLib.training_plot import TrainingPlot  # noqa: E402

PRESETS = ["vit_b", "vit_l", "vit_h", "tiny"]
POLL_INTERVAL_MS = 200


def slicerJobEnvironment():
    """Slicer's start-up environment for background jobs: PythonSlicer sets up the rest itself."""
    try:
        return slicer.util.startupEnvironment()
    except Exception:  # outside the Slicer application (PythonSlicer, tests)
        return None


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
    preset: Annotated[str, Choice(PRESETS)] = "vit_b"
    samCheckpoint: str = ""
    randomInit: bool = False
    epochs: Annotated[int, WithinRange(1, 10000)] = 100
    trainOutputFolder: str = ""
    resume: bool = False


class MaskSAMSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = []
        self._deviceChoices = devices.unprobed_choices()
        self._extraChannelSelectors = []
        self._pairs: List[CasePair] = []
        self._segmentJob = self._trainingJob = self._downloadRunner = self._probeRunner = None
        self._datasetBuilder = None
        self._plot = None

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
        for name, lineEdit in self._pathWidgets.items():
            lineEdit.connect("currentPathChanged(QString)", lambda text, name=name: self._setParameter(name, text))
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
        self._fillDeviceCombos()
        self._startDeviceProbe()

    def cleanup(self) -> None:
        self.removeObservers()
        for job in (self._segmentJob, self._trainingJob, self._downloadRunner, self._probeRunner):
            if job is not None:
                job.cancel()   # never leave a background job running after Slicer closes

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        if self._segmentJob is not None:
            self._segmentJob.cancel()   # its input and output belong to the scene being closed

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

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
        for name, lineEdit in self._pathWidgets.items():
            if lineEdit.currentPath != getattr(node, name):
                lineEdit.currentPath = getattr(node, name)
        self.ui.fastQualityRadioButton.checked = node.quality == commands.QUALITY_FAST
        self.ui.fullQualityRadioButton.checked = node.quality != commands.QUALITY_FAST
        self.ui.datasetInfoLabel.text = dataset_summary(node.datasetFolder)
        self.updateButtons()

    # -- models and devices --------------------------------------------------------------------
    def refreshModels(self, select: Optional[str] = None) -> None:
        self._models, problems = find_models()
        for problem in problems:
            self._log(f"Skipped a model folder: {problem}")
        wanted = select or (self._parameterNode.modelFolder if self._parameterNode else "")
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for model in self._models:
            combo.addItem(model.display_name)
        folders = [str(model.folder) for model in self._models]
        combo.currentIndex = folders.index(wanted) if wanted in folders else (0 if folders else -1)
        combo.blockSignals(wasBlocked)
        self.onModelSelected(combo.currentIndex)

    def currentModel(self):
        index = self.ui.modelComboBox.currentIndex
        return self._models[index] if 0 <= index < len(self._models) else None

    def onModelSelected(self, index: int) -> None:
        model = self.currentModel()
        if model is not None:
            self._setParameter("modelFolder", str(model.folder))
            self.ui.modelInfoLabel.text = model.summary()
        else:
            self.ui.modelInfoLabel.text = ("No model installed yet: import a model folder, or train one in the "
                                           "Training tab.")
        self._rebuildExtraChannelSelectors(model)
        self.updateButtons()

    def _rebuildExtraChannelSelectors(self, model) -> None:
        """One more volume selector per extra channel of a multi-channel model."""
        layout = self.ui.extraChannelsFormLayout
        while layout.rowCount() > 0:
            layout.removeRow(0)
        self._extraChannelSelectors = []
        channels = model.channel_names if model is not None else {"0": ""}
        for key in sorted(channels, key=int)[1:]:
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.noneEnabled, selector.addEnabled, selector.removeEnabled = True, False, False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _: self.updateButtons())
            layout.addRow(f"{channels[key]} volume:", selector)
            self._extraChannelSelectors.append(selector)
        self.ui.extraChannelsWidget.visible = bool(self._extraChannelSelectors)

    def onImportModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Select a MaskSAM model folder")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Could not import the model folder.", waitCursor=True):
            try:
                model = install_model_folder(folder)
            except MaskSAMError as error:
                if "already installed" not in str(error) or not slicer.util.confirmYesNoDisplay(f"{error}. Replace it?"):
                    raise
                model = install_model_folder(folder, replace=True)
            self._log(f"Installed model '{model.display_name}' in {model.folder}")
            self.refreshModels(select=str(model.folder))

    def _startDeviceProbe(self) -> None:
        self._probeRunner = JobRunner(devices.probe_command(commands.python_interpreter()), env=slicerJobEnvironment())
        self._probeRunner.start()
        self._timer.start()

    def _fillDeviceCombos(self) -> None:
        for combo in (self.ui.deviceComboBox, self.ui.trainDeviceComboBox):
            previous = combo.currentText
            combo.clear()
            for choice in self._deviceChoices:
                combo.addItem(choice.label)
            labels = [choice.label for choice in self._deviceChoices]
            combo.currentIndex = labels.index(previous) if previous in labels else 0

    def _deviceOf(self, combo):
        index = combo.currentIndex
        return self._deviceChoices[index] if 0 <= index < len(self._deviceChoices) else self._deviceChoices[0]

    # -- first use -----------------------------------------------------------------------------
    def _checkRequirements(self) -> List[str]:
        missing = requirements_check.missing_requirements()
        names = [requirement.name for requirement in missing]
        self.ui.requirementsLabel.text = f"MaskSAM needs Python packages that are not installed: {', '.join(names)}."
        self.ui.requirementsLabel.visible = self.ui.installRequirementsButton.visible = bool(missing)
        return names

    def onInstallRequirements(self) -> None:
        missing = requirements_check.missing_requirements()
        plan = requirements_check.install_plan(missing, requirements_check.is_installed("PyTorchUtils"))
        if plan.blockers:
            slicer.util.errorDisplay("\n".join(plan.blockers))
            return
        if plan.nothing_to_do or not slicer.util.confirmOkCancelDisplay(plan.question(), "Install Python packages"):
            return
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            requirements_check.install_in_slicer(plan)
        self._checkRequirements()
        self._startDeviceProbe()
        self.updateButtons()

    # -- segment ---------------------------------------------------------------------------------
    def _segmentRequest(self) -> SegmentRequest:
        node = self._parameterNode
        volumes = [node.inputVolume] + [s.currentNode() for s in self._extraChannelSelectors]
        return SegmentRequest(volumes, self.currentModel(), self._deviceOf(self.ui.deviceComboBox), node.quality,
                              node.outputSegmentation)

    def onSegment(self) -> None:
        job = SegmentJob(slicer.mrmlScene, self._segmentRequest(), base_env=slicerJobEnvironment(),
                         work_dir=slicer.app.temporaryPath, on_log=self._log)
        self._segmentJob = self._startJob(job, "segmentation", f"Segmenting with '{job.request.model.display_name}'...")
        self.updateButtons()

    def onCancelSegment(self) -> None:
        if self._segmentJob is not None:
            self._segmentJob.cancel()

    def _pollSegment(self) -> None:
        job = self._segmentJob
        state = job.poll()
        self._showProgress(self.ui.segmentProgressBar, self.ui.segmentStatusLabel, job.runner)
        if state is JobState.RUNNING:
            return
        self._segmentJob = None
        if state is JobState.SUCCEEDED:
            node = job.result_node
            show_in_3d(node)   # closed surfaces: the segments appear in 3D views too
            self._parameters().outputSegmentation = node
            self.ui.segmentStatusLabel.text = f"Done in {job.runner.elapsed_s:.0f} s: '{node.GetName()}'."
            for warning in job.warnings:
                self._log(f"Warning: {warning}")
        else:
            self._reportEnd(state, job, self.ui.segmentStatusLabel, "Segmentation", "the scene is unchanged")
        self.updateButtons()

    # -- training --------------------------------------------------------------------------------
    def _trainRequest(self) -> TrainRequest:
        node = self._parameterNode
        return TrainRequest(node.datasetFolder, node.trainOutputFolder, node.preset, node.samCheckpoint or None,
                            node.randomInit, node.epochs, device=self._deviceOf(self.ui.trainDeviceComboBox),
                            resume=node.resume)

    def onStartTraining(self) -> None:
        request = self._trainRequest()
        self._plot = TrainingPlot(slicer.mrmlScene, title=f"MaskSAM training {os.path.basename(request.output_dir)}")
        job = TrainingJob(request, base_env=slicerJobEnvironment(), on_log=self._log, on_epoch=self._onEpoch)
        self._trainingJob = self._startJob(job, "training", f"Training {request.preset} on {request.dataset_dir}...")
        self.updateButtons()

    def onStopTraining(self) -> None:
        if self._trainingJob is not None:
            self._trainingJob.cancel()

    def _onEpoch(self, event: dict) -> None:
        # The log pane already has the epoch in words (the console's line); the event feeds the plot.
        first = self._plot.table_node is None
        self._plot.add_epoch(event)
        if first:
            slicer.modules.plots.logic().ShowChartInLayout(self._plot.chart_node)

    def _pollTraining(self) -> None:
        job = self._trainingJob
        state = job.poll()
        self._showProgress(self.ui.trainingProgressBar, self.ui.trainingStatusLabel, job.runner)
        if state is JobState.RUNNING:
            return
        self._trainingJob = None
        if state is JobState.SUCCEEDED:
            for warning in job.warnings:
                self._log(f"Warning: {warning}")
            installed = job.installed_model
            self.refreshModels(select=str(installed.folder) if installed else None)
            self.ui.trainingStatusLabel.text = ("Training finished" + (
                f"; '{installed.display_name}' is ready in the Segment tab." if installed else "."))
        else:
            self._reportEnd(state, job, self.ui.trainingStatusLabel, "Training",
                            "the last finished epoch can be resumed")
        self.updateButtons()

    def onDownloadSam(self) -> None:
        preset = self._parameters().preset
        model_type = preset if preset in SAM_TYPES else "vit_b"
        runner = JobRunner(commands.masksam_command(commands.download_sam_arguments(model_type)),
                           env=commands.job_environment(slicerJobEnvironment()), on_log=self._log)
        runner.start()
        self._downloadRunner = runner
        self._timer.start()
        self.updateButtons()

    def _pollDownload(self) -> None:
        runner = self._downloadRunner
        state = runner.poll()
        self._showProgress(self.ui.trainingProgressBar, self.ui.trainingStatusLabel, runner)
        if state is JobState.RUNNING:
            return
        self._downloadRunner = None
        path = downloaded_checkpoint(runner.log_lines) if state is JobState.SUCCEEDED else None
        if path:
            self._parameters().samCheckpoint = path
            self.ui.trainingStatusLabel.text = f"SAM checkpoint ready: {path}"
        else:
            self._reportEnd(state, runner, self.ui.trainingStatusLabel, "Download", "nothing was kept")
        self.updateButtons()

    # -- dataset from the scene ------------------------------------------------------------------
    def onAddPair(self) -> None:
        volume, segmentation = self.ui.pairVolumeSelector.currentNode(), self.ui.pairSegmentationSelector.currentNode()
        if volume is None or segmentation is None:
            slicer.util.warningDisplay("Select a volume and the segmentation drawn on it.")
            return
        self._pairs.append(CasePair(volume, segmentation))
        self.ui.pairsListWidget.addItem(f"{volume.GetName()}  +  {segmentation.GetName()}")
        self.updateButtons()

    def onRemovePair(self) -> None:
        row = self.ui.pairsListWidget.currentRow
        if 0 <= row < len(self._pairs):
            del self._pairs[row]
            self.ui.pairsListWidget.takeItem(row)
        self.updateButtons()

    def onBuildDataset(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not build the dataset.", waitCursor=True):
            self._datasetBuilder = DatasetBuilder(self._pairs, node.newDatasetFolder, channel_name=node.channelName)
            self._timer.start()   # one case per tick: Slicer stays responsive
        self.updateButtons()

    def _stepDatasetBuilder(self) -> None:
        builder = self._datasetBuilder
        try:
            if not builder.finished_writing:
                builder.step()
                self.ui.trainingStatusLabel.text = f"Writing case {builder.done}/{builder.total}..."
                return
            summary = builder.finish()
        except Exception as error:
            builder.abort()
            self._datasetBuilder = None
            slicer.util.errorDisplay(f"Could not build the dataset: {error}")
            self.updateButtons()
            return
        self._datasetBuilder = None
        for warning in summary.warnings:
            self._log(f"Warning: {warning}")
        self._parameters().datasetFolder = str(summary.folder)
        self.ui.trainingStatusLabel.text = f"Dataset written: {len(summary.cases)} cases in {summary.folder}"
        self.updateButtons()

    # -- shared ----------------------------------------------------------------------------------
    def _startJob(self, job, what: str, message: str):
        """Start a background job; returns it, or None when it could not start (the error is shown)."""
        started = None
        with slicer.util.tryWithErrorDisplay(f"Could not start the {what}.", waitCursor=True):
            job.start()
            started = job
            self._log(message)
            self._timer.start()
        return started

    def _poll(self) -> None:
        if self._probeRunner is not None and self._probeRunner.poll() is not JobState.RUNNING:
            self._deviceChoices = devices.device_choices(devices.parse_probe_output(self._probeRunner.log_lines))
            self._probeRunner = None
            self._fillDeviceCombos()
        if self._segmentJob is not None:
            self._pollSegment()
        if self._trainingJob is not None:
            self._pollTraining()
        if self._downloadRunner is not None:
            self._pollDownload()
        if self._datasetBuilder is not None:
            self._stepDatasetBuilder()
        if not any((self._probeRunner, self._segmentJob, self._trainingJob, self._downloadRunner, self._datasetBuilder)):
            self._timer.stop()

    def _showProgress(self, bar, label, runner) -> None:
        fraction = runner.progress.overall_fraction() if runner is not None else None
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
        label.text = f"{what} failed: {job.error_message}"
        slicer.util.errorDisplay(f"{what} failed: {job.error_message}", detailedText=job.log_text)

    def updateButtons(self) -> None:
        if self._parameterNode is None:
            return
        activity = Activity(self._segmentJob is not None, self._trainingJob is not None,
                            self._downloadRunner is not None, self._datasetBuilder is not None)
        states = action_states(self._checkRequirements(), self._segmentRequest(), self._trainRequest(), self._pairs,
                               self._parameterNode.newDatasetFolder, activity)
        for name, state in states.items():
            button = getattr(self.ui, name)
            button.enabled, button.toolTip = state.enabled, state.tooltip

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
        job = SegmentJob(slicer.mrmlScene, request, base_env=slicerJobEnvironment(), work_dir=slicer.app.temporaryPath)
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
        if requirements_check.missing_requirements():
            self.delayDisplay("MaskSAM's Python packages are not installed: skipping the self-test")
            return
        self.test_phantom_segmentation()

    def _run(self, arguments):
        runner = JobRunner(commands.masksam_command(arguments), env=commands.job_environment(slicerJobEnvironment()))
        runner.start()
        self.assertEqual(wait_for(runner, slicer.app.processEvents), JobState.SUCCEEDED, runner.error_message)

    def test_phantom_segmentation(self):
        import tempfile
        from MaskSAMSegmentLib.segmentations import export_label_values_on_volume

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
