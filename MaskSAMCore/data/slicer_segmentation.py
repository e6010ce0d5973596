"""3D Slicer's segmentation files (``.seg.nrrd``): written by `masksam predict`, read by `masksam
evaluate` and, as a dataset's label maps, by training.

A ``.seg.nrrd`` is what Slicer saves a segmentation as: an NRRD label map, or several of them
(layers, stored as the values of a vector pixel) where segments overlap, whose header describes
every segment: ``Segment<i>_ID``, ``_Name``, ``_Color`` (RGB 0..1), ``_Layer``, ``_LabelValue``
(its value in its layer), ``_Extent`` and ``_Tags`` (its terminology entry). Dropped into Slicer,
a prediction written as one shows each structure as a named, coloured segment with its standard
terminology, as the module's Segment button does; no conversion or colour table is needed.

Written: one segment per structure the model predicts (each class, or each region of a region
model), empty ones included, named and coloured as `terminology` names them (the same as the
Slicer module and the DICOM SEG); its ID is the model's label name (``kidney_left``). A class
model writes one layer, the label map itself (each segment's label value is its class value),
so the file is also an ordinary label-map NRRD for every other program; a region model writes one
binary layer per region, since regions overlap.

Read (to score a segmentation drawn in Slicer, or a prediction written as one): each segment is a
mask, ``layer == label value``, on the file's own grid. Slicer crops what it saves to the
segments' extent and may reverse an axis of a left-handed volume; `place_on_grid` puts such masks
back on the scan's grid when their voxels are the scan's voxels, and two such files of one scan
meet on `union_grid`. Which structure a segment is comes from its name (or ID), matched to the
dataset's label names as `label_of` matches them ("Left kidney" is ``kidney_left``), not from
its label value, which is only the order segments were added in; a dataset's label map saved as
a segmentation is renumbered the same way (`read_dataset_label`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from MaskSAMCore.data.dataset_json import IGNORE_LABEL
from MaskSAMCore.data.image_io import ImageGeometry, read_label, read_sitk_image
from MaskSAMCore.data.image_writing import write_sitk_image
from MaskSAMCore.data.read_failures import itk_warnings_off
from MaskSAMCore.data.slicer_reference import CONVERSION_PARAMETERS_FIELD, reference_geometry, reference_parameter
from MaskSAMCore.errors import InputError, by_x, describe_path
from MaskSAMCore.terminology import AnatomyTerminology, dataset_label_key

SEGMENTATION_ENDING = ".seg.nrrd"
NRRD_ENDINGS = (".nrrd", ".nhdr")
AXIS_TOLERANCE = 1e-4   # how far a voxel step of one grid may be from one of the other's
VOXEL_OFFSET_TOLERANCE = 1e-3   # in voxels: an origin this close to a voxel centre is on the lattice


def is_segmentation_file(path: "os.PathLike[str] | str") -> bool:
    """True for a file name ending in ``.seg.nrrd`` (any case)."""
    return str(path).lower().endswith(SEGMENTATION_ENDING)


@dataclass(frozen=True)
class Segment:
    """One segment of a segmentation file: where its voxels are (``layers[layer] == label_value``),
    and how it is shown."""

    id: str
    name: str
    layer: int
    label_value: int
    color: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    terminology: str = ""


def segments_for(structures: Sequence[Tuple[str, Tuple[int, ...]]]) -> Tuple[List[Segment], bool]:
    """The segments of a prediction's structures, given as (label name, label values), and
    whether they fit in one layer (each structure is one value of its own)."""
    styles = AnatomyTerminology().styles([(name, values[0]) for name, values in structures])
    one_layer = all(len(values) == 1 for _, values in structures)
    segments = [Segment(id=name, name=style.name, layer=0 if one_layer else index,
                        label_value=values[0] if one_layer else 1, color=style.color, terminology=style.terminology)
                for index, ((name, values), style) in enumerate(zip(structures, styles))]
    return segments, one_layer


def write_segmentation(labels: np.ndarray, geometry: ImageGeometry,
                       structures: Sequence[Tuple[str, Tuple[int, ...]]], path: "os.PathLike[str] | str") -> None:
    """Write a label map (z, y, x) on `geometry` as a Slicer segmentation file, atomically;
    `structures`: (label name, the label values it covers) of every segment, in order."""
    if tuple(labels.shape) != geometry.shape_zyx:
        raise ValueError(f"label map shape {labels.shape} is not the grid's {geometry.shape_zyx}")
    segments, one_layer = segments_for(structures)
    if one_layer:
        dtype = np.uint8 if labels.size == 0 or labels.max() <= 255 else np.int16
        image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=dtype))
    else:
        # One binary layer per structure; SimpleITK's vector pixel is what NRRD stores as the
        # extra first axis Slicer reads as layers.
        image = sitk.Compose([sitk.GetImageFromArray(np.isin(labels, values).astype(np.uint8))
                              for _, values in structures])
    geometry.apply(image)
    for key, value in _header(segments, geometry).items():
        image.SetMetaData(key, value)
    write_sitk_image(image, path)


def _header(segments: Sequence[Segment], geometry: ImageGeometry) -> Dict[str, str]:
    """The key/value fields Slicer's segmentation storage reads; every segment spans the grid."""
    extent = " ".join(f"0 {size - 1}" for size in geometry.size)
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        # The scan's grid (here the file's own): what Slicer records, and evaluate reads for HD95.
        CONVERSION_PARAMETERS_FIELD: reference_parameter(geometry),
    }
    for index, segment in enumerate(segments):
        prefix = f"Segment{index}_"
        fields.update({
            prefix + "ID": segment.id, prefix + "Name": segment.name, prefix + "NameAutoGenerated": "0",
            prefix + "Color": " ".join(f"{c:.6g}" for c in segment.color), prefix + "ColorAutoGenerated": "0",
            prefix + "Layer": str(segment.layer), prefix + "LabelValue": str(segment.label_value),
            prefix + "Extent": extent,
            prefix + "Tags": f"TerminologyEntry:{segment.terminology}|" if segment.terminology else "|",
        })
    return fields


