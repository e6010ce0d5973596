"""Label maps <-> segmentation nodes, through Slicer's segmentations logic.

Import: the core's label map (array + LPS grid) becomes a labelmap volume node that
`vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode` turns into one segment
per label, named and coloured from the model's labels (`terminology.py`). The segments are
built in a temporary node first and only then moved into the user's node, so a segmentation
being replaced is never left half-updated. A region model's regions overlap ("whole tumor"
holds "tumor core"): each is imported on its own, as a segment in a layer of its own.

Export: `ExportSegmentsToLabelmapNode` onto a reference volume's exact grid, the way the
Segmentations module's "Export to labelmap" does it (from staged copies one transform apart
when transforms are involved: Slicer's export mishandles nested ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import vtk
from vtk.util.numpy_support import vtk_to_numpy

import slicer

from MaskSAMCore.errors import InputError
from MaskSAMCore.terminology import AnatomyTerminology
from MaskSAMSegmentLib.geometry import LpsGrid
from MaskSAMSegmentLib.volume_nodes import (array_from_labelmap_node, labelmap_node_from_array, local_to_world,
                                            matrix_to_numpy, numpy_to_matrix, volume_grid)

# Node attributes recording which model made a segmentation (saved with the scene).
MODEL_NAME_ATTRIBUTE = "MaskSAM.ModelName"
MODEL_VERSION_ATTRIBUTE = "MaskSAM.ModelVersion"
MODEL_FOLDER_ATTRIBUTE = "MaskSAM.ModelFolder"
# Segment tags linking a segment back to the model's label.
LABEL_VALUE_TAG = "MaskSAM.LabelValue"
LABEL_NAME_TAG = "MaskSAM.LabelName"
REGION_VALUES_TAG = "MaskSAM.RegionValues"   # a region's segment: the label-map values it holds, "1,2,3"


@dataclass(frozen=True)
class SegmentSpec:
    """One segment `import_label_map` makes: what it is called and which voxels it holds."""

    value: int                              # the model's label value (LABEL_VALUE_TAG)
    name: str                               # the model's label name, or "Label N" for a value it lacks
    mask_values: Tuple[int, ...]            # the label-map values of its voxels: (value,), or a region's
    region_values: Optional[Tuple[int, ...]] = None   # a region's values (REGION_VALUES_TAG), else None


def import_label_map(
    scene,
    labels: np.ndarray,
    grid: LpsGrid,
    label_names: Mapping[int, str],
    segmentation_node=None,
    reference_volume=None,
    node_name: str = "MaskSAM segmentation",
    attributes: Optional[Mapping[str, str]] = None,
    terminology: Optional[AnatomyTerminology] = None,
    regions: Optional[Mapping[int, Sequence[int]]] = None,
):
    """One segment per label value (0 = background skipped) in a segmentation node; returns it.

    labels:            (z, y, x) integer label map on `grid`
    label_names:       label value -> the model's label name; every non-zero value gets a segment,
                       even when absent from `labels` (it is then empty), so the segment list always
                       shows what the model can find. Values in `labels` missing here become "Label N".
    segmentation_node: replace the segments of this node, or None to add a new node named `node_name`
    reference_volume:  the volume the labels were computed from (sets the segmentation's reference
                       geometry, so editing later happens on the input's grid)
    attributes:        node attributes to set (model name and version, ...)
    regions:           a region model's regions (`ModelInfo.region_values`): the value naming a region
                       in `label_names` -> the label-map values its voxels hold (whole tumor: 1, 2, 3;
                       tumor core: 2, 3). Each region is a segment of the voxels holding one of its
                       values (nnU-Net's reading of region predictions), so segments overlap; they
                       come in the order given (the painting order, later over earlier). Values of
                       `labels` in no region get a "Label N" segment each.
    """
    specs = _segment_specs(labels, label_names, regions)
    staging = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", node_name)
    staging.SetHideFromEditors(True)
    result = None
    try:
        if reference_volume is not None:
            staging.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        segment_ids = _add_empty_segments(staging.GetSegmentation(), specs, terminology or AnatomyTerminology())
        ijk_to_ras = _staging_ijk_to_ras(grid, segmentation_node)
        if regions is not None:
            # One import per region: segments imported together share a layer, where they could not overlap.
            for spec, segment_id in zip(specs, segment_ids):
                mask = np.isin(labels, spec.mask_values).astype(np.uint8)
                _import_labelmap(staging, mask, grid, ijk_to_ras, [segment_id], f"{node_name} labels")
        elif specs:
            renumbered = _renumbered(labels, [spec.value for spec in specs])
            _import_labelmap(staging, renumbered, grid, ijk_to_ras, segment_ids, f"{node_name} labels")
        result = _deliver(staging, segmentation_node, reference_volume)
        for key, value in (attributes or {}).items():
            result.SetAttribute(key, str(value))
        return result
    finally:
        if result is not staging:
            remove_with_display_nodes(scene, staging)


def _segment_specs(labels: np.ndarray, label_names: Mapping[int, str],
                   regions: Optional[Mapping[int, Sequence[int]]]) -> List[SegmentSpec]:
    """The segments to make, in order (see `import_label_map`): every non-zero value of
    `label_names` and `labels` in ascending order; for a region model its regions in their order,
    then the values of `labels` in no region. Negative values are refused."""
    found = {int(v) for v in np.unique(labels) if v != 0}
    if regions is None:
        values = sorted({int(v) for v in label_names if int(v) != 0} | found)
        specs = [SegmentSpec(value, label_names.get(value, f"Label {value}"), (value,)) for value in values]
    else:
        covered = {int(v) for region_values in regions.values() for v in region_values}
        strays = sorted(found - covered)
        specs = [SegmentSpec(int(key), label_names.get(int(key), f"Label {key}"), tuple(held),
                             tuple(int(v) for v in held))
                 for key, held in regions.items()]
        # A stray value that also names a region (one not holding its own value) keeps that region's tag.
        specs += [SegmentSpec(value, f"Label {value}", (value,), _region_values(regions, value)) for value in strays]
    negative = [spec.value for spec in specs if spec.value < 0]
    if negative:
        raise InputError(f"label map has negative label values {negative}")
    return specs


def _region_values(regions: Mapping[int, Sequence[int]], value: int) -> Optional[Tuple[int, ...]]:
    """The label-map values of the region named `value`, or None when no region has that name."""
    return tuple(int(v) for v in regions[value]) if value in regions else None


def _add_empty_segments(segmentation, specs: Sequence[SegmentSpec], terminology: AnatomyTerminology) -> List[str]:
    """One empty segment per spec in `segmentation` (a vtkSegmentation), named, coloured and
    tagged (terminology, label value and name, a region's values); returns their IDs in order."""
    styles = terminology.styles([(spec.name, spec.value) for spec in specs])
    segment_ids: List[str] = []
    for spec, style in zip(specs, styles):
        segment_id = segmentation.AddEmptySegment(_segment_id(spec.name, spec.value), style.name, style.color)
        segment = segmentation.GetSegment(segment_id)
        if style.terminology:
            segment.SetTag(segment.GetTerminologyEntryTagName(), style.terminology)
        segment.SetTag(LABEL_VALUE_TAG, str(spec.value))
        segment.SetTag(LABEL_NAME_TAG, spec.name)
        if spec.region_values is not None:
            segment.SetTag(REGION_VALUES_TAG, ",".join(str(v) for v in spec.region_values))
        segment_ids.append(segment_id)
    return segment_ids


def _staging_ijk_to_ras(grid: LpsGrid, segmentation_node) -> Optional[np.ndarray]:
    """The (4, 4) IJK-to-RAS matrix to stage label maps with when `segmentation_node` (being
    replaced) is under a transform, else None (the grid's own). Its segments are copied into the
    node as they are and its transform then moves them: staged in the node's own coordinates,
    they are not moved twice."""
    if segmentation_node is None or segmentation_node.GetParentTransformNode() is None:
        return None
    to_local = np.linalg.inv(local_to_world(segmentation_node, "segmentation"))
    return to_local @ grid.ijk_to_ras()


def _renumbered(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """`labels` (z, y, x) with the i-th of `values` (non-negative) as i + 1 (1..N) and every
    other value as 0: ImportLabelmapToSegmentationNode maps value i to the i-th segment ID,
    and label values need not be consecutive."""
    lookup = np.zeros(max(values) + 1, dtype=np.int32)
    for index, value in enumerate(values, start=1):
        lookup[value] = index
    return lookup[labels.astype(np.int64, copy=False)]


def _import_labelmap(staging, array: np.ndarray, grid: LpsGrid, ijk_to_ras: Optional[np.ndarray],
                     segment_ids: List[str], name: str) -> None:
    """ImportLabelmapToSegmentationNode: value i of `array` (z, y, x, on `grid`, or placed by
    `ijk_to_ras` when given) into the i-th of `segment_ids` of the `staging` node."""
    labelmap = labelmap_node_from_array(array, grid, scene=None, name=name)
    if ijk_to_ras is not None:
        labelmap.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras))
    id_array = vtk.vtkStringArray()
    for segment_id in segment_ids:
        id_array.InsertNextValue(segment_id)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, staging, id_array):
        raise InputError("Slicer could not import the label map into a segmentation")


def _deliver(staging, segmentation_node, reference_volume):
    """The finished segments as the user sees them: the `staging` node itself, shown, when no
    node is replaced; else `segmentation_node` with its segments replaced by a copy of them (the
    caller then removes the staging node). Returns the node delivered."""
    if segmentation_node is None:
        staging.SetHideFromEditors(False)
        staging.CreateDefaultDisplayNodes()
        return staging
    colours = _colours_by_label(segmentation_node.GetSegmentation())
    segmentation_node.GetSegmentation().DeepCopy(staging.GetSegmentation())
    _recolour(segmentation_node.GetSegmentation(), colours)
    if reference_volume is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    segmentation_node.CreateDefaultDisplayNodes()
    return segmentation_node


def _colour_keys(segmentation, index: int) -> List[str]:
    """How a segment is matched across runs: its model label (LABEL_NAME_TAG), then its ID."""
    label = segment_tag(segmentation.GetNthSegment(index), LABEL_NAME_TAG)
    return ([f"label:{label}"] if label else []) + [f"id:{segmentation.GetNthSegmentID(index)}"]


def _colours_by_label(segmentation) -> Dict[str, Tuple[float, float, float]]:
    """The colours of a result about to be replaced: the user may have chosen them (a colour is
    no edit of the result, so the next run replaces it), and segmenting again must keep them."""
    colours: Dict[str, Tuple[float, float, float]] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        for key in _colour_keys(segmentation, index):
            colours.setdefault(key, tuple(segmentation.GetNthSegment(index).GetColor()))
    return colours


def _recolour(segmentation, colours: Mapping[str, Tuple[float, float, float]]) -> None:
    for index in range(segmentation.GetNumberOfSegments()):
        kept = next((colours[key] for key in _colour_keys(segmentation, index) if key in colours), None)
        if kept is not None:
            segmentation.GetNthSegment(index).SetColor(*kept)


def file_beside(scene, node, volume) -> None:
    """Put NODE in VOLUME's folder of the Data module's tree (its patient's study, for a volume
    loaded from DICOM): Slicer files a new node at the top, and exporting a segmentation as DICOM
    SEG needs it inside the study of the image it was made on. Nothing happens for a volume not
    in the tree (slicer-core, which fills no tree by itself)."""
    tree = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    volume_item = tree.GetItemByDataNode(volume) if tree is not None else 0
    if not volume_item:
        return
    folder = tree.GetItemParent(volume_item)
    item = tree.GetItemByDataNode(node)
    if item:
        tree.SetItemParent(item, folder)
    else:
        tree.CreateItem(folder, node)


def remove_with_display_nodes(scene, node) -> None:
    """Remove a node and the display nodes it created (MRML leaves those behind otherwise)."""
    display_nodes = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    for child in display_nodes + [node]:
        if child is not None and child.GetScene() is scene:
            scene.RemoveNode(child)


def _segment_id(label_name: str, value: int) -> str:
    """A stable, readable segment ID: the label name, made unique by its value."""
    safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in label_name) or "label"
    return f"{safe}_{value}"


