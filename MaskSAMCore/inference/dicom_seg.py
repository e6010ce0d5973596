"""A prediction on a DICOM series written as a DICOM Segmentation (SEG) that refers to it.

`masksam predict MODEL DICOM_FOLDER out.dcm` (or ``--output-ending .dcm``) writes the labels as
the DICOM object PACS, viewers and 3D Slicer (with QuantitativeReporting) load over the series:
patient and study are the series', every frame names the source slice it lies on (its SOP
Instance UID and Image Position; for a multi-frame (enhanced) source, the source frame's number),
and every segment is named, coded and coloured:

- one segment per structure the model predicts (each class; each region of a region model,
  where segments overlap as the regions do), empty ones included, so a reader sees that a
  structure was looked for and not found;
- its label is the display name 3D Slicer would give it, its codes the SNOMED-CT ones of
  `terminology` (category, type and, for paired organs, the side as type modifier), "Tissue"
  for structures the table does not know; its colour the same as in Slicer;
- algorithm type AUTOMATIC, identified as MaskSAM with the model's name and MaskSAM's version.

The type is BINARY (one bit per pixel, empty frames left out), which every SEG reader knows.
The geometry is the series' own, as checked by `dicom_series`: each frame's position is that of
its source slice, the orientation and pixel spacing the series', the spacing between slices the
step of the checked grid (not the slices' own Spacing Between Slices, which some MR scanners
use for the gap). How the sources' headers are prepared for highdicom (slices without Slice
Thickness or Type 2 patient and study elements, orientations that differ by float noise, per-frame
orientation of enhanced files) is `seg_sources`'. Writing uses highdicom (pip install highdicom),
imported only when a SEG is asked for.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from MaskSAMCore import __version__
from MaskSAMCore.atomic import atomic_path
from MaskSAMCore.data.dicom_series import DicomSeries
from MaskSAMCore.data.pydicom_reading import read_dataset
from MaskSAMCore.data.regions import RegionScheme
from MaskSAMCore.errors import InputError, first_line
from MaskSAMCore.inference.seg_sources import seg_sources
from MaskSAMCore.terminology import AnatomyTerminology

SEG_ENDING = ".dcm"
SEG_SERIES_NUMBER_OFFSET = 1000   # the SEG's series number: the source's plus this
IMAGE_FILE_INSTEAD = "write .nii.gz, .nrrd or .mha instead"
# highdicom's warning for a one-component Patient's Name ("Anon"): valid DICOM, copied as the series has it.
ONE_COMPONENT_NAME_WARNING = r'The string ".*" is unlikely to represent the intended person name'
# What highdicom raises for a source it cannot describe (a value of an unexpected kind, an element it needs):
# the user's series, not a bug here, so one line naming the series instead of a traceback.
SEG_BUILD_FAILURES = (ValueError, TypeError, AttributeError, KeyError, IndexError)


def is_seg_output(path: "os.PathLike[str] | str") -> bool:
    """True for an output file name that asks for a DICOM SEG (``.dcm``, any case)."""
    return str(path).lower().endswith(SEG_ENDING)


def check_seg_writer() -> None:
    """Refuse before any work when the package that writes SEG files is missing."""
    try:
        importlib.import_module("highdicom")
    except ImportError:
        raise InputError("writing DICOM SEG (.dcm) needs the highdicom package: pip install highdicom "
                         "(or write .nii.gz, .nrrd or .mha)") from None


def check_seg_sources(series: DicomSeries) -> None:
    """Refuse, before any work, a series a SEG cannot refer to: slices without the UIDs it
    names, or from several studies or frames of reference (`InputError` naming the slice), and
    whatever else highdicom would refuse only after the prediction, found by building (not
    writing) a SEG of one voxel over the series."""
    first: dict = {}
    if series.frames and len(series.distinct_files) > 1:
        raise InputError(f"{series}: its frames are spread over {len(series.distinct_files)} multi-frame files; "
                         f"a DICOM SEG here refers to one; {IMAGE_FILE_INSTEAD}")
    for path in series.distinct_files:
        header = read_dataset(path, stop_before_pixels=True,
                              specific_tags=["SOPInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"])
        for keyword, name in (("SOPInstanceUID", "SOP Instance UID"), ("StudyInstanceUID", "Study Instance UID"),
                              ("FrameOfReferenceUID", "Frame of Reference UID")):
            value = str(header.get(keyword, "")).strip()
            if not value:
                raise InputError(f"{series}: {path.name} has no {name}, which a DICOM SEG must refer to; "
                                 f"{IMAGE_FILE_INSTEAD}")
            if keyword != "SOPInstanceUID" and first.setdefault(keyword, (value, path.name))[0] != value:
                raise InputError(f"{series}: {path.name} and {first[keyword][1]} have different {name}s; "
                                 f"a DICOM SEG refers to one; {IMAGE_FILE_INSTEAD}")
    one_voxel = np.zeros((len(series.files), series.size[1], series.size[0]), dtype=np.uint8)
    one_voxel[0, 0, 0] = 1
    _built_seg(one_voxel, series, [SegStructure("check", (1,))], "check")


@dataclass(frozen=True)
class SegStructure:
    """One segment of the SEG: its model label name and the label-map values it covers."""

    name: str
    values: Tuple[int, ...]


def seg_structures(class_names: Sequence[str], regions: Optional[RegionScheme]) -> List[SegStructure]:
    """The segments a model's label maps give: each foreground class by its value, or each
    region of a region model by the values its painted map uses for it."""
    if regions is not None:
        return [SegStructure(name, tuple(values)) for name, values in regions.regions.items()]
    return [SegStructure(name, (value,)) for value, name in enumerate(class_names) if value > 0]


def write_dicom_seg(labels: np.ndarray, series: DicomSeries, structures: Sequence[SegStructure],
                    path: "os.PathLike[str] | str", model_name: str) -> None:
    """Write `labels` (z, y, x, on the series' grid: z follows ``series.files``) as a SEG
    referring to the series, atomically."""
    expected = (len(series.files), series.size[1], series.size[0])
    if tuple(labels.shape) != expected:
        raise ValueError(f"label map shape {labels.shape} is not the series' {expected}")
    seg = _built_seg(labels, series, structures, model_name)
    with atomic_path(path) as temporary:
        seg.save_as(str(temporary))


def _built_seg(labels: np.ndarray, series: DicomSeries, structures: Sequence[SegStructure], model_name: str):
    """highdicom's SEG of `labels` over the series, or `InputError` for a series it cannot describe."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if series.frames:   # one multi-frame source: the SEG's frames follow the source's frame order
        labels = labels[np.argsort(series.frames)]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_titled(model_name), version=__version__, family=codes.cid7162.ArtificialIntelligence)
    descriptions = _segment_descriptions(structures, algorithm)
    masks = _segment_masks(labels, structures)
    try:
        return _segmentation(seg_sources(series), masks, descriptions, _series_number(series), model_name)
    except SEG_BUILD_FAILURES as exc:   # the user's series, not a bug here
        raise InputError(f"{series}: no DICOM SEG can refer to it ({first_line(exc)}); {IMAGE_FILE_INSTEAD}") from None


