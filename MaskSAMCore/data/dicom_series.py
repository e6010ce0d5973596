"""A folder of DICOM slices as one 3D image: finding its series, checking its geometry, reading it.

`masksam predict MODEL FOLDER OUT` accepts a folder holding the single-frame slices of a CT or MR
series (as a PACS or scanner exports them). Only the headers are read to find the series and
check that its slices make one regular volume; the voxels are read later with SimpleITK's series
reader (GDCM), which applies each slice's rescale slope and intercept (CT slices become HU).

DICOM stores each slice's position and orientation in the patient's LPS coordinates, so the
volume's grid follows from them: origin = the position of the first slice along the slice
normal (row direction x column direction), in-plane spacing and directions from the slices,
slice spacing from the distance between neighbouring positions. Three kinds of series look like
a volume but are not one, and would be segmented on a wrong grid without any error, so they are
refused with what to do instead:

- slices at uneven distances (a missing slice, or a series mixing thicknesses),
- several slices at one position (echoes, phases or time points kept in one series),
- slices shifted sideways unevenly (an evenly tilted stack, a CT gantry tilt, is a sheared
  grid: kept as it is, with the slice axis leaning from the normal, and `tilt_degrees` set).

Multi-frame (enhanced) DICOM files - a series in one file, or spread over a few - are read frame
by frame (`dicom_frames`), each frame checked as a slice. A series mixing multi-frame and classic
files is refused, as are slices without a pixel spacing, copies of one file, native files too
small for their pixels (`dicom_headers`), and files naming the series that cannot be read at
all. Objects that are no image (SEG, SR, RT objects; `dicom_headers.NON_IMAGE_MODALITIES`) are
never a series; the series keeps them to be named, as it keeps the names of localizer images
left out of its own stack (`MAX_LOCALIZERS`).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from MaskSAMCore.data.dicom_frames import read_frames
from MaskSAMCore.data.dicom_headers import DicomSlice, FolderHeaders, dicom_files, read_series_headers
from MaskSAMCore.data.dicom_stack import SIDEWAYS_TOLERANCE_PIXELS, stack_lean, uneven_steps, widest_step
from MaskSAMCore.data.pydicom_reading import compression_name
from MaskSAMCore.data.read_failures import itk_warnings_off
from MaskSAMCore.errors import InputError, describe_path, last_line, list_some

# How far two slices' direction cosines may differ and the slices still share one orientation
# (exporters write them rounded, or with float noise that differs from slice to slice).
ORIENTATION_TOLERANCE = 1e-4
# Some scanners keep a few localizer images (another orientation) in the scan's own series. Up to
# this many, beside a stack at least twice as large, are left out and named (3D Slicer's DICOM
# import and dcm2niix split such a series by orientation too); more, and the series is refused.
MAX_LOCALIZERS = 3


@dataclass(frozen=True)
class DicomSeries:
    """One image series of a folder: its files in slice order and the grid they make."""

    folder: Path
    uid: str
    number: str
    description: str
    modality: str
    files: Tuple[Path, ...]
    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]
    left_out: Tuple[Path, ...] = ()   # files of the folder that cannot be read
    not_images: Tuple[Tuple[Path, str], ...] = ()   # (file, Modality): SEG, SR, RTSTRUCT, ... of the folder
    other_series: Tuple[str, ...] = ()   # the folder's series that form no volume, each with why (left out)
    localizers: Tuple[str, ...] = ()   # images of the series in another orientation, left out (names)
    tilt_degrees: float = 0.0   # CT gantry tilt: the slice axis leans from the normal (a sheared grid)
    # For multi-frame files: slice k is frame frames[k] (0-based) of files[k]; () for classic files.
    frames: Tuple[int, ...] = ()

    def __str__(self) -> str:
        return describe_series(self.folder, self.number, self.description)

    @property
    def distinct_files(self) -> Tuple[Path, ...]:
        """The files the series reads, each once (a multi-frame file holds many slices)."""
        return tuple(dict.fromkeys(self.files))

    @property
    def label(self) -> str:
        """``3 'AX ABD'``: its number and description."""
        return _label(self.number, self.description)

    @property
    def plane_spacing(self) -> float:
        """mm between the slices' planes (DICOM's Spacing Between Slices): the grid's slice step,
        shortened by a gantry tilt's lean."""
        return self.spacing[2] * math.cos(math.radians(self.tilt_degrees))

    @property
    def slices_described(self) -> str:
        """``120 slices`` or ``120 frames of 1 multi-frame (enhanced) file``."""
        if not self.frames:
            return f"{len(self.files)} slices"
        files = len(self.distinct_files)
        return f"{len(self.files)} frames of {files} multi-frame (enhanced) file{'s' if files > 1 else ''}"