def segment_label_values(segmentation_node) -> Dict[str, int]:
    """segment ID -> the model's label value recorded on it (segments without one are skipped)."""
    segmentation = segmentation_node.GetSegmentation()
    result: Dict[str, int] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        text = segment_tag(segmentation.GetNthSegment(index), LABEL_VALUE_TAG)
        if text.strip().isdigit():
            result[segmentation.GetNthSegmentID(index)] = int(text)
    return result


def segment_tag(segment, name: str) -> str:
    """The value of a segment's tag, or "" when it has none."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def export_segments_on_volume(segmentation_node, reference_volume, segment_ids: Optional[List[str]] = None) -> np.ndarray:
    """Segments exported by the segmentations logic onto `reference_volume`'s grid: (z, y, x),
    value i+1 for the i-th of `segment_ids` (default: all segments in their order)."""
    segmentation = segmentation_node.GetSegmentation()
    if segment_ids is None:
        segment_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    grid = volume_grid(reference_volume)
    if not segment_ids:
        return np.zeros(grid.shape_zyx, dtype=np.uint8)
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        ids.InsertNextValue(segment_id)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene = segmentation_node.GetScene()
    if scene is None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' is no longer in the scene")
    colour_tables_before = _node_ids(scene, "vtkMRMLColorTableNode")
    scene.AddNode(labelmap)  # the export needs a node in the scene for its display/colour nodes
    staged: List = []
    try:
        source, reference = _one_transform_apart(scene, segmentation_node, reference_volume, segment_ids, staged)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            source, ids, labelmap, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        image = labelmap.GetImageData()
        if not ok or image is None or 0 in image.GetDimensions():   # it reports success after some failures
            raise InputError(f"Slicer could not export segmentation '{segmentation_node.GetName()}' "
                             f"onto volume '{reference_volume.GetName()}'{_why_not_exported(segmentation_node)}")
        return array_from_labelmap_node(labelmap, expected_grid=volume_grid(reference))   # = the volume's voxels
    finally:
        for node in [labelmap] + staged:
            remove_with_display_nodes(scene, node)
        # The export makes a colour table for the label map on every call; building a
        # dataset exports each segment of each case, which would fill the user's scene.
        for node_id in _node_ids(scene, "vtkMRMLColorTableNode") - colour_tables_before:
            scene.RemoveNode(scene.GetNodeByID(node_id))


def _why_not_exported(segmentation_node) -> str:
    """The likely reason an export failed, for the user: segments stored in a representation
    this Slicer cannot convert to a label map (planar contours without SlicerRT, say)."""
    stored_as = segmentation_node.GetSegmentation().GetSourceRepresentationName()
    if stored_as == slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName():
        return ""
    return f" (its segments are stored as '{stored_as}', which could not be converted to a label map)"


def _one_transform_apart(scene, segmentation_node, reference_volume, segment_ids: List[str], staged: List) -> tuple:
    """(segmentation, volume) to export with at most one linear transform between them.

    Slicer's export loses segments when more than one transform lies between the segmentation
    and the volume (a segmentation under transform A under transform B exported nothing onto
    the volume's grid, while one transform holding B @ A was exact; slicer-core 5.13). Under
    any transform, the export therefore works on staged copies: the segments under one
    transform from their coordinates to the volume's own, onto the volume's geometry without
    a transform. Only `segment_ids` are copied (a dataset exports one segment at a time). The
    staged nodes are appended to `staged` for the caller to remove."""
    if segmentation_node.GetParentTransformNode() is None and reference_volume.GetParentTransformNode() is None:
        return segmentation_node, reference_volume
    to_volume = (np.linalg.inv(local_to_world(reference_volume))
                 @ local_to_world(segmentation_node, "segmentation"))
    reference = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{reference_volume.GetName()} geometry")
    staged.append(reference)
    reference.CopyOrientation(reference_volume)
    reference.SetAndObserveImageData(reference_volume.GetImageData())   # shared, not copied
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "MaskSAM export transform")
    staged.append(transform)
    transform.SetMatrixTransformToParent(numpy_to_matrix(to_volume))
    source = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", segmentation_node.GetName())
    staged.append(source)
    for node in (reference, transform, source):
        node.SetHideFromEditors(True)
    original, copy = segmentation_node.GetSegmentation(), source.GetSegmentation()
    copy.SetSourceRepresentationName(original.GetSourceRepresentationName())
    copy.CopyConversionParameters(original)
    for segment_id in segment_ids:
        copy.CopySegmentFromSegmentation(original, segment_id)
    source.SetAndObserveTransformNodeID(transform.GetID())
    return source, reference


def _node_ids(scene, class_name: str) -> set:
    nodes = scene.GetNodesByClass(class_name)
    return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}


def segment_volume_mm3(segmentation_node, segment_id: str) -> Optional[float]:
    """The world volume (mm³) of a segment's binary-labelmap representation, including any
    scaling by the node's transform; None when the segment has no such representation (one
    drawn as a model only: converting it just to measure would be slow)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if image is None:
        return None
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return 0.0
    voxels = int(np.count_nonzero(vtk_to_numpy(scalars) == segment.GetLabelValue()))
    image_to_local = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_local)
    to_world = local_to_world(segmentation_node, "segmentation") @ matrix_to_numpy(image_to_local)
    return voxels * abs(float(np.linalg.det(to_world[:3, :3])))


