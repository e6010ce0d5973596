"""Build a training dataset (nnU-Net v2 raw format) from volume + segmentation pairs in the scene.

Every case is written on its volume's exact grid: the image from the volume's voxels, the label
map by exporting the segments with Slicer's segmentations logic onto that same volume (so a
segmentation drawn on another grid, or under a transform, lands where it is in the world), one
export per layer of the segmentation (a layer's segments cannot overlap).
Label values are consistent across cases: segments with the same name (case, spaces and
punctuation ignored) get the same value, in the order names are first met; a MaskSAM result's
segments go by the model's label names (`label_keys`).

The folder is assembled in a hidden sibling and renamed into place at the end, so a failed or
abandoned build never leaves a dataset that `masksam train` would half-accept. `step()` writes
one case, so the widget can build from a timer and stay responsive.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

import slicer
from MaskSAMCore.atomic import write_json
from MaskSAMCore.data.dataset_json import IGNORE_LABEL, read_dataset_meta
from MaskSAMCore.data.regions import REGION_ORDER_KEY, RegionError, RegionScheme, is_region_dataset, region_scheme
from MaskSAMCore.errors import DatasetError, InputError, describe_path
from MaskSAMSegmentLib.drawn_slices import mark_undrawn_slices, slice_orientation
from MaskSAMSegmentLib.geometry import LpsGrid
from MaskSAMSegmentLib.image_files import write_array_image
from MaskSAMSegmentLib.label_keys import LabelKeys
from MaskSAMSegmentLib.segmentations import export_segments_on_volume, segment_volume_mm3
from MaskSAMSegmentLib.user_paths import full_path_problems
from MaskSAMSegmentLib.volume_nodes import smallest_label_dtype, volume_to_array

FILE_ENDINGS = (".nii.gz", ".nrrd")
# A segment with less of its volume than this on the volume's grid is warned about (resampling a
# segment drawn on another grid changes its volume by far less).
MINIMUM_SHARE_ON_VOLUME = 0.5
# Label names a segment may not take, and why: `masksam train` gives them a meaning of their own
# (nnU-Net's "ignore" marks unannotated voxels, which training leaves out rather than learns).
RESERVED_LABELS = {"background": "value 0 is the background",
                   "ignore": "nnU-Net's name for unannotated voxels, which training does not learn as a structure"}


@dataclass
class CasePair:
    """One training case: a scalar volume and the segmentation drawn on it."""

    volume: object
    segmentation: object


@dataclass
class DatasetSummary:
    folder: Path
    labels: Dict[str, int]
    cases: List[str]
    warnings: List[str] = field(default_factory=list)


def label_keys(pairs: List[CasePair]) -> LabelKeys:
    return LabelKeys(pair.segmentation for pair in pairs)


def plan_labels(pairs: List[CasePair], keys: Optional[LabelKeys] = None) -> Dict[str, int]:
    """``{"background": 0, key: value, ...}`` over all pairs, values in first-met order; the keys
    are `keys`'s (default: those of these pairs), a MaskSAM result's the model's label names."""
    keys = keys or label_keys(pairs)
    labels: Dict[str, int] = {"background": 0}
    for pair in pairs:
        segmentation = pair.segmentation.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            name = segmentation.GetNthSegment(index).GetName()
            key = keys.key(segmentation.GetNthSegment(index))
            if not key:
                raise InputError(f"segmentation '{pair.segmentation.GetName()}' has a segment without a usable name")
            if key in RESERVED_LABELS:
                raise InputError(f"segmentation '{pair.segmentation.GetName()}': a segment may not be called "
                                 f"'{name}' ({RESERVED_LABELS[key]}); rename it")
            labels.setdefault(key, len(labels))
    if len(labels) < 2:
        raise InputError("the selected segmentations have no segments")
    return labels