def read_segmentation(path: "os.PathLike[str] | str"
                      ) -> Tuple[List[Segment], np.ndarray, ImageGeometry, Optional[ImageGeometry]]:
    """(segments, layers (L, z, y, x), grid, the scan's grid it records or None) of a Slicer
    segmentation file (`slicer_reference`); `InputError` naming the file when it is not one."""
    image = read_sitk_image(path, layers=True)
    layers = sitk.GetArrayFromImage(image)
    layers = layers[np.newaxis] if image.GetNumberOfComponentsPerPixel() == 1 else np.moveaxis(layers, -1, 0)
    fields = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}
    segments = _segments(fields, len(layers), path)
    if not segments:
        raise InputError(f"{describe_path(path)}: names no segments (Segment0_ID ...); is it a Slicer segmentation?")
    return segments, layers, ImageGeometry.from_sitk(image), reference_geometry(fields)


def header_segments(path: "os.PathLike[str] | str") -> List[Segment]:
    """The segments the header of an NRRD file describes: a Slicer segmentation saved under any
    name (``case.nrrd``); [] for any other file, and for one whose header cannot be read (its
    reader says why)."""
    if not str(path).lower().endswith(NRRD_ENDINGS):
        return []
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError:
        return []
    fields = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    return _segments(fields, reader.GetNumberOfComponents(), path)


def is_slicer_segmentation(path: "os.PathLike[str] | str") -> bool:
    """A ``.seg.nrrd`` file, or an NRRD file whose header describes segments."""
    return is_segmentation_file(path) or bool(header_segments(path))


