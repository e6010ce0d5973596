"""A folder's image files grouped into cases by nnU-Net's channel suffix (``CASE_0000``, ``CASE_0001``).

See `cases` for the naming rules; this module only groups the files and checks that every case
has exactly the channels the model needs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple

from MaskSAMCore.errors import InputError, describe_path, raise_all

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_groups(images: List[Tuple[Path, str, str]], folder: Path,
                   num_channels: int) -> List[Tuple[str, Tuple[Path, ...], str]]:
    """(case name, its channel files in order, the ending of its first file) for the image files
    (path, name without ending, ending) directly inside `folder`. Raises `InputError` naming
    every case whose channels are not the model's `num_channels`."""
    numbered: Set[str] = set()
    if num_channels == 1:
        # amos_0001, amos_0002, ... without an amos_0000: numbered scans, each a case of its own
        # (nnU-Net's channel files always include _0000). With _0000 present they stay one
        # case, refused below: a multi-channel case given to a one-channel model.
        by_suffix: Dict[str, Set[int]] = {}
        for _, stem, _ in images:
            name, channel = split_channel(stem)
            by_suffix.setdefault(name, set()).add(channel)
        numbered = {name for name, channels in by_suffix.items() if 0 not in channels}
    groups, endings = _group(images, numbered)
    _check_channel_files(groups, folder, num_channels)
    return [(name, tuple(channels[c] for c in range(num_channels)), endings[name])
            for name, channels in groups.items()]


def split_channel(stem: str) -> Tuple[str, int]:
    """(case, channel) of a file's name without ending by the nnU-Net suffix; channel 0 without one."""
    match = CHANNEL_SUFFIX.match(stem)
    return (match.group("case"), int(match.group("channel"))) if match else (stem, 0)


def _group(images: List[Tuple[Path, str, str]],
           numbered: Set[str]) -> Tuple[Dict[str, Dict[int, Path]], Dict[str, str]]:
    """Channel files by case for images (path, stem, ending); a stem whose suffix names a case in
    `numbered` is a one-channel case of its own. Raises `InputError` for a channel given twice."""
    groups: Dict[str, Dict[int, Path]] = {}
    endings: Dict[str, str] = {}
    for path, stem, ending in images:
        name, channel = split_channel(stem)
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


def _check_channel_files(groups: Dict[str, Dict[int, Path]], folder: Path, num_channels: int) -> None:
    """Refuse the cases of `folder` whose channel files are not _0000 .. the model's last, every
    one of them in one line (as `raise_all` names a cohort's bad subfolders), so a user moves or
    renames them all before the next run instead of meeting them one run at a time."""
    expected = list(range(num_channels))
    errors = [f"case {name} has channel file(s) {_list_suffixes(sorted(channels))} but the model needs "
              f"{num_channels} ({_list_suffixes(expected)})"
              for name, channels in groups.items() if sorted(channels) != expected]
    if len(errors) == 1:
        raise InputError(f"{describe_path(folder)}: {errors[0]}")
    raise_all([InputError(error) for error in errors], len(groups),
              f"cases in {describe_path(folder)} cannot be segmented")