def _segmentation(sources: list, masks: np.ndarray, descriptions: list, series_number: int, model_name: str):
    """highdicom's SEG over `sources` (BINARY; frames without voxels left out unless all are empty)."""
    import highdicom as hd

    with warnings.catch_warnings():
        # The SEG must carry the series' own patient name; a one-component one ("Anon") is valid DICOM.
        warnings.filterwarnings("ignore", message=ONE_COMPONENT_NAME_WARNING, category=UserWarning)
        return hd.seg.Segmentation(
            source_images=sources, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(),
            series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
            omit_empty_frames=bool(masks.any()),   # (an empty result keeps every frame, without highdicom's warning)
            manufacturer="MaskSAM", manufacturer_model_name=model_name[:64],
            software_versions=f"MaskSAM {__version__}", device_serial_number="none",
            series_description=_titled(model_name), content_label="MASKSAM",
            content_description=f"MaskSAM segmentation by model {model_name}"[:64])


def _segment_masks(labels: np.ndarray, structures: Sequence[SegStructure]) -> np.ndarray:
    """What highdicom takes as the segments' pixels: the label map itself where segment n is
    label value n (a model's classes: no copy per segment, so a 512 x 512 x 600 CT with 16 classes
    costs no 2.5 GB of masks), else one boolean mask per segment (z, y, x, segments), which may
    overlap (regions)."""
    if all(s.values == (number,) for number, s in enumerate(structures, start=1)):
        return labels
    return np.stack([np.isin(labels, s.values) for s in structures], axis=-1)


def _segment_descriptions(structures: Sequence[SegStructure], algorithm) -> list:
    import highdicom as hd

    terminology = AnatomyTerminology()
    # Named and coloured as 3D Slicer shows them; the first value stands for the structure.
    styles = terminology.styles([(s.name, s.values[0]) for s in structures])
    descriptions = []
    for number, (structure, style) in enumerate(zip(structures, styles), start=1):
        codes = terminology.codes(structure.name)
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=style.name[:64],
            segmented_property_category=hd.sr.CodedConcept(codes.category[1], codes.category[0], codes.category[2]),
            segmented_property_type=hd.sr.CodedConcept(codes.type[1], codes.type[0], codes.type[2]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in style.color)))
        if codes.modifier is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(codes.modifier[1], codes.modifier[0], codes.modifier[2])]
        descriptions.append(description)
    return descriptions


def _titled(model_name: str) -> str:
    """``MaskSAM abdomen``: the model's name after MaskSAM's, once (DICOM's LO holds 64 characters)."""
    title = model_name if model_name.lower().startswith("masksam") else f"MaskSAM {model_name}"
    return title[:64]


def _series_number(series: DicomSeries) -> int:
    number = int(series.number) if series.number.strip().lstrip("-").isdigit() else 0
    return max(number, 0) + SEG_SERIES_NUMBER_OFFSET

