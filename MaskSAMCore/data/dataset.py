"""Datasets in nnU-Net v2 raw format, checked completely before any work starts.

A dataset folder holds ``dataset.json``, ``imagesTr/CASE_0000<ending>`` (one file per channel,
``_0000``, ``_0001``, ...), ``labelsTr/CASE<ending>`` and optionally ``imagesTs/`` (and
``labelsTs/``). `load_raw_dataset` reads dataset.json, pairs the files and then opens every
training image and label to check that they can be used together: one `DatasetError` line naming
the case and the problem otherwise, so a researcher learns about a broken case in seconds and not
after hours of preprocessing.

A ``numTraining`` in dataset.json that differs from the number of cases found is an error, as in
nnU-Net: it usually means files went missing or dataset.json is stale. So are a constant image
and a dataset without any foreground label; a declared label no case holds is only warned about.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from MaskSAMCore.data.dataset_json import DATASET_JSON, read_dataset_json
from MaskSAMCore.data.image_io import ImageGeometry, read_image
from MaskSAMCore.data.regions import RegionScheme
from MaskSAMCore.data.nifti_transforms import placement_warning
from MaskSAMCore.data.normalization import AIR_HU, NOT_HOUNSFIELD_CAUSES, cannot_be_hounsfield, is_ct
from MaskSAMCore.data.store import STORE_SUFFIXES
from MaskSAMCore.data.slicer_segmentation import SEGMENTATION_ENDING, dataset_label_names, read_dataset_label
from MaskSAMCore.errors import DatasetError, InputError, describe_path, list_some, value_runs
from MaskSAMCore.progress import Progress, print_warning

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class RawCase:
    """One case: its channel files in channel order and its label map (None for unlabelled test cases)."""

    name: str
    image_files: Tuple[Path, ...]
    label_file: Optional[Path]


@dataclass
class RawDataset:
    """A validated nnU-Net v2 raw dataset."""

    root: Path
    name: str
    labels: Dict[str, int]                 # class name -> value, ordered by value, background = 0
    channel_names: Dict[str, str]          # "0" -> "CT", ...
    file_ending: str
    num_training: int
    training_cases: List[RawCase]
    test_cases: List[RawCase] = field(default_factory=list)
    geometries: Dict[str, ImageGeometry] = field(default_factory=dict)  # per training case, when checked
    metadata: Dict[str, object] = field(default_factory=dict)           # dataset.json as read
    ignore_label: Optional[int] = None     # value of unannotated voxels (nnU-Net's "ignore"), not a class
    regions: Optional[RegionScheme] = None  # region labels (classes are then groups of label values)

    @property
    def class_values(self) -> Dict[str, Tuple[int, ...]]:
        """Class name -> the label values of the label maps that make the class."""
        if self.regions is not None:
            return dict(self.regions.classes)
        return {name: (value,) for name, value in self.labels.items()}

    def read_label(self, path: Path) -> Tuple[np.ndarray, ImageGeometry]:
        """One of the dataset's label maps (z, y, x); one saved by 3D Slicer as a segmentation is
        renumbered to the dataset's values by its segments' names (`read_dataset_label`)."""
        return read_dataset_label(path, dataset_label_names(self.labels, self.ignore_label, self.regions is not None))

    @property
    def class_names(self) -> List[str]:
        """Names in label-value order: class_names[v] is the name of label value v."""
        return list(self.labels)

    @property
    def num_classes(self) -> int:
        """K, background included."""
        return len(self.labels)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def channel_list(self) -> List[str]:
        """Channel names in channel order."""
        return [self.channel_names[str(i)] for i in range(self.num_channels)]

    @property
    def modality(self) -> str:
        """"CT" when every channel is CT, else the channel names joined by '+' (e.g. "T2+ADC")."""
        names = [("CT" if n.strip().lower() == "ct" else n.strip()) for n in self.channel_list]
        unique = list(dict.fromkeys(names))
        return "+".join(unique)

    def case(self, name: str) -> RawCase:
        for case in self.training_cases:
            if case.name == name:
                return case
        raise KeyError(name)


def load_raw_dataset(root: "os.PathLike[str] | str", check_images: bool = True,
                     progress: bool = True, warn: Optional[bool] = None) -> RawDataset:
    """Read and validate a dataset folder. With `check_images` every training image and label
    is opened (see the module docstring for what is checked); raises `DatasetError`. Warnings
    are printed on stderr when `warn`, by default when `progress` is on (so that of a distributed
    training only the main process prints them)."""
    root = Path(root)
    if root.is_file():
        hint = f"; give its folder, {describe_path(root.parent)}" if root.name == DATASET_JSON else ""
        raise DatasetError(f"{describe_path(root)}: is a file, not a dataset folder{hint}")
    if not root.is_dir():
        raise DatasetError(f"{describe_path(root)}: dataset folder not found")
    description = read_dataset_json(root)
    labels, channel_names, file_ending = description.labels, description.channel_names, description.file_ending
    num_training, meta = description.num_training, description.metadata

    training = _find_training_cases(root, file_ending, len(channel_names))
    if not training:
        raise DatasetError(f"{describe_path(root)}: no training cases in imagesTr "
                           f"(expected files named CASE_0000{file_ending})"
                           f"{_ending_hint(root / 'imagesTr', file_ending)}")
    if num_training != len(training):
        raise DatasetError(f"{describe_path(root / DATASET_JSON)}: numTraining is {num_training} but imagesTr holds "
                           f"{len(training)} case(s); fix numTraining or add the missing cases")
    test = _find_test_cases(root, file_ending, len(channel_names))
    dataset = RawDataset(
        root=root, name=str(meta.get("name") or root.name), labels=labels, channel_names=channel_names,
        file_ending=file_ending, num_training=num_training, training_cases=training, test_cases=test,
        metadata=meta, ignore_label=description.ignore_label, regions=description.regions,
    )
    if check_images:
        check_case_files(dataset, progress=progress, warn=progress if warn is None else warn)
    return dataset


def check_case_files(dataset: RawDataset, progress: bool = True, warn: bool = True) -> None:
    """Open every training case and check images and labels (see module docstring); fills
    `dataset.geometries`. Raises `DatasetError` for the first broken case."""
    allowed = {value for values in dataset.class_values.values() for value in values}
    if dataset.ignore_label is not None:
        allowed.add(dataset.ignore_label)
    present: Set[int] = set()
    bar = Progress("check dataset", total=len(dataset.training_cases), unit="case", enabled=progress)
    misplaced: List[Tuple[str, str]] = []   # (case, why other programs place its image elsewhere)
    not_hounsfield: List[Tuple[str, float]] = []   # (case, its CT channel's darkest voxel)
    for case in dataset.training_cases:
        dataset.geometries[case.name], values, darkest_ct = _check_case(dataset, case, allowed)
        present |= values
        if darkest_ct is not None and cannot_be_hounsfield(darkest_ct):
            not_hounsfield.append((case.name, darkest_ct))
        warning = placement_warning(case.image_files[0], dataset.geometries[case.name])
        if warning:
            misplaced.append((case.name, warning))
        bar.advance()
    bar.close()
    if misplaced and warn:
        print_warning(f"{describe_path(dataset.root)}: the NIfTI header of {len(misplaced)} case(s) "
                      f"({list_some(name for name, _ in misplaced)}) is ambiguous: {misplaced[0][1]}")
    if not_hounsfield and warn:
        print_warning(f"{describe_path(dataset.root)}: the CT image of {len(not_hounsfield)} case(s) "
                      f"({list_some(f'{name}: {value:g}' for name, value in not_hounsfield)}) has no voxel "
                      f"darker than {AIR_HU:g} HU, where air lies: not Hounsfield units ({NOT_HOUNSFIELD_CAUSES}); "
                      "the CT normalisation pools every case's values, so these cases are learnt on another scale")
    _check_labels_present(dataset, present, warn)


def _check_labels_present(dataset: RawDataset, present: Set[int], warn: bool) -> None:
    """Refuse label maps without any foreground: training would run for hours and learn to
    predict background everywhere. Warn about declared labels no case holds: the model keeps an
    output for them but can never learn it."""
    if not present - {0, dataset.ignore_label}:
        # Name what the voxels are: "background" for a dataset of unannotated voxels sends the user astray.
        found = [what for value, what in ((0, "background 0"),
                                          (dataset.ignore_label, f"unannotated ('ignore' {dataset.ignore_label})"))
                 if value in present]
        raise DatasetError(f"{describe_path(dataset.root)}: no label map in labelsTr holds any structure "
                           f"(every voxel is {' or '.join(found) or 'background 0'}); there is nothing to learn")
    absent = [f"'{name}' ({', '.join(map(str, values))})" for name, values in dataset.class_values.items()
              if values != (0,) and not set(values) & present]
    if absent and warn:
        shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
        print_warning(f"{describe_path(dataset.root)}: label(s) {shown} declared in dataset.json appear in no "
                      "training case; the model cannot learn to segment them")


# -- finding the files ---------------------------------------------------------------------------

def _channel_files(images: Path, ending: str) -> Tuple[Dict[str, Dict[int, Path]], List[Path]]:
    """The image files in `images`: {case: {channel: file}}, and the files without a channel number."""
    channels: Dict[str, Dict[int, Path]] = {}
    unnumbered: List[Path] = []
    for path in sorted(images.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending) or not path.is_file():
            continue  # hidden files, temporaries and unrelated files (README, ...) are not cases
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            unnumbered.append(path)
        else:
            channels.setdefault(match["case"], {})[int(match["channel"])] = path
    return channels, unnumbered


def _channel_problem(name: str, files: Dict[int, Path], num_channels: int, images_dir: str,
                     ending: str) -> Optional[str]:
    """What is wrong with the channel files of case `name` (a missing or an extra one), or None."""
    for index in range(num_channels):
        if index not in files:
            return f"missing channel file {images_dir}/{name}_{index:04d}{ending}"
    extra = sorted(set(files) - set(range(num_channels)))
    if extra:
        return (f"unexpected channel file {images_dir}/{files[extra[0]].name} (dataset.json declares "
                f"{num_channels} channel(s))")
    return None


def _find_training_cases(root: Path, ending: str, num_channels: int) -> List[RawCase]:
    """The cases of imagesTr/ with their labels in labelsTr/; any file that does not fit is an error."""
    if not (root / "imagesTr").is_dir():
        raise DatasetError(f"{describe_path(root)}: no imagesTr/ folder")
    for folder in ("imagesTr", "labelsTr"):
        _refuse_folders_named_as_files(root, folder, ending)
    channels, unnumbered = _channel_files(root / "imagesTr", ending)
    if unnumbered:
        raise DatasetError(f"{describe_path(root)}: imagesTr/{unnumbered[0].name} does not end in a channel "
                           f"number (expected CASE_0000{ending})")
    cases = []
    for name in sorted(channels):
        problem = _channel_problem(name, channels[name], num_channels, "imagesTr", ending)
        if problem:
            raise DatasetError(f"{describe_path(root)}: case '{name}': {problem}")
        label = _label_file(root, "labelsTr", name, ending)
        if label is None:
            raise DatasetError(f"{describe_path(root)}: case '{name}': missing label file labelsTr/{name}{ending}")
        cases.append(RawCase(name, tuple(channels[name][i] for i in range(num_channels)), label))
    _check_names_apart(root, sorted(channels))

    if (root / "labelsTr").is_dir():
        for path in sorted((root / "labelsTr").iterdir()):
            if path.name.startswith(".") or not path.name.endswith(ending):
                continue
            name = _case_of_label(path.name, ending)
            if name not in channels:
                raise DatasetError(f"{describe_path(root)}: case '{name}': labelsTr/{path.name} has no "
                                   f"image files in imagesTr/ (expected {name}_0000{ending})")
    return cases


def _refuse_folders_named_as_files(root: Path, folder: str, ending: str) -> None:
    """A folder with an image file's name (an archive unpacked in place, a converter's output
    folder) would otherwise be passed over, and its case called missing."""
    if not (root / folder).is_dir():
        return
    for path in sorted((root / folder).iterdir()):
        if path.name.endswith(ending) and not path.name.startswith(".") and path.is_dir():
            raise DatasetError(f"{describe_path(root)}: {folder}/{path.name} is a folder, not an image file; "
                               "put the image file itself there")


def _check_names_apart(root: Path, names: List[str]) -> None:
    """Preprocessing stores case X as X.npy, X_seg.npy and X_locations.npy (nnU-Net's layout):
    cases X and X_seg would share X_seg.npy, and one would train on the other's labels."""
    for name in names:
        for suffix in STORE_SUFFIXES:
            if f"{name}{suffix}" in names:
                raise DatasetError(f"{describe_path(root)}: cases '{name}' and '{name}{suffix}' would share the "
                                   f"preprocessed file {name}{suffix}.npy; rename case '{name}{suffix}'")


def _find_test_cases(root: Path, ending: str, num_channels: int) -> List[RawCase]:
    """The cases of imagesTs/ laid out like imagesTr/ (their labelsTs/ files where present).

    Files that do not fit are left out without a word rather than refused: training never reads
    imagesTs/, and `masksam predict`, which does, has its own rules (a file without a channel
    number is a one-channel case of its own there) and names any problem when it is run."""
    if not (root / "imagesTs").is_dir():
        return []
    channels, _ = _channel_files(root / "imagesTs", ending)
    cases = []
    for name in sorted(channels):
        if _channel_problem(name, channels[name], num_channels, "imagesTs", ending) is None:
            try:
                label = _label_file(root, "labelsTs", name, ending)
            except DatasetError:   # two label files: which one is the truth is for evaluate to ask
                label = None
            cases.append(RawCase(name, tuple(channels[name][i] for i in range(num_channels)), label))
    return cases


def _label_file(root: Path, folder: str, name: str, ending: str) -> Optional[Path]:
    """``folder/CASE<ending>``, or for an NRRD dataset the segmentation 3D Slicer saved for the
    case (``CASE.seg.nrrd``, read by its segments' names); None when there is neither."""
    plain = root / folder / f"{name}{ending}"
    segmentation = root / folder / f"{name}{SEGMENTATION_ENDING}"
    if ending != ".nrrd" or not segmentation.is_file():
        return plain if plain.is_file() else None
    if plain.is_file():
        raise DatasetError(f"{describe_path(root)}: case '{name}' has two label files, {folder}/{plain.name} and "
                           f"{folder}/{segmentation.name}; keep one")
    return segmentation


def _case_of_label(file_name: str, ending: str) -> str:
    """The case a label file belongs to (``CASE`` for ``CASE.nrrd`` and ``CASE.seg.nrrd``)."""
    if ending == ".nrrd" and file_name.endswith(SEGMENTATION_ENDING):
        return file_name[: -len(SEGMENTATION_ENDING)]
    return file_name[: -len(ending)]


def _ending_hint(folder: Path, ending: str) -> str:
    """A hint when the folder holds images with another ending than dataset.json says."""
    if not folder.is_dir():
        return ""
    others = sorted({"".join(p.suffixes) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")})
    others = [o for o in others if o and o != ending]
    if others:
        return f"; found files ending in {', '.join(others[:3])} - is file_ending in dataset.json right?"
    return ""


# -- checking the content --------------------------------------------------------------------------

def _check_case(dataset: RawDataset, case: RawCase,
                allowed: Set[int]) -> Tuple[ImageGeometry, Set[int], Optional[float]]:
    """Open one case's files; returns the grid of its image, the values in its label map and the
    darkest voxel of its CT channel(s) (None without one)."""
    root = dataset.root
    prefix = f"{describe_path(root)}: case '{case.name}'"

    def short(path: Path) -> str:
        return os.path.relpath(path, root)

    reference: Optional[ImageGeometry] = None
    darkest_ct: Optional[float] = None
    for index, path in enumerate(case.image_files):
        try:
            image, geometry = read_image(path)
        except InputError as exc:
            raise DatasetError(f"{prefix}: {_relative_message(exc, path, short(path))}") from None
        low, high = float(image.min()), float(image.max())
        if low == high:   # worded as prediction refuses such an image (inference/input_checks.py)
            raise DatasetError(f"{prefix}: {short(path)}: the image is constant (every voxel is {low:g}); "
                               "there is nothing to segment in it")
        if is_ct(dataset.channel_list[index]):
            darkest_ct = low if darkest_ct is None else min(darkest_ct, low)
        if reference is None:
            reference = geometry
            continue
        differences = reference.grid_differences(geometry)
        if differences:
            raise DatasetError(f"{prefix}: channel {index:04d} ({short(path)}) is not on the grid of channel 0000: "
                               f"{_difference_text(differences, geometry, reference)}")
    assert reference is not None and case.label_file is not None
    try:
        label, label_geometry = dataset.read_label(case.label_file)
    except InputError as exc:
        raise DatasetError(f"{prefix}: {_relative_message(exc, case.label_file, short(case.label_file))}") from None
    differences = reference.grid_differences(label_geometry)
    if differences:
        ambiguous = placement_warning(case.image_files[0], reference)
        raise DatasetError(f"{prefix}: label {short(case.label_file)} is not on the image's grid: "
                           f"{_difference_text(differences, label_geometry, reference)}"
                           + (f" (note: the image's {ambiguous.replace('its ', '', 1)})" if ambiguous else ""))
    values = set(np.unique(label).tolist())
    undeclared = sorted(values - allowed)
    if undeclared:
        shown = list_some(undeclared, shown=5)
        raise DatasetError(f"{prefix}: label {short(case.label_file)} has value(s) {shown} not declared in "
                           f"dataset.json labels (declared: {value_runs(allowed)})")
    return reference, values, darkest_ct


def _relative_message(exc: InputError, path: Path, short: str) -> str:
    return str(exc).replace(describe_path(path), short)


def _difference_text(differences: List[str], this: ImageGeometry, reference: ImageGeometry) -> str:
    parts = []
    for name in differences:
        mine, theirs = getattr(this, name), getattr(reference, name)
        if name == "direction":
            parts.append("direction differs")
        else:
            fmt = (lambda v: "x".join(f"{x:.6g}" for x in v))
            parts.append(f"{name} {fmt(mine)} vs {fmt(theirs)}")
    return "; ".join(parts)
