"""The source headers a DICOM SEG is built from: the series' own, as highdicom needs them.

highdicom copies the SEG's orientation and pixel measures from its sources and demands them
shared exactly: every classic slice with the very same Image Orientation (Patient), a
multi-frame file with them in its Shared Functional Groups. Series that `dicom_series` accepts
often differ from that without being wrong: slices whose orientation differs by float noise
(within `ORIENTATION_TOLERANCE`, written with 8 or more decimals), and enhanced CT and MR files
keeping orientation and pixel measures per frame. The sources are therefore read into memory
and, there only (the series' files are never written), made to say once what the checked grid
already says: the first slice's orientation for every slice (the grid's directions come from
it), a multi-frame file's per-frame orientation and pixel measures shared when all frames agree.

Besides: a slice without Slice Thickness (allowed in CT) is given the grid's step as its
thickness, every source the grid's step as Spacing Between Slices (some MR scanners store the
gap between slices there), and a Type 2 patient or study element highdicom copies by attribute
but the source leaves out entirely (anonymised and converted series do) is added empty.
"""

from __future__ import annotations

import copy
from typing import Callable, List, Optional

import numpy as np

from MaskSAMCore.data.dicom_series import ORIENTATION_TOLERANCE, DicomSeries
from MaskSAMCore.data.pydicom_reading import pydicom_warnings_off, read_dataset

# Type 2 patient and study elements (present, maybe empty) highdicom copies from a source slice by attribute:
# a series that leaves one out entirely would end in highdicom's AttributeError.
COPIED_TYPE2_ELEMENTS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                         "AccessionNumber", "StudyID", "ReferringPhysicianName")
_PER_FRAME, _SHARED = "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"


def seg_sources(series: DicomSeries) -> list:
    """The headers (no pixels) of the series' files as pydicom data sets, prepared as above."""
    from pydicom.valuerep import DSfloat

    with pydicom_warnings_off():   # values are parsed on access, here
        sources = [read_dataset(path, stop_before_pixels=True) for path in series.distinct_files]
        grid = _grid_cosines(series)
        if any(_PER_FRAME in source for source in sources):
            for source in sources:
                _share_per_frame(source, "PlaneOrientationSequence", _same_orientation, grid)
                _share_per_frame(source, "PixelMeasuresSequence", _same_pixel_spacing, None)
        else:
            _one_orientation(sources, grid)
        # The grid's step to a millionth of a mm: 3.1, not the float noise of positions written with
        # 6 decimals (3.10000000134618), which a DS value (16 characters) would keep.
        step = DSfloat(round(series.plane_spacing, 6), auto_format=True)
        for measures in _pixel_measures(sources):
            if not measures.get("SliceThickness"):
                measures.SliceThickness = step
            # Between the checked grid's planes, whatever the source says.
            measures.SpacingBetweenSlices = step
        for source in sources:
            for keyword in COPIED_TYPE2_ELEMENTS:
                if keyword not in source:
                    setattr(source, keyword, "")
    return sources


def _cosines(item) -> np.ndarray:
    return np.asarray([float(v) for v in item.ImageOrientationPatient], dtype=np.float64)


def _grid_cosines(series: DicomSeries) -> np.ndarray:
    """The grid's row and column directions as Image Orientation (Patient) lists them."""
    return np.reshape(series.direction, (3, 3))[:, :2].T.ravel()


def _as_grid(items: list, grid: np.ndarray):
    """The item (data set or Plane Orientation item) whose orientation the grid took: the one
    closest to it. Its own text is copied, so the SEG states the grid's orientation exactly."""
    return min(items, key=lambda item: float(np.abs(_cosines(item) - grid).max()))


def _same_orientation(first, other) -> bool:
    """`first` and `other` (data sets or Plane Orientation items) lie in one orientation, as
    `dicom_series` judges it."""
    return bool(np.allclose(_cosines(other), _cosines(first), atol=ORIENTATION_TOLERANCE))


def _same_pixel_spacing(first, other) -> bool:
    spacing = [float(v) for v in first.get("PixelSpacing", [])]
    other_spacing = [float(v) for v in other.get("PixelSpacing", [])]
    return len(spacing) == len(other_spacing) == 2 and bool(np.allclose(other_spacing, spacing, rtol=1e-4,
                                                                         atol=1e-6))


def _one_orientation(sources: list, grid: np.ndarray) -> None:
    """Every classic slice with the orientation of the grid, where they agree within tolerance
    (the SEG's frames keep their own source slices' positions)."""
    if not all("ImageOrientationPatient" in source for source in sources):
        return   # highdicom refuses it, and `dicom_seg.check_seg_sources` says so before any work
    chosen = _as_grid(sources, grid)
    for source in sources:
        if _same_orientation(chosen, source):
            source.ImageOrientationPatient = copy.deepcopy(chosen.ImageOrientationPatient)


def _share_per_frame(source, sequence: str, agree: Callable, grid: Optional[np.ndarray]) -> None:
    """Move functional group `sequence` from every frame into the shared group, where the
    shared group lacks it and every frame has one that `agree`s with the others: the frame's
    closest to the `grid`'s orientation, else the first frame's."""
    frames = source.get(_PER_FRAME) or []
    if not frames:
        return
    if _SHARED not in source or not source[_SHARED].value:
        from pydicom import Dataset

        source.SharedFunctionalGroupsSequence = [Dataset()]
    shared = source[_SHARED].value[0]
    if sequence in shared and shared[sequence].value:
        return
    items = [group[sequence].value[0] if sequence in group and group[sequence].value else None for group in frames]
    if any(item is None for item in items) or not all(agree(items[0], item) for item in items[1:]):
        return   # highdicom refuses it, and `dicom_seg.check_seg_sources` says so before any work
    chosen = items.index(_as_grid(items, grid)) if grid is not None else 0
    setattr(shared, sequence, copy.deepcopy(frames[chosen][sequence].value))
    for group in frames:
        delattr(group, sequence)


def _pixel_measures(sources: list) -> List:
    """Where the sources keep slice thickness and spacing: the classic slices themselves, or a
    multi-frame file's shared and per-frame Pixel Measures."""
    found = []
    for source in sources:
        groups = [g for key in (_SHARED, _PER_FRAME) for g in source.get(key, [])]
        found += [m for g in groups for m in g.get("PixelMeasuresSequence", [])] if groups else [source]
    return found