def _segments(fields: Dict[str, str], layer_count: int, path: "os.PathLike[str] | str") -> List[Segment]:
    """The segments described by a segmentation file's header fields, in order."""
    segments = []
    while f"Segment{len(segments)}_ID" in fields:
        index = len(segments)
        prefix = f"Segment{index}_"
        try:
            # Files from before Slicer 4.11 keep each segment in its own layer, as value 1.
            layer = int(fields.get(prefix + "Layer", index))
            value = int(fields.get(prefix + "LabelValue", 1))
        except ValueError:
            raise InputError(f"{describe_path(path)}: segment {index}'s layer or label value is not a number") from None
        if not 0 <= layer < layer_count:
            raise InputError(f"{describe_path(path)}: segment {index} is in layer {layer}, but the file has "
                             f"{layer_count} layer(s)")
        segment_id = fields[prefix + "ID"]
        segments.append(Segment(segment_id, fields.get(prefix + "Name") or segment_id, layer, value))
    return segments


def label_of(segment: Segment, names: Sequence[str]) -> Optional[str]:
    """The dataset label name a segment stands for, by its name or ID: the same words
    (``Left kidney`` / ``left_kidney``), or the same structure and side of the terminology table
    (``Left kidney`` / ``kidney_left``); None when no name matches."""
    for candidate in (segment.name, segment.id):
        for name in names:
            if dataset_label_key(candidate) == dataset_label_key(name):
                return name
    terminology = AnatomyTerminology()
    entry, side = terminology.match(segment.name)
    if entry is not None:
        for name in names:
            if terminology.match(name) == (entry, side):
                return name
    return None


def matched_segments(segments: Sequence[Segment], names: Sequence[str],
                     path: "os.PathLike[str] | str") -> Dict[str, Segment]:
    """Label name -> the segment standing for it (`label_of`); `InputError` naming the file and
    the segment for a segment no label name matches, or two segments matching one label."""
    found: Dict[str, Segment] = {}
    for segment in segments:
        label = label_of(segment, names)
        if label is None:
            raise InputError(f"{describe_path(path)}: segment '{segment.name}' matches none of the labels "
                             f"({', '.join(names)}); rename it to one of them")
        if label in found:
            raise InputError(f"{describe_path(path)}: segments '{found[label].name}' and '{segment.name}' both "
                             f"stand for label {label}; keep one")
        found[label] = segment
    return found


def read_dataset_label(path: "os.PathLike[str] | str", names: Dict[str, int]) -> Tuple[np.ndarray, ImageGeometry]:
    """A dataset's label map (`read_label`). One saved by Slicer as a segmentation (segments in
    its header) is renumbered by its segments' names to `names` (label name -> value): Slicer
    numbers segments in the order they were added, so one case's "Spleen" may hold 1 where the
    dataset's spleen is 2. Overlapping segments (several layers) are no label map: `InputError`."""
    segments = header_segments(path) if names else []
    layers = {segment.layer for segment in segments}
    if len(layers) > 1:
        raise InputError(f"{describe_path(path)}: is a 3D Slicer segmentation with overlapping segments "
                         f"({len(layers)} layers); a label map holds one label per voxel")
    labels, geometry = read_label(path)
    if not segments:
        return labels, geometry
    matched = matched_segments(segments, list(names), path)
    lookup = np.arange(max(int(labels.max(initial=0)), *(s.label_value for s in segments)) + 1, dtype=np.int16)
    for label, segment in matched.items():
        lookup[segment.label_value] = names[label]
    return lookup[labels], geometry


def dataset_label_names(labels: Dict[str, int], ignore_label: Optional[int], regions: bool) -> Dict[str, int]:
    """What a dataset's Slicer segmentations are renumbered to (`read_dataset_label`): its labels
    and the ``ignore`` label; nothing for a region dataset, whose values carry no names of their own."""
    if regions:
        return {}
    return {**labels, **({IGNORE_LABEL: ignore_label} if ignore_label is not None else {})}


