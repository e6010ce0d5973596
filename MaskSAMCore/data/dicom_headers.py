"""Finding DICOM files in a folder and reading what one slice's header says (never its pixels).

Headers are read with SimpleITK's GDCM reader, the one that later reads the voxels, so that
position, orientation and pixel spacing are interpreted exactly as for the pixels. Each slice
gets the first problem that keeps it out of a volume (`DicomSlice.problem`); which problems
matter is decided for the series chosen (`dicom_series`), not for every file of the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import SimpleITK as sitk

from MaskSAMCore.data.dicom_frames import frame_slices
from MaskSAMCore.data.dicom_pixel_data import pixel_data_bytes
from MaskSAMCore.data.pydicom_reading import pydicom_warnings_off, read_dataset
from MaskSAMCore.errors import InputError, describe_path, list_some

_POSITION, _ORIENTATION, _PIXEL_SPACING = "0020|0032", "0020|0037", "0028|0030"
_SERIES_UID, _INSTANCE_UID, _SERIES_NUMBER, _DESCRIPTION, _MODALITY, _SOP_CLASS = (
    "0020|000e", "0008|0018", "0020|0011", "0008|103e", "0008|0060", "0008|0016")
# Enhanced and legacy-converted enhanced CT, MR and PET keep each frame's position in nested
# functional groups, which SimpleITK does not read, even when a file holds a single frame:
# their frames are read with pydicom (`dicom_frames`).
_ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2",          # CT
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4",   # MR
    "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1",        # PET
}
_FRAMES, _BITS_ALLOCATED = "0028|0008", "0028|0100"
_SKIPPED_NAMES = {"dicomdir"}   # a CD's index of the files, not an image
# What travels with the images of a study export but is no image to segment: segmentations (an
# earlier MaskSAM result among them), RT structure sets, plans, doses and records, structured
# reports, presentation states, key-object selections, registrations and documents. Left out of
# the folder's image series by their Modality, so that they never count as a series to choose.
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO",
                                  "REG", "DOC"})


def is_dicom_file(path: Path) -> bool:
    """True for a file named ``*.dcm``, with the DICOM preamble ("DICM" at byte 128), or
    starting with a little-endian tag of group 0002 or 0008, as files written without the
    preamble (older exports, often named 1, 2, ...) do."""
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as handle:
            start = handle.read(132)
    except OSError:
        return False
    return start[128:132] == b"DICM" or (len(start) >= 8 and start[:2] in (b"\x02\x00", b"\x08\x00")
                                         and start[3:4] == b"\x00")


def dicom_files(folder: Path) -> List[Path]:
    """The DICOM image candidates directly inside `folder` (hidden files, subfolders and a
    DICOMDIR left out)."""
    return [p for p in sorted(folder.iterdir())
            if not p.name.startswith(".") and p.name.lower() not in _SKIPPED_NAMES and p.is_file()
            and is_dicom_file(p)]


def folders_with_dicom_files(folder: Path, max_depth: int = 4, limit: Optional[int] = 4) -> List[Path]:
    """Up to `limit` (None: all) folders below `folder` (at most `max_depth` levels down) holding
    DICOM files: where a study exported as one folder per series (or a CD's DICOM/ST*/SE*) keeps them."""
    found: List[Path] = []
    for root, subfolders, _ in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        subfolders[:] = sorted(s for s in subfolders if not s.startswith(".")) if depth < max_depth else []
        if depth and dicom_files(Path(root)):
            found.append(Path(root))
            subfolders[:] = []
            if limit is not None and len(found) >= limit:
                break
    return found


@dataclass(frozen=True)
class DicomSlice:
    """What one file's header says (SimpleITK's reading of it: origin = Image Position)."""

    path: Path
    series_uid: str
    instance_uid: str
    series_number: str
    description: str
    modality: str
    columns_rows: Tuple[int, int]
    spacing: Tuple[float, float]
    origin: Tuple[float, ...]
    row_direction: Tuple[float, float, float]
    column_direction: Tuple[float, float, float]
    problem: Optional[str]   # why this file cannot be a slice of a volume, if it cannot
    frame: Optional[int] = None   # which frame of a multi-frame file (0-based); None for a classic file

    @property
    def name(self) -> str:
        """How messages name it: ``IM0004.dcm``, or ``enhanced.dcm frame 12`` (counted from 1)."""
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame + 1}"


def header_text(value: str) -> str:
    """A header string as the user wrote it: GDCM hands over undecoded bytes (surrogate escapes),
    UTF-8 in new files and mostly Latin-1 (ISO_IR 100) in older European ones."""
    raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


def read_slices(path: Path) -> List[DicomSlice]:
    """The slices one file holds: one for a classic file, one per frame for a multi-frame
    (enhanced) file (`dicom_frames`); none when it cannot be read or has no series (not an image)."""
    found = _read_file_header(path)
    if found is None:
        return []
    header, frames = found
    if not frames or header.modality.upper() in NON_IMAGE_MODALITIES:   # a SEG's frames are never slices
        return [header]
    return frame_slices(header, frames)


