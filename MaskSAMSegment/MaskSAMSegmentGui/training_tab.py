"""The Training tab: a dataset from volume + segmentation pairs of the scene, the SAM checkpoint
download, and the training job with its plot.

Mixed into `MaskSAMSegmentWidget`; uses its `ui`, `_parameterNode`, `_parameters()`, `_timer`,
`_startJob()`, `_showProgress()`, `_reportEnd()`, `updateButtons()`, `_log()` and, from the
Segment tab, `_deviceOf()` and `refreshModels()` (a trained model is installed and selected).
"""

import logging
import os

import slicer
from MaskSAMCore.errors import MaskSAMError
from MaskSAMSegmentLib import commands
from MaskSAMSegmentLib.dataset_builder import CasePair, DatasetBuilder
from MaskSAMSegmentLib.job_runner import JobRunner, JobState
from MaskSAMSegmentLib.training_job import (SAM_TYPES, TrainingJob, TrainRequest, cpu_training_note,
                                              downloaded_checkpoint)
from MaskSAMSegmentLib.training_plot import TrainingPlot


class TrainingTabMixin:
    """Pairs, Build dataset, Download SAM, Start and Stop training. Its state (set by the widget's
    __init__): `_pairs`, `_datasetBuilder`, `_downloadRunner`, `_trainingJob`, `_plot`."""

    def _trainRequest(self) -> TrainRequest:
        node = self._parameterNode
        return TrainRequest(node.datasetFolder, node.trainOutputFolder, node.preset, node.samCheckpoint or None,
                            node.randomInit, node.epochs, device=self._deviceOf(self.ui.trainDeviceComboBox),
                            resume=node.resume, batch_size=node.batchSize)

    def onStartTraining(self) -> None:
        request = self._trainRequest()
        note = cpu_training_note(request)
        if note:
            self._log(note)
        self._plot = TrainingPlot(slicer.mrmlScene, title=f"MaskSAM training {os.path.basename(request.output_dir)}")
        if request.resume and self._plot.add_logged_epochs(request.output_dir):
            slicer.modules.plots.logic().ShowChartInLayout(self._plot.chart_node)
        job = TrainingJob(request, base_env=commands.slicer_startup_environment(), on_log=self._log,
                          on_epoch=self._onEpoch)
        self._trainingJob = self._startJob(job, "training", f"Training {request.preset} on {request.dataset_dir}...")
        self.updateButtons()

    def onStopTraining(self) -> None:
        """Stop ends the training or the SAM download, whichever runs (never both at once)."""
        for job in (self._trainingJob, self._downloadRunner):
            if job is not None:
                job.cancel()

    def _onEpoch(self, event: dict) -> None:
        # The log pane already has the epoch in words (the console's line); the event feeds the plot.
        if self._plot.add_epoch(event):
            slicer.modules.plots.logic().ShowChartInLayout(self._plot.chart_node)

    def _pollTraining(self) -> None:
        job = self._trainingJob
        state = job.poll()
        self._showProgress(self.ui.trainingProgressBar, self.ui.trainingStatusLabel, job.runner)
        if state is JobState.RUNNING:
            return
        self._trainingJob = None
        if state is JobState.SUCCEEDED:
            for warning in job.unlogged_warnings:
                self._log(f"Warning: {warning}")
            installed = job.installed_model
            self.refreshModels(select=str(installed.folder) if installed else None)
            self.ui.trainingStatusLabel.text = job.finished_status()
        else:
            self._reportEnd(state, job, self.ui.trainingStatusLabel, "Training",
                            "the last finished epoch can be resumed")
        self.updateButtons()

    def onDownloadSam(self) -> None:
        preset = self._parameters().preset
        model_type = preset if preset in SAM_TYPES else "vit_b"
        runner = JobRunner(commands.masksam_command(commands.download_sam_arguments(model_type)),
                           env=commands.job_environment(commands.slicer_startup_environment()), on_log=self._log)
        self._downloadRunner = self._startJob(runner, "download", f"Downloading the {model_type} SAM checkpoint...")
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
            self._reportEnd(state, runner, self.ui.trainingStatusLabel, "Download",
                            "the next Download goes on where it stopped")
        self.updateButtons()

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

    def _abandonPairs(self) -> None:
        """Forget the pairs and discard a dataset being built (their nodes are going away)."""
        if self._datasetBuilder is not None:
            self._datasetBuilder.abort()
            self._datasetBuilder = None
            self.ui.trainingStatusLabel.text = "Dataset build stopped: the scene was closed; nothing was written."
        self._pairs.clear()
        self.ui.pairsListWidget.clear()

    def onBuildDataset(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not build the dataset.", waitCursor=True):
            self._datasetBuilder = DatasetBuilder(self._pairs, node.newDatasetFolder, channel_name=node.channelName,
                                                  drawn_slices_only=node.drawnSlicesOnly)
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
        except Exception as error:   # noqa: BLE001 - a step runs from the timer: show the error, never raise
            builder.abort()
            self._datasetBuilder = None
            if not isinstance(error, MaskSAMError):
                # Not the user's problem but a bug: the dialog's one line cannot say where it happened.
                logging.exception("MaskSAM: building the dataset failed")
            slicer.util.errorDisplay(f"Could not build the dataset: {error}")
            self.updateButtons()
            return
        self._datasetBuilder = None
        for warning in summary.warnings:
            self._log(f"Warning: {warning}")
        self._parameters().datasetFolder = str(summary.folder)
        self.ui.trainingStatusLabel.text = f"Dataset written: {len(summary.cases)} cases in {summary.folder}"
        self.updateButtons()