def check_pairs(pairs: List[CasePair]) -> List[str]:
    """Why these pairs cannot be built into a dataset (empty when they can)."""
    problems: List[str] = []
    if not pairs:
        problems.append("Add at least one volume + segmentation pair.")
    paired: List[object] = []
    for pair in pairs:
        if pair.volume is None or pair.segmentation is None:
            problems.append("Every pair needs both a volume and a segmentation.")
            continue
        if any(volume is pair.volume for volume in paired):
            # one scan as two cases could land in both the training and the validation split
            problems.append(f"Volume '{pair.volume.GetName()}' is in more than one pair; remove all but one.")
            continue
        paired.append(pair.volume)
        removed = [node.GetName() for node in (pair.volume, pair.segmentation) if node.GetScene() is None]
        if removed:
            problems.append(f"'{removed[0]}' is no longer in the scene; remove its pair.")
            continue
        if pair.volume.IsA("vtkMRMLLabelMapVolumeNode"):
            problems.append(f"'{pair.volume.GetName()}' is a labelmap; pair the CT or MRI image with its segmentation.")
        if pair.volume.GetParentTransformNode() is not None:
            problems.append(f"Volume '{pair.volume.GetName()}' is transformed; harden its transform first (Data module).")
        if pair.segmentation.GetSegmentation().GetNumberOfSegments() == 0:
            problems.append(f"Segmentation '{pair.segmentation.GetName()}' has no segments.")
    return problems


def new_dataset_folder_problems(folder: "os.PathLike[str] | str") -> List[str]:
    """Why `folder` cannot be the new dataset folder, as far as its text tells (empty when it can)."""
    text = str(folder) if folder else ""
    return full_path_problems(text, "new dataset folder") if text else ["Choose a folder for the new dataset."]


def export_by_layer(pair: CasePair) -> Dict[str, Tuple[np.ndarray, int]]:
    """segment ID -> (a label map on the volume's grid, the segment's value in it), with one
    export per layer of a segmentation stored as binary labelmaps: segments sharing a layer
    cannot overlap (one value per voxel), so exporting them together loses nothing, and a case of
    100 segments costs one export instead of 100 (each runs in Slicer's GUI thread). Segments
    stored otherwise (closed surfaces) may overlap and are exported one by one, as before."""
    segmentation = pair.segmentation.GetSegmentation()
    labelmaps = segmentation.GetSourceRepresentationName() == \
        slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    groups: Dict[object, List[str]] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        layer = segmentation.GetLayerIndex(segment_id) if labelmaps else -1
        groups.setdefault(layer if layer >= 0 else segment_id, []).append(segment_id)
    exported: Dict[str, Tuple[np.ndarray, int]] = {}
    for segment_ids in groups.values():
        labels = export_segments_on_volume(pair.segmentation, pair.volume, segment_ids)   # value i+1: i-th ID
        exported.update({segment_id: (labels, value) for value, segment_id in enumerate(segment_ids, start=1)})
    return exported


