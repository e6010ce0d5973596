"""A live Slicer plot of training: one table row and one point per metric after every epoch.

MRML only (table node, plot series nodes, plot chart node), so it works without Qt and is
saved with the scene; the widget just shows the chart in the layout. The nodes are created on
the first epoch line, so starting (and stopping) a training before any epoch adds nothing.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

import vtk

import slicer

from MaskSAMCore.folder_layout import TRAINING_LOG
from MaskSAMCore.training.training_log import read_csv

# Columns plotted, in this order, when the epoch lines carry them (see MaskSAMCore's trainer).
PLOTTED_METRICS = (
    ("train_loss", "Training loss"),
    ("val_loss", "Validation loss"),
    ("mean_dice", "Validation Dice (mean)"),
    ("ema_dice", "Validation Dice (EMA)"),
)
_COLOURS = {"train_loss": (0.12, 0.47, 0.71), "val_loss": (1.0, 0.5, 0.05),
            "mean_dice": (0.17, 0.63, 0.17), "ema_dice": (0.84, 0.15, 0.16)}


class TrainingPlot:
    """Table + chart fed with epoch events (dicts with "epoch" and metric values)."""

    def __init__(self, scene, title: str = "MaskSAM training") -> None:
        self.scene = scene
        self.title = title
        self.table_node = None
        self.chart_node = None
        self.series_nodes: Dict[str, object] = {}
        self._columns: Dict[str, "vtk.vtkFloatArray"] = {}

    def add_epoch(self, event: Dict[str, object]) -> bool:
        """Append one epoch (the event of an ``epoch`` machine line). True when this made the
        table and chart (the first epoch, or the first after the scene was closed), which the
        caller then shows."""
        metrics = [key for key, _ in PLOTTED_METRICS if _is_number(event.get(key))]
        created = self.table_node is None or self.table_node.GetScene() is None
        if created:
            self._create(metrics)
        table = self.table_node.GetTable()
        row = table.InsertNextBlankRow()
        epoch = event.get("epoch")
        table.SetValue(row, 0, vtk.vtkVariant(float(epoch) if _is_number(epoch) else float(row + 1)))
        for index, (key, _) in enumerate(PLOTTED_METRICS, start=1):
            if key in self._columns:
                value = event.get(key)
                table.SetValue(row, index, vtk.vtkVariant(float(value) if _is_number(value) else math.nan))
        table.Modified()
        self.table_node.Modified()
        return created

    def add_logged_epochs(self, model_dir: "os.PathLike[str] | str") -> bool:
        """Fill the plot with the epochs a training folder's log holds (a resumed run's earlier
        epochs, which its new epoch lines do not repeat). True when this made the chart."""
        log = Path(model_dir) / TRAINING_LOG
        try:
            rows = read_csv(log)
        except (OSError, UnicodeDecodeError, csv.Error):
            return False   # no log yet (nothing finished), or unreadable: the plot starts empty
        created = False
        for row in rows:
            created = self.add_epoch({key: _number_or_none(value) for key, value in row.items()}) or created
        return created

    def rows(self) -> List[Dict[str, float]]:
        """The table as a list of {column: value} (what the chart shows)."""
        if self.table_node is None:
            return []
        table = self.table_node.GetTable()
        names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
        return [{name: table.GetValue(r, c).ToDouble() for c, name in enumerate(names)}
                for r in range(table.GetNumberOfRows())]

    def _create(self, metrics: List[str]) -> None:
        self._remove_earlier_plot()
        self.table_node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{self.title} table")
        table = self.table_node.GetTable()
        epoch = vtk.vtkFloatArray()
        epoch.SetName("epoch")
        table.AddColumn(epoch)
        for key, _ in PLOTTED_METRICS:
            # Every known metric gets a column (stable layout); only those present get a curve.
            column = vtk.vtkFloatArray()
            column.SetName(key)
            table.AddColumn(column)
            self._columns[key] = column
        self.chart_node = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.title)
        self.chart_node.SetTitle(self.title)
        self.chart_node.SetXAxisTitle("epoch")
        self.chart_node.SetYAxisTitle("loss / Dice")
        for key, label in PLOTTED_METRICS:
            if key not in metrics:
                continue
            series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", label)
            series.SetAndObserveTableNodeID(self.table_node.GetID())
            series.SetXColumnName("epoch")
            series.SetYColumnName(key)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetColor(*_COLOURS[key])
            self.chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
            self.series_nodes[key] = series


    def _remove_earlier_plot(self) -> None:
        """One plot per training folder: a resumed run's (which shows every epoch again) replaces
        the one its interrupted start left in the scene, instead of a second chart of one name."""
        charts = [node for node in _nodes(self.scene, "vtkMRMLPlotChartNode") if node.GetName() == self.title]
        for chart in charts:
            # listed first: removing a series from the scene also takes it out of the chart's list
            series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
            tables = [node.GetTableNode() for node in series if node is not None]
            for node in series + tables + [chart]:
                if node is not None and node.GetScene() is self.scene:
                    self.scene.RemoveNode(node)


def _nodes(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def _number_or_none(text: str) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _is_number(value: Optional[object]) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