def _read_file_header(path: Path) -> Optional[Tuple[DicomSlice, int]]:
    """What GDCM reads of a file's header, and its number of frames if it is a multi-frame
    (enhanced) file, else 0."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None

    def tag(key: str) -> str:
        return header_text(reader.GetMetaData(key)) if reader.HasMetaDataKey(key) else ""

    if not tag(_SERIES_UID):
        return None
    size, direction = reader.GetSize(), reader.GetDirection()
    frames = int(tag(_FRAMES)) if tag(_FRAMES).isdigit() else (size[2] if len(size) > 2 else 1)
    bits = int(tag(_BITS_ALLOCATED)) if tag(_BITS_ALLOCATED).isdigit() else 0
    pixel_bytes = size[0] * size[1] * max(frames, 1) * reader.GetNumberOfComponents() * bits // 8
    multi_frame = frames > 1 or tag(_SOP_CLASS) in _ENHANCED_SOP_CLASSES
    header = DicomSlice(
        path=path, series_uid=tag(_SERIES_UID), instance_uid=tag(_INSTANCE_UID),
        series_number=tag(_SERIES_NUMBER), description=tag(_DESCRIPTION), modality=tag(_MODALITY),
        columns_rows=(int(size[0]), int(size[1])),
        spacing=(float(reader.GetSpacing()[0]), float(reader.GetSpacing()[1])),
        origin=tuple(float(v) for v in reader.GetOrigin()),
        row_direction=(direction[0], direction[3], direction[6]),
        column_direction=(direction[1], direction[4], direction[7]),
        problem=_slice_problem(path, multi_frame, reader.GetNumberOfComponents(), tag, pixel_bytes))
    return header, (max(frames, 1) if multi_frame else 0)


def _slice_problem(path: Path, multi_frame: bool, components: int, tag, pixel_bytes: int) -> Optional[str]:
    if components != 1:
        return f"has {components} values per pixel (colour); a grey-value CT or MR series is needed"
    # A multi-frame file keeps position, orientation and spacing per frame (checked in dicom_frames).
    if not multi_frame and not (tag(_POSITION) and tag(_ORIENTATION)):
        return "has no Image Position or Orientation (Patient); its place in the patient is unknown"
    if not multi_frame and not tag(_PIXEL_SPACING):
        return "has no Pixel Spacing; the size of its pixels is unknown"
    held = pixel_data_bytes(path)
    if held is not None and held < pixel_bytes:
        # GDCM reads such a file without complaint and keeps the previous slice's voxels for the rest
        return f"holds less pixel data ({held} bytes) than its pixels ({pixel_bytes} bytes): a damaged file"
    return None


@dataclass
class FolderHeaders:
    """A folder's DICOM files sorted out: image slices by Series Instance UID (in the order their
    series are first met), objects that are no image (file, Modality), and unreadable files,
    also by the Series Instance UID pydicom still finds in them (`damaged`): a slice cut short
    at either end of its series leaves no gap to notice, so its series must be told of it."""

    series: Dict[str, List[DicomSlice]] = field(default_factory=dict)
    not_images: List[Tuple[Path, str]] = field(default_factory=list)
    unreadable: List[Path] = field(default_factory=list)
    damaged: Dict[str, List[Path]] = field(default_factory=dict)


def read_series_headers(folder: Path, files: Sequence[Path]) -> FolderHeaders:
    """Sort `files` into image series, non-image objects and unreadable files; raises
    `InputError` when no image is left."""
    found = FolderHeaders()
    for path in files:
        slices = read_slices(path)
        modality, series_uid = (slices[0].modality, slices[0].series_uid) if slices else _pydicom_header(path)
        if modality.upper() in NON_IMAGE_MODALITIES:
            found.not_images.append((path, modality.upper()))
        elif not slices:
            found.unreadable.append(path)
            if series_uid:
                found.damaged.setdefault(series_uid, []).append(path)
        else:
            for header in slices:
                found.series.setdefault(header.series_uid, []).append(header)
    if not found.series:
        others = f" ({describe_not_images(found.not_images)})" if found.not_images else ""
        raise InputError(f"{describe_path(folder)}: its {len(files)} DICOM file(s) hold no image to segment{others}")
    return found


def describe_not_images(not_images: Sequence[Tuple[Path, str]]) -> str:
    """``SEG: seg.dcm; SR: report.dcm, ...``: the non-image objects by Modality."""
    by_modality: Dict[str, List[str]] = {}
    for path, modality in not_images:
        by_modality.setdefault(modality, []).append(path.name)
    return "; ".join(f"{modality}: {list_some(names)}" for modality, names in by_modality.items())


def _pydicom_header(path: Path) -> Tuple[str, str]:
    """(Modality, Series Instance UID) of a file GDCM cannot read as an image (a report, a
    structure set, a damaged slice), read with pydicom, which reads what a header holds up to
    where it is damaged; "" for what it cannot read."""
    try:
        with pydicom_warnings_off():   # a damaged file's garbage makes pydicom warn of odd elements
            header = read_dataset(path, stop_before_pixels=True, specific_tags=["Modality", "SeriesInstanceUID"])
            return tuple(str(header.get(keyword, "") or "").strip() for keyword in ("Modality", "SeriesInstanceUID"))
    except Exception:   # any damage: the file is reported as unreadable
        return "", ""
