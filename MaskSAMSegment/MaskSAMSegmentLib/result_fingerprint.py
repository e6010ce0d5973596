"""Whether a segmentation still holds what MaskSAM wrote into it, or was edited since.

Segmenting again replaces the segments of the chosen output segmentation (the widget selects
the last result). A clinician may have corrected that result in Segment Editor in the meantime;
those corrections must never be replaced silently. So, when a result is imported, a fingerprint
of its content is stored as a node attribute (saved with the scene), and the next run compares
it with the content found then.

The fingerprint covers what an edit changes: the segments, their order and names, and each
segment's voxels (binary labelmap) placed in space. It leaves out what changes without an
edit: display properties and colours (the node's MTime changes for those), a closed surface
built for 3D, the labelmap's extent (padding with empty voxels, or cropping to the content on
saving) and the label value and layer a segment is stored in (Slicer merges layers on saving).
"""

from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
import vtk
from vtk.util.numpy_support import vtk_to_numpy

import slicer

from MaskSAMSegmentLib.volume_nodes import matrix_to_numpy

FINGERPRINT_ATTRIBUTE = "MaskSAM.ContentFingerprint"
# World positions are compared to 1/1000 mm, directions and spacings to 1e-6: a labelmap's
# geometry written to a .seg.nrrd and read back must not count as an edit.
_POSITION_DECIMALS = 3
_AXIS_DECIMALS = 6


def content_fingerprint(segmentation_node) -> str:
    """A SHA-256 over the segments' names and voxels, in segment order."""
    segmentation = segmentation_node.GetSegmentation()
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    digest = hashlib.sha256()
    # Segments stored as surfaces (changed in the Segmentations module) are not MaskSAM's labelmaps any more.
    digest.update(f"source:{segmentation.GetSourceRepresentationName()}".encode("utf-8"))
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        digest.update(f"\0segment:{segment.GetName()}\0".encode("utf-8"))
        digest.update(_mask_bytes(segment.GetRepresentation(labelmap_name), segment.GetLabelValue()))
    return digest.hexdigest()


def _mask_bytes(image, label_value: int) -> bytes:
    """The segment's voxels cropped to their bounding box, with the world position of that box
    and the voxel axes: the same bytes whatever extent or layer holds the segment."""
    if image is None:
        return b"no labelmap"
    scalars = image.GetPointData().GetScalars()
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    if scalars is None or x1 < x0 or y1 < y0 or z1 < z0:
        return b"empty"
    mask = vtk_to_numpy(scalars).reshape(z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1) == label_value
    if not mask.any():
        return b"empty"
    first, last = zip(*((spots[0], spots[-1]) for spots in
                        (np.flatnonzero(mask.any(axis=others)) for others in ((1, 2), (0, 2), (0, 1)))))
    box = mask[first[0]:last[0] + 1, first[1]:last[1] + 1, first[2]:last[2] + 1]
    image_to_node = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_node)
    matrix = matrix_to_numpy(image_to_node)
    corner = matrix @ np.array([x0 + first[2], y0 + first[1], z0 + first[0], 1.0])
    # + 0.0 turns a rounded -0.0 into 0.0, whose bytes differ
    placement = np.concatenate([np.round(matrix[:3, :3].ravel(), _AXIS_DECIMALS),
                                np.round(corner[:3], _POSITION_DECIMALS)]) + 0.0
    return placement.tobytes() + np.array(box.shape, dtype=np.int64).tobytes() + np.packbits(box).tobytes()


def record_fingerprint(segmentation_node) -> None:
    """Remember the content MaskSAM has just written (called right after importing a result)."""
    segmentation_node.SetAttribute(FINGERPRINT_ATTRIBUTE, content_fingerprint(segmentation_node))


def edit_warning(segmentation_node) -> Optional[str]:
    """Why a MaskSAM result must not be replaced (its content is not what MaskSAM recorded), as a
    warning for the log; None when it may be replaced."""
    name = segmentation_node.GetName()
    recorded = segmentation_node.GetAttribute(FINGERPRINT_ATTRIBUTE)
    if not recorded:
        return (f"segmentation '{name}' was made by an earlier MaskSAM version, which did not record whether it "
                "gets edited; the new result is a new segmentation, its segments are kept")
    if recorded != content_fingerprint(segmentation_node):
        return (f"segmentation '{name}' was edited after MaskSAM made it; the new result is a new segmentation, "
                "your edits are kept")
    return None