def export_label_values_on_volume(segmentation_node, reference_volume) -> np.ndarray:
    """The model's label map recovered from a segmentation made by `import_label_map`:
    every segment exported onto `reference_volume`'s grid and given its recorded label value.
    A region model's overlapping segments are exported in their order, a later one over an
    earlier one: the regions painted as the model wrote them."""
    values = segment_label_values(segmentation_node)
    segment_ids = list(values)
    exported = export_segments_on_volume(segmentation_node, reference_volume, segment_ids)
    lookup = np.zeros(len(segment_ids) + 1, dtype=np.int32)
    for index, segment_id in enumerate(segment_ids, start=1):
        lookup[index] = values[segment_id]
    return lookup[exported.astype(np.int64)]


def made_for_another_volume(segmentation_node, volume) -> bool:
    """True when the segmentation's reference volume is not `volume`: a result for another scan,
    which a segmentation of `volume` never replaces (so the widget stops offering it as the
    output when the input volume changes). One without a reference volume belongs to none."""
    if segmentation_node is None:
        return False
    reference = segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())
    return reference is not None and reference is not volume


def show_in_3d(segmentation_node) -> bool:
    """Build the closed-surface representation so the segments appear in 3D views too."""
    return bool(segmentation_node.CreateClosedSurfaceRepresentation())