def describe_series(folder: Path, number: str, description: str) -> str:
    """How messages name a series: ``~/scans/ct (DICOM series 3 'AX ABD')``."""
    return f"{describe_path(folder)} (DICOM series {_label(number, description)})"


def _label(number: str, description: str) -> str:
    return f"{number or '?'}" + (f" '{description}'" if description else "")


def _summary(slices: List[DicomSlice], with_uid: bool = False) -> str:
    """``3 'AX ABD' (CT, 120 files)``: how a list of a folder's series names one; `with_uid` adds
    its Series Instance UID (``..., UID 1.2.3``)."""
    first, files = slices[0], len({piece.path for piece in slices})
    frames = f", {len(slices)} frames" if first.frame is not None else ""
    uid = f", UID {first.series_uid}" if with_uid else ""
    return (f"{_label(first.series_number, first.description)} ({first.modality or '?'}, "
            f"{files} file{'s' if files > 1 else ''}{frames}{uid})")


def _listed(series: Dict[str, List[DicomSlice]]) -> str:
    """The series for a user to choose from with --series: a series whose number another one
    shares, or that has none, can only be chosen by its UID, so it is listed with it."""
    numbers = Counter(slices[0].series_number for slices in series.values())
    return "; ".join(_summary(s, with_uid=not s[0].series_number or numbers[s[0].series_number] > 1)
                     for s in series.values())


def _choice_needed(folder: Path, series: Dict[str, List[DicomSlice]]) -> InputError:
    return InputError(f"{describe_path(folder)}: holds {len(series)} DICOM image series: {_listed(series)}; "
                      "choose one with --series NUMBER (or its Series Instance UID)")


def choose_series(folder: Path, series: Dict[str, List[DicomSlice]], choice: Optional[str]) -> List[DicomSlice]:
    """The slices of the series to segment: the only one, or the one `choice` names (its Series
    Number or Series Instance UID)."""
    if choice is None:
        if len(series) == 1:
            return next(iter(series.values()))
        raise _choice_needed(folder, series)
    if choice in series:
        return series[choice]
    matches = [s for s in series.values() if s[0].series_number == choice]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InputError(f"{describe_path(folder)}: {len(matches)} series have the number {choice}; "
                         f"give the Series Instance UID instead ({', '.join(s[0].series_uid for s in matches)})")
    raise InputError(f"{describe_path(folder)}: no DICOM series with the number or UID {choice} "
                     f"(found: {_listed(series)})")


def series_grid(folder: Path, slices: List[DicomSlice], left_out: Sequence[Path] = (),
                not_images: Sequence[Tuple[Path, str]] = (), damaged: Sequence[Path] = ()) -> DicomSeries:
    """Check that `slices` make one regular volume (a straight or evenly tilted stack) and return
    it with its grid.
    `left_out`: files of the folder that cannot be read, named when a slice seems to be missing;
    `not_images`: the folder's non-image objects, kept to be reported; `damaged`: unreadable files
    that name this series, which make it incomplete. A few images in another orientation beside
    the stack are left out as localizers when the stack alone is a volume."""
    if damaged:
        # Named first: at either end of the stack it leaves no gap, and inside it a gap seems to
        # be a missing slice when the slice is there, damaged.
        first = slices[0]
        others = f" (and {len(damaged) - 1} more: {list_some(p.name for p in damaged[1:])})" if len(damaged) > 1 else ""
        raise InputError(f"{describe_series(folder, first.series_number, first.description)}: {damaged[0].name}: "
                         f"a damaged slice of this series{others} (its header names the series, but it cannot be "
                         "read as an image: cut short or corrupt); copy or export the series again")
    stack, localizers = _without_localizers(slices)
    if localizers:
        try:
            return replace(_checked_grid(folder, stack, left_out, not_images),
                           localizers=tuple(piece.name for piece in localizers))
        except InputError:
            pass   # an odd slice inside the stack rather than a localizer: the whole series' own error
    return _checked_grid(folder, slices, left_out, not_images)


