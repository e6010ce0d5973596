"""The dataset label key of each segment of the pairs a dataset is built from.

A segment's key is its name's (`terminology.dataset_label_key`: "Left kidney" -> "left_kidney"),
except for a segment MaskSAM made: it shows the terminology's name ("Left kidney") but carries the
model's label name in its LABEL_NAME_TAG ("kidney_left"). A dataset built from (corrected)
results keeps the model's names, so fine-tuning goes on with the labels the model has, and a
segment drawn by hand with that display name joins the same label.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from MaskSAMCore.terminology import AnatomyTerminology, dataset_label_key
from MaskSAMSegmentLib.segmentations import LABEL_NAME_TAG, segment_tag


class LabelKeys:
    """segment -> dataset label key, over the segmentations of one build."""

    def __init__(self, segmentation_nodes: Iterable, terminology: Optional[AnatomyTerminology] = None) -> None:
        self.terminology = terminology or AnatomyTerminology()
        self._by_display_key: Dict[str, str] = {}   # key of a result's display name -> its model label's key
        for node in segmentation_nodes:
            segmentation = node.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                label = self._model_label(segmentation.GetNthSegment(index))
                if label is not None:
                    self._by_display_key.setdefault(self._display_key(label), dataset_label_key(label))

    def _display_key(self, name: str) -> str:
        """The key of the name the terminology shows for `name` ("kidney_left" -> "left_kidney")."""
        return dataset_label_key(self.terminology.style(name, 0).name)

    def _model_label(self, segment) -> Optional[str]:
        """The model label a MaskSAM segment carries, unless someone renamed the segment since (its
        name then says what it is now)."""
        label = segment_tag(segment, LABEL_NAME_TAG)
        name_key = dataset_label_key(segment.GetName())
        if label and name_key in (dataset_label_key(label), self._display_key(label)):
            return label
        return None

    def key(self, segment) -> str:
        label = self._model_label(segment)
        if label is not None:
            return dataset_label_key(label)
        name_key = dataset_label_key(segment.GetName())
        return self._by_display_key.get(name_key, name_key)
