"""Which images make up which case, and where each case's label map goes.

`masksam predict` accepts an image file (one case, one channel) or a folder. In a folder, files
named ``CASE_0000<ending>``, ``CASE_0001<ending>``, ... are the channels of case ``CASE`` (the
nnU-Net convention); a file without such a suffix is a one-channel case of its own name. For a
one-channel model, numbered scans without a ``_0000`` file among them (``amos_0001.nii.gz``,
``amos_0002.nii.gz``, as the AMOS release names them) are cases of their own names too: nnU-Net
channel files always start at ``_0000``, so they cannot be channels of one case ``amos``.
Prediction file names (``CASE<ending>``) follow nnU-Net, so `masksam evaluate` can pair them with
``labelsTs/CASE<ending>`` by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from MaskSAMCore.errors import InputError, describe_path

# Longest first, so that ".nii.gz" wins over ".gz".
IMAGE_ENDINGS = (".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".tif", ".tiff")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One image to segment: its channel files in channel order, and where its labels go."""

    name: str
    channel_files: Tuple[Path, ...]
    output_file: Path


def split_ending(path: "os.PathLike[str] | str") -> Tuple[str, str]:
    """(name without ending, ending) for a known image ending, else (name, "")."""
    name = Path(path).name
    for ending in IMAGE_ENDINGS:
        if name.lower().endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], name[-len(ending):]
    return name, ""


def case_name(path: "os.PathLike[str] | str") -> str:
    """The case of a one-channel image file: ``liver_007`` for ``liver_007_0000.nii.gz`` and for
    ``liver_007.nii.gz``; ``amos_0001`` for ``amos_0001.nii.gz`` (not channel 0, so not a suffix)."""
    stem, _ = split_ending(path)
    match = _CHANNEL_SUFFIX.match(stem)
    return match.group("case") if match and int(match.group("channel")) == 0 else stem


def find_cases(input_path: "os.PathLike[str] | str", output_path: "os.PathLike[str] | str",
               num_channels: int, output_ending: Optional[str] = None) -> List[Case]:
    """The cases to predict, with their output files; `InputError` for anything unusable.

    A single file is one case with one channel; its label map is written to `output_path`
    (or inside it, named after the case, when `output_path` is an existing folder or ends in a
    slash). A folder
    gives one case per ``CASE_XXXX`` group (or suffix-less file), written into the output folder.
    """
    source = Path(input_path)
    target = Path(output_path)
    if not source.exists():
        raise InputError(f"{describe_path(source)}: no such file or folder")
    if output_ending is not None and not output_ending.startswith("."):
        output_ending = "." + output_ending
    if output_ending is not None and output_ending.lower() not in IMAGE_ENDINGS:
        raise InputError(f"--output-ending {output_ending} is not an image file ending "
                         f"(known endings: {', '.join(IMAGE_ENDINGS)})")
    if source.is_file():
        if num_channels != 1:
            raise InputError(
                f"{describe_path(source)}: the model needs {num_channels} channels; give a folder with "
                f"{case_name(source)}_0000, ..._{num_channels - 1:04d} files")
        _, ending = split_ending(source)
        if not ending:
            raise InputError(f"{describe_path(source)}: not an image file (known endings: {', '.join(IMAGE_ENDINGS)})")
        # "out/" names a folder even before it exists (Path drops the slash, so look at the text)
        if target.is_dir() or str(output_path).endswith(("/", os.sep)):
            target = target / f"{case_name(source)}{output_ending or ending}"
        elif not split_ending(target)[1]:
            raise InputError(f"{describe_path(target)}: the output needs an image file ending such as .nii.gz "
                             f"(or end it with / to write into that folder)")
        return [Case(case_name(source), (source,), target)]
    if target.exists() and not target.is_dir():
        raise InputError(f"{describe_path(target)}: the input is a folder, so the output must be a folder too")
    if not target.exists() and split_ending(target)[1]:
        # Not a folder named labels.nii.gz holding the label maps where a file was meant.
        raise InputError(f"{describe_path(target)}: the input is a folder, so the output must be a folder too, "
                         f"not a file name ending in {split_ending(target)[1]}")
    return _cases_in_folder(source, target, num_channels, output_ending)


def _split_channel(stem: str) -> Tuple[str, int]:
    """(case, channel) of a file's name without ending by the nnU-Net suffix; channel 0 without one."""
    match = _CHANNEL_SUFFIX.match(stem)
    return (match.group("case"), int(match.group("channel"))) if match else (stem, 0)


def _group(images: List[Tuple[Path, str, str]],
           numbered: Set[str]) -> Tuple[Dict[str, Dict[int, Path]], Dict[str, str]]:
    """Channel files by case for images (path, stem, ending); a stem whose suffix names a case in
    `numbered` is a one-channel case of its own. Raises `InputError` for a channel given twice."""
    groups: Dict[str, Dict[int, Path]] = {}
    endings: Dict[str, str] = {}
    for path, stem, ending in images:
        name, channel = _split_channel(stem)
        if name in numbered:
            name, channel = stem, 0
        channels = groups.setdefault(name, {})
        if channel in channels:
            raise InputError(f"{describe_path(path)}: case {name} has channel {channel} twice "
                             f"(also {channels[channel].name})")
        channels[channel] = path
        endings.setdefault(name, ending)
    return groups, endings


def _list_suffixes(channels: Sequence[int], shown: int = 6) -> str:
    names = [f"_{c:04d}" for c in channels]
    return ", ".join(names if len(names) <= shown else names[:shown - 1] + [f"... ({len(names)} files)"])


def _cases_in_folder(folder: Path, target: Path, num_channels: int, output_ending: Optional[str]) -> List[Case]:
    images = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem, ending = split_ending(path)
        if ending:
            images.append((path, stem, ending))
    if not images:
        raise InputError(f"{describe_path(folder)}: no image files found (known endings: {', '.join(IMAGE_ENDINGS)})")
    numbered: Set[str] = set()
    if num_channels == 1:
        # amos_0001, amos_0002, ... without an amos_0000: numbered scans, each a case of its own
        # (nnU-Net's channel files always include _0000). With _0000 present they stay one
        # case, refused below: a multi-channel case given to a one-channel model.
        by_suffix: Dict[str, Set[int]] = {}
        for _, stem, _ in images:
            name, channel = _split_channel(stem)
            by_suffix.setdefault(name, set()).add(channel)
        numbered = {name for name, channels in by_suffix.items() if 0 not in channels}
    groups, endings = _group(images, numbered)
    cases = []
    for name, channels in groups.items():
        expected = list(range(num_channels))
        if sorted(channels) != expected:
            raise InputError(
                f"{describe_path(folder)}: case {name} has channel file(s) {_list_suffixes(sorted(channels))} but "
                f"the model needs {num_channels} ({_list_suffixes(expected)})")
        files = tuple(channels[c] for c in expected)
        cases.append(Case(name, files, target / f"{name}{output_ending or endings[name]}"))
    return cases
