"""The frames of multi-frame (enhanced) DICOM files as the slices of a series.

Enhanced CT, MR and PET files, and the "legacy converted" ones a PACS makes from classic series,
hold a whole series (or a part of it) in one file. Where each frame lies, its orientation, pixel
spacing and rescale are kept in functional groups: per frame (Per-frame Functional Groups
Sequence) or once for all frames (Shared Functional Groups Sequence). SimpleITK reads these
files' voxels but not this per-frame geometry, so frames are described and read here with
pydicom. Each frame becomes one `DicomSlice`, and `dicom_series` checks frames exactly as it
checks the slices of a classic series: a file holding several echoes or time points, frames at
uneven distances or of another orientation are refused the same way, naming the frame.

A multi-frame file whose frames have no positions of their own (a classic multi-frame image,
such as GDCM writes from a 3D array) is refused: nothing says where its frames lie.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Tuple, Union

import numpy as np

from MaskSAMCore.data.pydicom_reading import pydicom_warnings_off, read_dataset
from MaskSAMCore.errors import InputError, message_lines

if TYPE_CHECKING:   # both modules use this one
    from MaskSAMCore.data.dicom_headers import DicomSlice
    from MaskSAMCore.data.dicom_series import DicomSeries

_PER_FRAME, _SHARED = "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"
NO_FRAME_POSITIONS = ("is a multi-frame DICOM file whose frames have no positions of their own (no Plane "
                      "Position Sequence per frame); where its frames lie is unknown; convert the series "
                      "with dcm2niix, or load it in 3D Slicer and save it as NRRD")
DECODERS_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (decoders pydicom uses)"


def frame_group(dataset, frame: int, sequence: str):
    """The item of functional group `sequence` (e.g. "PlanePositionSequence") that describes
    `frame` (0-based): the frame's own, else the one shared by all frames, else None."""
    for groups, index in ((_PER_FRAME, frame), (_SHARED, 0)):
        items = dataset.get(groups)
        if items is not None and index < len(items):
            found = items[index].get(sequence)
            if found:
                return found[0]
    return None


def frame_slices(base: DicomSlice, frames: int) -> List[DicomSlice]:
    """One `DicomSlice` per frame of the multi-frame file `base.path` (`base`: what GDCM read of
    its header), each with the frame's own position, orientation and pixel spacing; or `[base]`
    with the problem that keeps the file out of a volume."""
    import pydicom

    if base.problem:   # about the file as a whole (colour, pixel data cut short)
        return [base]
    try:
        with pydicom_warnings_off():   # the functional groups' values are parsed here, on access
            dataset = read_dataset(base.path, stop_before_pixels=True)
            slices = [_frame_slice(base, dataset, frame) for frame in range(frames)]
    # A damaged or unusual header fails in many ways inside pydicom; each is the file's problem.
    except (pydicom.errors.InvalidDicomError, AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        problem = f"cannot be read as a multi-frame DICOM file ({type(exc).__name__}: {exc})"
        return [dataclasses.replace(base, problem=problem)]
    missing = next((s for s in slices if isinstance(s, str)), None)
    return [dataclasses.replace(base, problem=missing)] if missing else slices


def _frame_slice(base: DicomSlice, dataset, frame: int) -> Union[DicomSlice, str]:
    """`frame` as a `DicomSlice`, or what its header lacks."""
    position = frame_group(dataset, frame, "PlanePositionSequence")
    if position is None or _PER_FRAME not in dataset:
        return NO_FRAME_POSITIONS
    orientation = frame_group(dataset, frame, "PlaneOrientationSequence")
    if orientation is None:
        return "has no Image Orientation (Patient) for its frames; their place in the patient is unknown"
    measures = frame_group(dataset, frame, "PixelMeasuresSequence")
    if measures is None or "PixelSpacing" not in measures:
        return "has no Pixel Spacing for its frames; the size of their pixels is unknown"
    iop = [float(v) for v in orientation.ImageOrientationPatient]
    pixel_spacing = [float(v) for v in measures.PixelSpacing]
    return dataclasses.replace(
        base, frame=frame, origin=tuple(float(v) for v in position.ImagePositionPatient),
        # Pixel Spacing is (between rows, between columns): x spacing second, as GDCM reads it.
        spacing=(pixel_spacing[1], pixel_spacing[0]),
        row_direction=tuple(iop[:3]), column_direction=tuple(iop[3:]))


def frame_rescale(dataset, frame: int) -> Tuple[float, float]:
    """(slope, intercept) turning `frame`'s stored values into HU (CT) or the scanner's units:
    its own Pixel Value Transformation, else the shared one, else the file's, else (1, 0)."""
    for source in (frame_group(dataset, frame, "PixelValueTransformationSequence"), dataset):
        if source is not None and "RescaleSlope" in source:
            return float(source.RescaleSlope), float(source.get("RescaleIntercept", 0.0) or 0.0)
    return 1.0, 0.0


def read_frames(series: DicomSeries) -> np.ndarray:
    """The voxels of a series of frames (`series.files[k]`, `series.frames[k]` for slice k) as
    float32 (slice, row, column), each frame rescaled by its own slope and intercept."""
    rows_columns = (series.size[1], series.size[0])
    volume = np.empty((len(series.files), *rows_columns), dtype=np.float32)
    by_file: Dict[Path, List[int]] = {}
    for k, path in enumerate(series.files):
        by_file.setdefault(path, []).append(k)
    with pydicom_warnings_off():   # values are parsed on access: the rescales too
        for path, slice_indices in by_file.items():
            dataset = read_dataset(path)
            pixels = _decoded_pixels(series, path, dataset)
            frames = [series.frames[k] for k in slice_indices]
            if pixels.shape[1:] != rows_columns or max(frames) >= len(pixels):
                raise InputError(f"{series}: {path.name} holds {len(pixels)} frame(s) of {pixels.shape[2]} x "
                                 f"{pixels.shape[1]} pixels; its header promised more")
            for k, frame in zip(slice_indices, frames):
                slope, intercept = frame_rescale(dataset, frame)
                volume[k] = pixels[frame] * np.float32(slope) + np.float32(intercept)
    return volume


def _decoded_pixels(series: DicomSeries, path: Path, dataset) -> np.ndarray:
    """All frames of a file's pixel data, (frames, rows, columns)."""
    syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    try:
        pixels = dataset.pixel_array
    # pydicom raises several kinds for data it cannot decode (missing decoder, short or damaged data).
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as exc:
        reason = " ".join(message_lines(exc)) or type(exc).__name__
        hint = f"; {DECODERS_HINT}" if syntax is not None and syntax.is_compressed else ""
        raise InputError(f"{series}: {path.name}: its pixel data cannot be decoded ({reason}){hint}") from None
    if pixels.ndim == 2:   # a multi-frame file holding a single frame
        pixels = pixels[None]
    if pixels.ndim != 3:
        raise InputError(f"{series}: {path.name} holds {pixels.shape[-1]} values per pixel; "
                         "a grey-value CT or MR series is needed")
    return pixels