class DatasetBuilder:
    """Writes the dataset one case per `step()`; `finish()` publishes it, `abort()` discards it.

    output_dir:   the dataset folder to create (must not exist, or be empty)
    channel_name: the modality written to channel_names["0"] ("CT", "T2", ...)
    drawn_slices_only: slices of a volume without any segment voxel are marked not annotated
        (nnU-Net's "ignore" label) instead of background, for cases drawn on some slices only;
        training then learns from the drawn slices alone. The slice axis is read from each
        case's drawing (`drawn_slices.find_drawn_slices`).
    """

    def __init__(self, pairs: List[CasePair], output_dir: "os.PathLike[str] | str", channel_name: str = "CT",
                 file_ending: str = ".nii.gz", dataset_name: Optional[str] = None, case_prefix: str = "case",
                 drawn_slices_only: bool = False) -> None:
        problems = check_pairs(pairs) + new_dataset_folder_problems(output_dir)
        if problems:
            raise InputError(" ".join(problems))
        if file_ending not in FILE_ENDINGS:
            raise InputError(f"file ending must be one of {FILE_ENDINGS}, not {file_ending!r}")
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and (not self.output_dir.is_dir() or any(self.output_dir.iterdir())):
            raise InputError(f"{describe_path(self.output_dir)} already exists and is not empty; choose a new folder")
        self.pairs = list(pairs)
        self.channel_name = channel_name.strip() or "CT"
        self.file_ending = file_ending
        self.dataset_name = dataset_name or self.output_dir.name
        self.keys = label_keys(self.pairs)
        self.labels = plan_labels(self.pairs, self.keys)
        # nnU-Net's rule: the ignore label is one above the last class
        self.ignore_value: Optional[int] = len(self.labels) if drawn_slices_only else None
        self.case_names = [f"{case_prefix}_{index:03d}" for index in range(len(self.pairs))]
        self.warnings: List[str] = []
        self.sources: Dict[str, Dict[str, str]] = {}
        self._values_seen: set = set()
        self._absent: Dict[str, List[str]] = {}   # case -> label names its segmentation has no segment for
        self._empty: Dict[str, List[str]] = {}    # case -> label names whose segments have no voxel on its volume
        self.done = 0
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self._staging: Optional[Path] = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.partial-",
                                                              dir=self.output_dir.parent))
        (self._staging / "imagesTr").mkdir()
        (self._staging / "labelsTr").mkdir()

    @property
    def total(self) -> int:
        return len(self.pairs)

    @property
    def finished_writing(self) -> bool:
        return self.done >= self.total

    def step(self) -> None:
        """Write the next case (image and label map)."""
        if self._staging is None:
            raise RuntimeError("the build was finished or aborted")
        if self.finished_writing:
            return
        pair, case = self.pairs[self.done], self.case_names[self.done]
        problems = check_pairs([pair])   # the scene may have changed since the build started
        if problems:
            raise InputError(f"{case}: {problems[0]}")
        image, grid = volume_to_array(pair.volume)
        labels = np.zeros(grid.shape_zyx, dtype=np.int32)
        segmentation = pair.segmentation.GetSegmentation()
        empty: List[str] = []
        exported = export_by_layer(pair)
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            name = segmentation.GetNthSegment(index).GetName()
            key = self.keys.key(segmentation.GetNthSegment(index))
            layer_labels, layer_value = exported[segment_id]
            mask = layer_labels == layer_value
            written = int(np.count_nonzero(mask))
            self._check_on_volume(case, pair, segment_id, name, written * grid.voxel_volume_mm3)
            if not written and not segment_volume_mm3(pair.segmentation, segment_id):
                empty.append(key)   # never painted (one outside the volume is warned above)
            overlap = int(np.count_nonzero(mask & (labels > 0)))
            if overlap:
                self.warnings.append(f"{case}: segment '{name}' overlaps earlier segments in {overlap} voxels "
                                     "(it wins there)")
            value = self.labels.get(key)
            if value is None:
                raise InputError(f"{case}: segment '{name}' of '{pair.segmentation.GetName()}' was added or "
                                 "renamed after the build started; build the dataset again")
            labels[mask] = value
        if not labels.any():
            self.warnings.append(
                f"{case} ('{pair.segmentation.GetName()}') has no segment voxel at all: " +
                ("with 'only slices with a segment are annotated' the whole case is unannotated and teaches nothing"
                 if self.ignore_value is not None else "the whole case is learned as background"))
        if self.ignore_value is not None:
            self._mark_undrawn_slices(case, labels, grid)
        write_array_image(image, grid, self._staging / "imagesTr" / f"{case}_0000{self.file_ending}")
        write_array_image(labels.astype(smallest_label_dtype(labels)), grid,
                          self._staging / "labelsTr" / f"{case}{self.file_ending}")
        self.sources[case] = {"volume": pair.volume.GetName(), "segmentation": pair.segmentation.GetName()}
        present = {self.keys.key(segmentation.GetNthSegment(i)) for i in range(segmentation.GetNumberOfSegments())}
        self._absent[case] = [key for key in self.labels if key != "background" and key not in present]
        self._empty[case] = empty
        self._values_seen.update(int(v) for v in np.unique(labels))
        self.done += 1

    def _mark_undrawn_slices(self, case: str, labels: np.ndarray, grid: LpsGrid) -> None:
        drawn = mark_undrawn_slices(labels, self.ignore_value)
        if drawn.axis != 0:   # not the stored slice axis: worth a line, in case it guessed wrong
            self.warnings.append(
                f"{case}: drawn on {slice_orientation(grid.direction_matrix, drawn.axis)} slices (the volume's "
                f"{drawn.axis_name} axis): {int(drawn.drawn.sum())} of {drawn.drawn.size} slices annotated")

    def _check_on_volume(self, case: str, pair: CasePair, segment_id: str, name: str, written_mm3: float) -> None:
        """Warn when much of a segment misses the volume's grid: drawn on another scan, or
        beyond this one's field of view, it would train as background there without a word."""
        drawn_mm3 = segment_volume_mm3(pair.segmentation, segment_id)
        if not drawn_mm3 or written_mm3 >= MINIMUM_SHARE_ON_VOLUME * drawn_mm3:
            return
        where = (f"segment '{name}' of '{pair.segmentation.GetName()}' lies outside volume "
                 f"'{pair.volume.GetName()}'")
        share = f"{100.0 * written_mm3 / drawn_mm3:.0f}%"
        self.warnings.append(f"{case}: {where}" + (" (drawn on another scan?)" if not written_mm3 else
                                                   f" for the most part (only {share} of it is on the volume)"))

    def finish(self) -> DatasetSummary:
        """Write dataset.json and move the folder into place."""
        while not self.finished_writing:
            self.step()
        never = [name for name, value in self.labels.items() if value and value not in self._values_seen]
        # nnU-Net's format has no "not annotated": a structure without a segment in a case is
        # background there, which teaches the model to miss it unless the case truly lacks it.
        for case, absent in self._absent.items():
            absent = [key for key in absent if key not in never]
            empty = [key for key in self._empty[case] if key not in never]
            missing = [f"no segment {', '.join(absent)}"] if absent else []
            missing += [f"an empty segment {', '.join(empty)}"] if empty else []
            if missing:
                self.warnings.append(f"{case} ('{self.sources[case]['segmentation']}') has {' and '.join(missing)}: "
                                     "the model learns it as background there (right only if that case has none)")
        if never:
            self.warnings.append(f"segment(s) {', '.join(never)} are empty in every case: the model "
                                 "cannot learn them")
        labels = dict(self.labels)
        if self.ignore_value is not None:
            labels[IGNORE_LABEL] = self.ignore_value
        write_json(self._staging / "dataset.json", {
            "name": self.dataset_name,
            "description": "Built from a 3D Slicer scene by the MaskSAM extension",
            "channel_names": {"0": self.channel_name},
            "labels": labels,
            "numTraining": self.total,
            "file_ending": self.file_ending,
            "masksam_sources": self.sources,
        })
        if self.output_dir.exists():
            self.output_dir.rmdir()   # checked empty in __init__
        os.replace(self._staging, self.output_dir)
        self._staging = None
        return DatasetSummary(self.output_dir, dict(self.labels), list(self.case_names), list(self.warnings))

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def build_dataset_from_scene(pairs: List[CasePair], output_dir: "os.PathLike[str] | str",
                             channel_name: str = "CT", file_ending: str = ".nii.gz",
                             dataset_name: Optional[str] = None, drawn_slices_only: bool = False) -> DatasetSummary:
    """All cases in one call (scripts and tests); nothing is left behind if it fails."""
    builder = DatasetBuilder(pairs, output_dir, channel_name, file_ending, dataset_name,
                             drawn_slices_only=drawn_slices_only)
    try:
        return builder.finish()
    except BaseException:
        builder.abort()
        raise


