"""The Segment tab: installed models, compute devices, and the segmentation job.

Mixed into `MaskSAMSegmentWidget`; uses its `ui`, `_parameterNode`, `_parameters()`,
`_setParameter()`, `_timer`, `_startJob()`, `_showProgress()`, `_reportEnd()`, `updateButtons()`
and `_log()`.
"""

from typing import Optional

import slicer
from MaskSAMCore.errors import list_some
from MaskSAMSegmentLib import commands, devices
from MaskSAMSegmentLib.job_progress import warnings_note
from MaskSAMSegmentLib.job_runner import JobRunner, JobState
from MaskSAMSegmentLib.models import find_models
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest, cpu_speed_note, needs_sam_file
from MaskSAMSegmentLib.segmentations import made_for_another_volume, show_in_3d


class SegmentTabMixin:
    """Model list, device choice, Segment and Cancel. Its state (set by the widget's __init__):
    `_models`, `_deviceChoices`, `_extraChannelSelectors`, `_segmentJob`, `_probeRunner`, `_retiredProbes`,
    `_outputInputVolume` (the input volume the output selector was last checked against)."""

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

    def _selectModelOfParameters(self, folder: str) -> None:
        """Show the parameter node's model in the list when it names another installed one (a
        saved scene was loaded, or a script set it); Segment uses the model the list shows."""
        current = self.currentModel()
        if not folder or (current is not None and str(current.folder) == folder):
            return
        folders = [str(model.folder) for model in self._models]
        if folder in folders:
            self.ui.modelComboBox.currentIndex = folders.index(folder)   # -> onModelSelected

    def currentModel(self):
        index = self.ui.modelComboBox.currentIndex
        return self._models[index] if 0 <= index < len(self._models) else None

    def onModelSelected(self, index: int) -> None:
        model = self.currentModel()
        if model is not None:
            # Through _parameters(): a model installed while the module is hidden (a training
            # ending) must reach the parameters, or enter() would select the old model again.
            parameters = self._parameters()
            if parameters.modelFolder != str(model.folder):
                parameters.modelFolder = str(model.folder)
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
            selector.showChildNodeTypes = False   # no labelmaps, like the input volume selector
            selector.noneEnabled, selector.addEnabled, selector.removeEnabled = True, False, False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _: self.updateButtons())
            layout.addRow(f"{channels[key]} volume:", selector)
            self._extraChannelSelectors.append(selector)
        self.ui.extraChannelsWidget.visible = bool(self._extraChannelSelectors)

    def _startDeviceProbe(self) -> None:
        """Look for devices again (after installing PyTorch): a probe still running is cancelled,
        and polled by `_pollDeviceProbes` until its process has ended."""
        if self._probeRunner is not None:
            self._probeRunner.cancel()
            self._retiredProbes.append(self._probeRunner)
        self._probeRunner = JobRunner(devices.probe_command(commands.python_interpreter()),
                                      env=commands.slicer_startup_environment())
        self._probeRunner.start()
        self._timer.start()

    def _pollDeviceProbes(self) -> None:
        self._retiredProbes = [probe for probe in self._retiredProbes if probe.poll() is JobState.RUNNING]
        if self._probeRunner is not None and self._probeRunner.poll() is not JobState.RUNNING:
            report = devices.parse_probe_output(self._probeRunner.log_lines)
            self._probeRunner = None
            self._fillDeviceCombos(devices.device_choices(report))

    def _fillDeviceCombos(self, choices) -> None:
        """Show `choices` in both device lists, each keeping the device chosen in it."""
        combos = (self.ui.deviceComboBox, self.ui.trainDeviceComboBox)
        chosen = [self._deviceOf(combo) if combo.currentIndex >= 0 else None for combo in combos]
        self._deviceChoices = choices
        for combo, previous in zip(combos, chosen):
            combo.clear()
            for choice in choices:
                combo.addItem(choice.label)
            combo.currentIndex = devices.same_device_index(choices, previous)

    def _deviceOf(self, combo):
        index = combo.currentIndex
        return self._deviceChoices[index] if 0 <= index < len(self._deviceChoices) else self._deviceChoices[0]

    def _segmentRequest(self) -> SegmentRequest:
        node = self._parameterNode
        volumes = [node.inputVolume] + [s.currentNode() for s in self._extraChannelSelectors]
        model = self.currentModel()
        # the Training tab's SAM checkpoint, only for a model whose own SAM weights are not found otherwise
        samCheckpoint = (node.samCheckpoint or None) if needs_sam_file(model) else None
        return SegmentRequest(volumes, model, self._deviceOf(self.ui.deviceComboBox), node.quality,
                              node.outputSegmentation, sam_checkpoint=samCheckpoint)

    def _forgetOutputOfOtherVolume(self, node) -> bool:
        """When the input volume changes, the output goes back to "Create new segmentation" unless
        the chosen one was made for the new volume: the last result stays selected after a run,
        and segmenting the next scan into it would only be refused with a warning every time.
        True when it changed the parameter node (which then updates the widget again)."""
        if node.inputVolume is None or node.inputVolume is self._outputInputVolume:
            return False
        self._outputInputVolume = node.inputVolume
        if not made_for_another_volume(node.outputSegmentation, node.inputVolume):
            return False
        node.outputSegmentation = None
        return True

    def onSegment(self) -> None:
        request = self._segmentRequest()
        note = cpu_speed_note(request)
        if note:
            self._log(note)
        job = SegmentJob(slicer.mrmlScene, request, base_env=commands.slicer_startup_environment(),
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
            # Closed surfaces, so the segments appear in 3D views too: seconds for a large result,
            # in this thread; say so first (repaint: the label is drawn before the work starts).
            self.ui.segmentStatusLabel.text = "Building 3D surfaces..."
            self.ui.segmentStatusLabel.repaint()
            show_in_3d(node)
            self._parameters().outputSegmentation = node
            # The structures not found, first (the log names them all): their segments are empty.
            notFound = f" Not found (empty): {list_some(job.not_found)}." if job.not_found else ""
            self.ui.segmentStatusLabel.text = (f"Done in {job.runner.elapsed_s:.0f} s: '{node.GetName()}'."
                                               + notFound + warnings_note(job.warnings))
            for warning in job.unlogged_warnings:
                self._log(f"Warning: {warning}")
        else:
            self._reportEnd(state, job, self.ui.segmentStatusLabel, "Segmentation", "the scene is unchanged")
        self.updateButtons()