def _checked_grid(folder: Path, slices: List[DicomSlice], left_out: Sequence[Path],
                  not_images: Sequence[Tuple[Path, str]]) -> DicomSeries:
    first = slices[0]
    name = describe_series(folder, first.series_number, first.description)
    for piece in slices:
        if piece.problem:
            raise InputError(f"{name}: {piece.name} {piece.problem}")
    framed = [piece for piece in slices if piece.frame is not None]
    if framed and len(framed) < len(slices):
        classic = next(piece for piece in slices if piece.frame is None)
        raise InputError(f"{name}: mixes multi-frame files ({framed[0].path.name}) and single-frame ones "
                         f"({classic.path.name}); export the series again as one kind")
    for other in slices[1:]:
        problem = _slice_mismatch(first, other)
        if problem:
            raise InputError(f"{name}: {other.name} {problem} from {first.name}; "
                             "the series does not form one volume")
    copies = _copies(slices)
    if copies:
        raise InputError(f"{name}: {copies[1]} and {copies[0]} are the same image (one Instance UID); "
                         "remove the copy")
    if len(slices) < 2:
        raise InputError(f"{name}: has a single slice, a 2D image; a 3D volume is needed")
    row, column = np.asarray(first.row_direction), np.asarray(first.column_direction)
    normal = np.cross(row, column)
    positions = np.asarray([s.origin for s in slices], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    steps = np.diff(along)
    shared = steps < 1e-3
    if shared.any():
        sharing = int(np.count_nonzero(np.concatenate([shared, [False]]) | np.concatenate([[False], shared])))
        at = slices[int(order[int(np.argmax(shared)) + 1])].name
        raise InputError(f"{name}: {sharing} of its {len(slices)} slices share a position with another (e.g. {at}): "
                         "the series holds several echoes, phases or time points; export one of them as its own "
                         "series")
    # The grid's step from the first slice to the last: rounding in single positions averages out.
    step = float((along[-1] - along[0]) / (len(along) - 1))
    if uneven_steps(along, step):
        unreadable = list_some(p.name for p in left_out)
        damaged = f"; {len(left_out)} file(s) of the folder cannot be read ({unreadable})" if left_out else ""
        raise InputError(f"{name}: the slice spacing varies from {steps.min():.4g} to {steps.max():.4g} mm, "
                         f"{widest_step([slices[int(i)].name for i in order], along)}{damaged}; "
                         "a regular volume is needed")
    lean = stack_lean(name, positions, along, normal, SIDEWAYS_TOLERANCE_PIXELS * min(first.spacing))
    # The slice axis runs from one slice's first voxel to the next: along the normal, leaning
    # with a gantry tilt (a sheared grid: NRRD, MetaImage and DICOM SEG keep it, NIfTI cannot).
    axis = normal + lean
    direction = np.stack([row, column, axis / np.linalg.norm(axis)], axis=1)
    return DicomSeries(
        folder=folder, uid=first.series_uid, number=first.series_number, description=first.description,
        modality=first.modality, files=tuple(slices[int(i)].path for i in order),
        frames=tuple(int(slices[int(i)].frame) for i in order) if framed else (),
        size=(*first.columns_rows, len(slices)), spacing=(*first.spacing, step * float(np.linalg.norm(axis))),
        origin=tuple(float(v) for v in positions[0]), direction=tuple(float(v) for v in direction.ravel()),
        left_out=tuple(left_out), not_images=tuple(not_images),
        tilt_degrees=math.degrees(math.atan(float(np.linalg.norm(lean)))))


def _without_localizers(slices: List[DicomSlice]) -> Tuple[List[DicomSlice], List[DicomSlice]]:
    """(the stack, the localizers): a series' images grouped by orientation, where one group is
    the stack and the others hold at most `MAX_LOCALIZERS` images; else (all images, none), and
    the orientation check names the mismatch."""
    groups: List[List[DicomSlice]] = []
    for piece in slices:
        group = next((g for g in groups if _same_orientation(g[0], piece)), None)
        if group is None:
            groups.append([piece])
        else:
            group.append(piece)
    if len(groups) == 1:
        return slices, []
    stack = max(groups, key=len)
    others = [piece for group in groups if group is not stack for piece in group]
    # An image with a problem of its own (no orientation read as the axial default) is no localizer.
    if len(others) > MAX_LOCALIZERS or len(stack) < 2 * len(others) or any(piece.problem for piece in others):
        return slices, []
    return stack, others


def _copies(slices: List[DicomSlice]) -> Optional[Tuple[str, str]]:
    """The names of two slices holding the same image (a file copied under another name), if any."""
    seen: Dict[Tuple[str, Optional[int]], str] = {}
    for piece in slices:
        if not piece.instance_uid:
            continue
        key = (piece.instance_uid, piece.frame)   # the frames of one file share its Instance UID
        if key in seen:
            return seen[key], piece.name
        seen[key] = piece.name
    return None


def _slice_mismatch(first: DicomSlice, other: DicomSlice) -> Optional[str]:
    if other.columns_rows != first.columns_rows:
        return "has another image size"
    if not np.allclose(other.spacing, first.spacing, rtol=1e-4, atol=1e-6):
        return "has another pixel spacing"
    if not _same_orientation(first, other):
        return "has another orientation"
    return None


def _same_orientation(first: DicomSlice, other: DicomSlice) -> bool:
    return (np.allclose(other.row_direction, first.row_direction, atol=ORIENTATION_TOLERANCE)
            and np.allclose(other.column_direction, first.column_direction, atol=ORIENTATION_TOLERANCE))


def find_series(folder: "os.PathLike[str] | str", choice: Optional[str] = None) -> DicomSeries:
    """The checked image series of a folder of DICOM files (`choice`: Series Number or UID when
    the folder holds several). Raises `InputError` naming the folder for anything unusable."""
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise InputError(f"{describe_path(folder)}: holds no DICOM files")
    found = read_series_headers(folder, files)
    if choice is None and len(found.series) > 1:
        return _the_only_volume(folder, found)
    slices = choose_series(folder, found.series, choice)
    return series_grid(folder, slices, found.unreadable, found.not_images, found.damaged.get(slices[0].series_uid, ()))


def every_volume(folder: "os.PathLike[str] | str") -> Tuple[List[DicomSeries], List[str]]:
    """Every image series of a folder of DICOM files that forms a volume, and the others, each
    named with why it does not (``1 'Topogram' (CT, 2 files): s1.dcm has another orientation ...``)."""
    folder = Path(folder)
    return _volumes(folder, read_series_headers(folder, dicom_files(folder)))


def _volumes(folder: Path, found: FolderHeaders) -> Tuple[List[DicomSeries], List[str]]:
    volumes, others = [], []
    for slices in found.series.values():
        try:
            volumes.append(series_grid(folder, slices, found.unreadable, found.not_images,
                                       found.damaged.get(slices[0].series_uid, ())))
        except InputError as error:
            prefix = f"{describe_series(folder, slices[0].series_number, slices[0].description)}: "
            others.append(f"{_summary(slices)}: {str(error).removeprefix(prefix)}")
    return volumes, others


def _the_only_volume(folder: Path, found: FolderHeaders) -> DicomSeries:
    """Without a choice, a folder of several series is segmented when exactly one of them forms a
    volume: a study exported whole keeps its scouts (one or two projections) and secondary
    captures beside the scan, and those can never be segmented. Two volumes or more (phases,
    reconstructions) stay the user's choice; the series left out are kept to be named."""
    volumes, others = _volumes(folder, found)
    if len(volumes) == 1:
        return replace(volumes[0], other_series=tuple(others))
    if not volumes:
        raise InputError(f"{describe_path(folder)}: none of its {len(others)} DICOM image series forms one volume: "
                         + "; ".join(others))
    raise _choice_needed(folder, found.series)


def read_series(series: DicomSeries) -> sitk.Image:
    """The series' voxels as a float32 image on the grid the headers describe."""
    image = sitk.GetImageFromArray(read_frames(series)) if series.frames else _read_slices(series)
    # The grid from the headers, checked above, rather than the reader's own estimate.
    image.SetSpacing(series.spacing)
    image.SetOrigin(series.origin)
    image.SetDirection(series.direction)
    return image


def _read_slices(series: DicomSeries) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    reader.SetImageIO("GDCMImageIO")
    reader.SetOutputPixelType(sitk.sitkFloat32)   # per-slice rescale slopes may differ
    # ITK warns on stderr about slice spacing it finds uneven; the grid is checked (and set) here.
    try:
        with itk_warnings_off():
            image = reader.Execute()
    except RuntimeError:
        raise InputError(f"{series}: {_unreadable_slice(series)}") from None
    if tuple(image.GetSize()) != series.size or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{series}: its voxels read as size {'x'.join(map(str, image.GetSize()))} with "
                         f"{image.GetNumberOfComponentsPerPixel()} value(s) per voxel; a scalar "
                         f"{'x'.join(map(str, series.size))} volume was expected")
    return image


def _unreadable_slice(series: DicomSeries) -> str:
    """Which slice the series reader failed on, and why (read one by one: only after a failure).
    GDCM's own words for compressed pixel data it cannot decode ("Failed to change to Implicit
    Transfer Syntax") do not say that the compression is the problem, so its name is given."""
    for path in series.files:
        try:
            sitk.ReadImage(str(path), imageIO="GDCMImageIO")
        except RuntimeError as exc:
            # "ITK ERROR: GDCMImageIO(0x55...): Failed to ..." -> "Failed to ..."
            reason = re.sub(r"^(ITK ERROR: )?\w+\(0x[0-9a-fA-F]+\): ", "", last_line(exc))
            compression = compression_name(path)
            if compression:
                return f"{path.name}: its {compression} pixel data cannot be decoded ({reason})"
            return f"{path.name} cannot be read ({reason})"
    return "its voxels cannot be read"
