"""Which buttons of the module can be pressed now, and the tooltip that says why (not).

Pure logic over the requests the widget would send, so the rules ("Segment needs a volume and
a finished model", "one training at a time", ...) are tested without Qt. A disabled button's
tooltip lists every missing piece, one per line (MONAIAuto3DSeg's good habit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from MaskSAMSegmentLib.dataset_builder import CasePair, check_pairs, new_dataset_folder_problems
from MaskSAMSegmentLib.requirements_check import REQUIREMENTS
from MaskSAMSegmentLib.segment_job import SegmentRequest, cpu_speed_note, segment_problems
from MaskSAMSegmentLib.training_job import SAM_TYPES, TrainRequest, cpu_training_note, train_problems


@dataclass(frozen=True)
class ActionState:
    enabled: bool
    tooltip: str


@dataclass
class Activity:
    """What is running in the background right now."""

    segmenting: bool = False
    training: bool = False
    downloading: bool = False
    building_dataset: bool = False

    @property
    def training_tab_busy(self) -> bool:
        return self.training or self.downloading or self.building_dataset


def _state(problems: List[str], busy: bool, ready_tip: str, busy_tip: str) -> ActionState:
    if problems:
        return ActionState(False, "\n".join(problems))
    return ActionState(not busy, busy_tip if busy else ready_tip)


def _lines(*lines: Optional[str]) -> str:
    """The lines that are given, one per line (a tooltip with an optional warning)."""
    return "\n".join(line for line in lines if line)


def _stop_state(activity: Activity) -> ActionState:
    """Stop ends the training or the SAM download (gigabytes: it must not lock the tab until done)."""
    if activity.downloading:
        return ActionState(True, "Stop the download; the next Download goes on where it stopped.")
    return ActionState(activity.training, "Stop training; the last finished epoch can be resumed.")


def _package_problems(missing_packages: List[str], training: bool) -> List[str]:
    """The missing packages that block an action: segmenting and downloading do not wait for a
    package only training uses (Matplotlib draws training's progress.png). A name not in
    REQUIREMENTS blocks every action."""
    training_only = {requirement.name for requirement in REQUIREMENTS if requirement.training_only}
    blocking = [name for name in missing_packages if training or name not in training_only]
    return [f"Install the missing Python packages first ({', '.join(blocking)})."] if blocking else []


def action_states(missing_packages: List[str], segment: SegmentRequest, train: TrainRequest,
                  pairs: List[CasePair], new_dataset_folder: str, activity: Activity) -> Dict[str, ActionState]:
    """Button name (as in the .ui file) -> its state."""
    packages = _package_problems(missing_packages, training=False)
    pair_problems = check_pairs(pairs) + new_dataset_folder_problems(new_dataset_folder)
    return {
        "segmentButton": _state(packages + segment_problems(segment), activity.segmenting,
                                _lines("Segment the input volume with the selected model.", cpu_speed_note(segment)),
                                "A segmentation is running."),
        "cancelSegmentButton": ActionState(activity.segmenting, "Stop the segmentation; the scene stays as it was."),
        "startTrainingButton": _state(_package_problems(missing_packages, training=True) + train_problems(train),
                                      activity.training_tab_busy,
                                      _lines("Start training in the background.", cpu_training_note(train)),
                                      "Wait for the running task to finish."),
        "stopTrainingButton": _stop_state(activity),
        "downloadSamButton": _state(packages + ([] if train.preset in SAM_TYPES else
                                                [f"The {train.preset} preset uses no SAM weights."]),
                                    activity.training_tab_busy,
                                    "Download the official SAM checkpoint of the preset (SHA-256 checked).",
                                    "Wait for the running task to finish."),
        "buildDatasetButton": _state(pair_problems, activity.training_tab_busy,
                                     "Write the pairs as a dataset in nnU-Net format.", "Wait for the running task to finish."),
    }