def read_dataset_labels(dataset_dir: "os.PathLike[str] | str") -> Dict[str, int]:
    """The labels of a dataset folder's dataset.json (for the Training tab's summary line): name ->
    value. A region dataset's regions (`read_dataset_regions`) appear with the value their
    predictions are painted with (regions_class_order)."""
    return read_dataset_regions(dataset_dir)[0]


def read_dataset_regions(dataset_dir: "os.PathLike[str] | str") -> Tuple[Dict[str, int], Optional[RegionScheme]]:
    """(labels as `read_dataset_labels` gives them, the regions of a region dataset or None).

    A region dataset (BraTS-like: a label names a list of values) is checked as the core checks
    it; `DatasetError` (an `InputError`) says why its regions cannot be used."""
    path = Path(dataset_dir) / "dataset.json"
    try:
        meta = read_dataset_meta(path)
        labels = meta["labels"]
        if not is_region_dataset(labels):
            return {str(k): int(v) for k, v in labels.items()}, None
        order = meta.get(REGION_ORDER_KEY)
    except (DatasetError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{describe_path(path)}: not a dataset.json with labels") from None
    try:
        regions = region_scheme(labels, order)
    except (RegionError, TypeError) as exc:
        raise DatasetError(str(exc)) from None
    ignore = {IGNORE_LABEL: regions.ignore_value} if regions.ignore_value is not None else {}
    return {**regions.output_labels, **ignore}, regions


def dataset_summary(dataset_dir: str) -> str:
    """One line for the Training tab: the dataset's structures (or regions), "" when it is not readable."""
    if not dataset_dir:
        return ""
    try:
        labels, regions = read_dataset_regions(dataset_dir)
    except DatasetError as exc:
        return f"Regions not usable: {exc}"
    except InputError:
        return ""
    sparse = " (sparse: some voxels marked 'ignore', not annotated)" if IGNORE_LABEL in labels else ""
    if regions is not None:
        return f"Regions ({len(regions.regions)}): {', '.join(regions.regions)}{sparse}"
    names = [name for name, value in sorted(labels.items(), key=lambda item: item[1])
             if value and name != IGNORE_LABEL]
    return f"Labels: {', '.join(names)}{sparse}" if names else ""