def _lattice_mapping(source: ImageGeometry, target: ImageGeometry) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(axes, offset) with target index = axes @ source index + offset (ITK order x, y, z; axes a
    signed permutation, offset whole), when every source voxel is a voxel of `target`'s lattice
    (the same spacing and axes, perhaps reversed or swapped, the origin on a voxel centre); else None."""
    steps_source = source.direction_matrix * np.asarray(source.spacing)
    steps_target = target.direction_matrix * np.asarray(target.spacing)
    mapping = np.linalg.solve(steps_target, steps_source)
    offset = np.linalg.solve(steps_target, np.subtract(source.origin, target.origin))
    axes = np.rint(mapping)
    if (np.abs(mapping - axes).max() > AXIS_TOLERANCE or not np.array_equal(np.abs(axes).sum(0), np.ones(3))
            or not np.array_equal(np.abs(axes).sum(1), np.ones(3))
            or np.abs(offset - np.rint(offset)).max() > VOXEL_OFFSET_TOLERANCE):
        return None
    return axes, np.rint(offset)


def place_on_grid(mask: np.ndarray, source: ImageGeometry, target: ImageGeometry,
                  path: "os.PathLike[str] | str") -> Optional[np.ndarray]:
    """A mask (z, y, x) on `source` moved onto `target`, when every source voxel is a target voxel
    (`_lattice_mapping`): what Slicer's cropping and axis flips leave. None when the grids are not
    one lattice; `InputError` when the mask reaches outside the target."""
    lattice = _lattice_mapping(source, target)
    if lattice is None:
        return None
    axes, offset = lattice
    source_axis = [int(np.flatnonzero(row)[0]) for row in axes]   # the source axis of each target axis
    data = mask.transpose(2, 1, 0).transpose(source_axis)   # (x, y, z) in the target's axis order
    starts = []
    for axis, from_axis in enumerate(source_axis):
        start = int(np.rint(offset[axis]))
        if axes[axis, from_axis] < 0:   # reversed: the source's last voxel comes first
            data = np.flip(data, axis=axis)
            start -= source.size[from_axis] - 1
        starts.append(start)
    inside_source, inside_target = [], []
    for axis, start in enumerate(starts):
        low, high = max(start, 0), max(min(start + data.shape[axis], target.size[axis]), max(start, 0))
        inside_source.append(slice(low - start, high - start))
        inside_target.append(slice(low, high))
    kept = data[tuple(inside_source)]
    if np.count_nonzero(kept) != np.count_nonzero(data):
        raise InputError(f"{describe_path(path)}: its segments reach outside the grid of the image it is scored on")
    placed = np.zeros(target.size, dtype=mask.dtype)
    placed[tuple(inside_target)] = kept
    return placed.transpose(2, 1, 0)


def union_grid(first: ImageGeometry, second: ImageGeometry) -> Optional[ImageGeometry]:
    """The smallest grid on `first`'s lattice (its spacing and axes) holding every voxel of both
    grids, when `second`'s voxels are voxels of that lattice (`_lattice_mapping`); else None. Two
    segmentations of one scan, each saved by Slicer cropped to its own segments, meet on it."""
    lattice = _lattice_mapping(second, first)
    if lattice is None:
        return None
    axes, offset = lattice
    corners = np.array([(x, y, z) for x in (0, second.size[0] - 1) for y in (0, second.size[1] - 1)
                        for z in (0, second.size[2] - 1)], dtype=float)
    indices = corners @ axes.T + offset   # second's corner voxels as indices of first's grid
    low = np.minimum(indices.min(axis=0), 0)
    high = np.maximum(indices.max(axis=0), np.asarray(first.size) - 1)
    steps = first.direction_matrix * np.asarray(first.spacing)
    return ImageGeometry(high - low + 1, first.spacing, np.asarray(first.origin) + steps @ low, first.direction)


def _lattice_difference(first: ImageGeometry, second: ImageGeometry) -> str:
    """Why `second`'s voxels are not on `first`'s lattice, with the values, for a message."""
    differences = first.grid_differences(second)
    if "spacing" in differences:
        return f"spacing {by_x(second.spacing)} mm vs {by_x(first.spacing)} mm"
    if "direction" in differences:
        cosines = [", ".join(f"{v:.4g}" for v in grid.direction) for grid in (second, first)]
        return f"direction ({cosines[0]}) vs ({cosines[1]})"
    return f"origin ({by_x(second.origin)}) is not whole voxels away from ({by_x(first.origin)})"


@dataclass
class SegmentationMasks:
    """A segmentation file's segments as structures on one grid, for scoring. Each mask is made
    when asked for: 16 classes of a 512 x 512 x 600 scan keep one uint8 layer (157 MB), not 16
    boolean masks (2.5 GB)."""

    grid: ImageGeometry
    layers: np.ndarray                                 # (L, z, y, x)
    held_in: Dict[Tuple[int, ...], Tuple[int, int]]   # structure (label values) -> (layer, label value)
    reference: Optional[ImageGeometry] = None          # the scan's grid, where the file records it

    def mask(self, structure: Tuple[int, ...]) -> np.ndarray:
        """The voxels (z, y, x) of a structure; none for one no segment stands for."""
        if structure not in self.held_in:
            return np.zeros(self.grid.shape_zyx, bool)
        layer, value = self.held_in[structure]
        return self.layers[layer] == value

    def values(self, where: Optional[np.ndarray] = None) -> set:
        """No label values: each segment is a structure (a label map's values are scored on their own)."""
        return set()

    def on_grid(self, grid: ImageGeometry, path: "os.PathLike[str] | str") -> Optional["SegmentationMasks"]:
        """These segments on `grid`, when their voxels are its voxels (`place_on_grid`: Slicer's
        cropping and axis flips); None when the grids are not one lattice."""
        if self.grid.same_grid(grid):
            return self
        placed = [place_on_grid(layer, self.grid, grid, Path(path)) for layer in self.layers]
        if placed[0] is None:   # one lattice or not is the grids' property, the same for every layer
            return None
        return SegmentationMasks(grid, np.stack(placed), self.held_in, self.reference)


def segmentation_masks(path: "os.PathLike[str] | str", names: Dict[str, Tuple[int, ...]],
                       grid: Optional[ImageGeometry] = None) -> SegmentationMasks:
    """A segmentation file's segments, each matched to one of `names` (label name -> values); on
    `grid` when given and the file's voxels are its voxels, else on the file's own grid. `InputError`
    naming the file and the segment for a segment no label name matches, or two segments matching one."""
    segments, layers, own, reference = read_segmentation(path)
    if not names:
        raise InputError(f"{describe_path(path)}: a Slicer segmentation names its segments, not label values; "
                         "give --dataset-json (the model folder's dataset.json) to match them to the labels")
    held_in = {names[label]: (segment.layer, segment.label_value)
               for label, segment in matched_segments(segments, list(names), path).items()}
    masks = SegmentationMasks(own, layers, held_in, reference)
    placed = masks.on_grid(grid, path) if grid is not None else None
    return placed if placed is not None else masks


def segmentations_on_one_grid(first_path: "os.PathLike[str] | str", second_path: "os.PathLike[str] | str",
                              names: Dict[str, Tuple[int, ...]]) -> Tuple[SegmentationMasks, SegmentationMasks]:
    """Two segmentation files' segments (`segmentation_masks`) on one grid: the union of their
    extents on the first one's lattice. Slicer saves each segmentation cropped to its own
    segments, so two raters' files of one scan cover different boxes of it, and neither box need
    hold the other. `InputError` naming the second file when its voxels are not the first's
    lattice (another scan, another spacing): voxels compared one by one must be the same points."""
    first, second = segmentation_masks(first_path, names), segmentation_masks(second_path, names)
    union = union_grid(first.grid, second.grid)
    if union is None:
        raise InputError(f"{describe_path(second_path)}: two Slicer segmentations are compared voxel by voxel, but "
                         f"its voxels are not those of {describe_path(first_path)} "
                         f"({_lattice_difference(first.grid, second.grid)}); compare segmentations of one scan")
    first_placed, second_placed = first.on_grid(union, first_path), second.on_grid(union, second_path)
    assert first_placed is not None and second_placed is not None   # both lie on the union's lattice
    return first_placed, second_placed
