"""Shared by the DICOM tests: oblique CT-like volumes written as DICOM series, slice by slice,
as a scanner or PACS exports them. Modules that write series use conftest's `dicom_locale_kept`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

Tags = Dict[str, str]


def oblique_volume(size=(20, 18, 9), spacing=(0.9, 0.8, 3.0), angle=0.35) -> sitk.Image:
    """An oblique, anisotropic CT-like volume in HU (a bright ellipsoid in soft tissue)."""
    z, y, x = np.mgrid[:size[2], :size[1], :size[0]]
    blob = ((x - 9) / 6.0) ** 2 + ((y - 8) / 5.0) ** 2 + ((z - 4) / 3.0) ** 2 < 1
    hu = np.where(blob, 180, 40) + np.random.default_rng(3).integers(-20, 20, blob.shape)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-31.5, 12.25, 104.0))
    image.SetDirection(sitk.VersorTransform((0.3, -1.0, 0.6), angle).GetMatrix())
    return image


def write_series(folder: Path, image: sitk.Image, uid: str = "1.2.826.0.1.3680043.2.1125.7.1",
                 number: str = "3", description: str = "AX ABD", names: Optional[List[str]] = None,
                 edit: Optional[Callable[[int, Tags], Optional[Tags]]] = None,
                 compressor: Optional[str] = None) -> Path:
    """One single-frame file per slice, as a scanner writes them; `edit(index, tags)` may change
    a slice's tags or drop the slice (return None); `compressor`: GDCM's "JPEG" (lossless) or
    "JPEG2000" (lossless) pixel data instead of native."""
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")   # file names without an ending, as PACS exports write them
    if compressor is not None:
        writer.UseCompressionOn()
        writer.SetCompressor(compressor)
    for k in range(image.GetDepth()):
        tags: Tags = {
            "0008|0060": "CT", "0020|000e": uid, "0020|0011": number, "0008|103e": description,
            "0020|000d": f"{uid}.1", "0020|0052": f"{uid}.2",   # study and frame of reference
            "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1), "0028|1052": "-1024", "0028|1053": "1",
        }
        if edit is not None:
            tags = edit(k, tags)
            if tags is None:
                continue
        slice_image = image[:, :, k]
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        writer.SetFileName(str(folder / (names[k] if names else f"IM{k:04d}.dcm")))
        writer.Execute(slice_image)
    return folder


def one_line_error(capsys) -> str:
    """The only line a refused command printed on stderr, checked to be its error line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("masksam: error:"), lines
    return lines[0]


def tilted(image: sitk.Image, degrees: float) -> Callable[[int, Tags], Tags]:
    """An edit leaning the stack as a CT gantry tilt does: slice k moves k * step * tan(tilt)
    along the slices' columns."""
    column = np.reshape(image.GetDirection(), (3, 3))[:, 1]
    lean = image.GetSpacing()[2] * np.tan(np.radians(degrees))

    def edit(k: int, tags: Tags) -> Tags:
        position = np.add(image.TransformIndexToPhysicalPoint((0, 0, k)), k * lean * column)
        return {**tags, "0020|0032": "\\".join(f"{v:.6f}" for v in position)}
    return edit


def shuffled_names(count: int) -> List[str]:
    """File names whose sorted order is not the slice order (PACS exports use UIDs)."""
    order = np.random.default_rng(0).permutation(count)
    return [f"1.3.6.1.4.1.{int(o) * 7919 % 1000:03d}.{k}" for k, o in enumerate(order)]


def write_enhanced(folder: Path, image: sitk.Image, name: str = "enhanced.dcm",
                   frame_order: Optional[Sequence[int]] = None, **series_arguments) -> Path:
    """The slices of `image` as one multi-frame Legacy Converted Enhanced CT file, as a PACS
    converts a classic series, its frames stored in `frame_order` (slice indices; default:
    as the converter orders them). Returns the file."""
    import highdicom as hd
    import pydicom

    with tempfile.TemporaryDirectory() as scratch:
        classic = write_series(Path(scratch) / "classic", image, **series_arguments)
        slices = [pydicom.dcmread(str(p)) for p in sorted(classic.iterdir())]
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=slices[0].SeriesInstanceUID, series_number=int(slices[0].SeriesNumber),
        sop_instance_uid=hd.UID(), instance_number=1)
    if frame_order is not None:
        # The converter sorts frames by position; put them in the order asked for.
        by_slice = {int(g.UnassignedPerFrameConvertedAttributesSequence[0].InstanceNumber) - 1: k
                    for k, g in enumerate(converted.PerFrameFunctionalGroupsSequence)}
        stored = [by_slice[index] for index in frame_order]
        groups = list(converted.PerFrameFunctionalGroupsSequence)
        converted.PerFrameFunctionalGroupsSequence = [groups[k] for k in stored]
        converted.PixelData = converted.pixel_array[stored].tobytes()
        converted.NumberOfFrames = len(stored)
    folder.mkdir(parents=True, exist_ok=True)
    converted.save_as(str(folder / name))
    return folder / name


# The longest value DICOM allows per VR (PS3.5 table 6.2-1): a longer one makes validators
# (dciodvfy) reject the file and strict readers fail.
VR_MAX_LENGTH = {"AE": 16, "CS": 16, "DA": 8, "DS": 16, "IS": 12, "LO": 64, "SH": 16, "UI": 64}


def values_too_long(dataset) -> List[str]:
    """``keyword = value`` of every value (nested sequences included) longer than its VR allows."""
    found: List[str] = []

    def check(_, element) -> None:
        limit = VR_MAX_LENGTH.get(element.VR)
        values = element.value if element.VM > 1 else [element.value]
        if limit is not None and element.value is not None:
            found.extend(f"{element.keyword} = {v}" for v in values if len(str(v)) > limit)

    dataset.walk(check)
    return found


def decode_seg(path: Path, series) -> Dict[int, np.ndarray]:
    """Segment number -> its mask (z, y, x) on the series' grid (a `DicomSeries`), placing every
    SEG frame by the source slice or source frame it names; checks that the frame's position is
    that slice's and that every value fits its VR. Decoded with pydicom alone, not by the
    library that wrote the SEG."""
    import pydicom

    seg = pydicom.dcmread(str(path))
    assert not values_too_long(seg), values_too_long(seg)
    sources = {f: pydicom.dcmread(str(f), stop_before_pixels=True) for f in dict.fromkeys(series.files)}
    index, positions = {}, []
    for z, f in enumerate(series.files):
        frame = series.frames[z] if series.frames else None
        index[(sources[f].SOPInstanceUID, None if frame is None else frame + 1)] = z
        placed = sources[f] if frame is None else sources[f].PerFrameFunctionalGroupsSequence[frame].PlanePositionSequence[0]
        positions.append([float(v) for v in placed.ImagePositionPatient])
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    masks = {int(d.SegmentNumber): np.zeros((len(series.files), seg.Rows, seg.Columns), bool)
             for d in seg.SegmentSequence}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        referenced = source.get("ReferencedFrameNumber")
        z = index[(source.ReferencedSOPInstanceUID, None if referenced is None else int(referenced))]
        assert np.allclose([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient],
                           positions[z], atol=1e-4)
        masks[number][z] = frame.astype(bool)
    return masks
