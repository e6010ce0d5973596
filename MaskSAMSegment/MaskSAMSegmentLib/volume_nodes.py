"""Slicer volume nodes <-> NumPy arrays with their exact LPS grid.

A volume node keeps its voxels in a vtkImageData (x fastest, so the flat buffer reshaped to
(z, y, x) is exactly SimpleITK's array order) and its placement in the IJKToRAS matrix; the
image data's own origin and spacing stay (0, 0, 0) and (1, 1, 1) by Slicer convention. A
linear parent transform is folded into the grid, because what the user sees (and what the
model must see) is the volume in world coordinates; a non-linear one must be hardened first.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import vtk
from vtk.util import numpy_support

from MaskSAMCore.errors import InputError
from MaskSAMSegmentLib.geometry import LpsGrid, grid_from_ijk_to_ras

# NumPy dtypes a labelmap may have in Slicer, smallest first.
_LABEL_DTYPES = (np.uint8, np.int16, np.int32)


def matrix_to_numpy(matrix: "vtk.vtkMatrix4x4") -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def numpy_to_matrix(array: np.ndarray) -> "vtk.vtkMatrix4x4":
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def local_to_world(node, what: str = "volume") -> np.ndarray:
    """4x4 from a node's own coordinates to world RAS: its linear parent transform, or identity."""
    transform_node = node.GetParentTransformNode()
    if transform_node is None:
        return np.eye(4)
    if not transform_node.IsTransformToWorldLinear():
        raise InputError(
            f"{what} '{node.GetName()}' is under the non-linear transform "
            f"'{transform_node.GetName()}'; harden the transform (Data module) first")
    to_world = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(to_world)
    return matrix_to_numpy(to_world)


def world_ijk_to_ras(node) -> np.ndarray:
    """4x4 IJK -> world RAS of a volume node, including a linear parent transform."""
    local = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(local)
    return local_to_world(node) @ matrix_to_numpy(local)


def volume_grid(node) -> LpsGrid:
    """The LPS grid of a volume node (world coordinates, parent transform included)."""
    image = node.GetImageData() if node is not None else None
    if image is None:
        name = node.GetName() if node is not None else "(none)"
        raise InputError(f"volume '{name}' has no image data")
    if 0 in image.GetDimensions():
        # An image data with no voxels (an empty extent) would reach the file writer otherwise.
        raise InputError(f"volume '{node.GetName()}' has no voxels (its image data is "
                         f"{'x'.join(str(n) for n in image.GetDimensions())})")
    # Slicer's readers make extents that start at 0, but a filter or script may leave one that does
    # not; voxel (0, 0, 0) of the array is then IJK (i0, j0, k0) of the node's IJK-to-RAS matrix.
    first_ijk = np.eye(4)
    first_ijk[:3, 3] = image.GetExtent()[0::2]
    try:
        return grid_from_ijk_to_ras(world_ijk_to_ras(node) @ first_ijk, image.GetDimensions())
    except ValueError as exc:
        raise InputError(f"volume '{node.GetName()}' cannot be placed in space: {exc}") from None


def volume_to_array(node) -> Tuple[np.ndarray, LpsGrid]:
    """A copy of a scalar volume's voxels as (z, y, x) plus its LPS grid."""
    grid = volume_grid(node)
    image = node.GetImageData()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise InputError(f"volume '{node.GetName()}' has no voxel values")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(
            f"volume '{node.GetName()}' has {scalars.GetNumberOfComponents()} components per voxel "
            "(colour or vector image); MaskSAM needs a scalar volume")
    values = numpy_support.vtk_to_numpy(scalars)
    if values.size != int(np.prod(grid.shape_zyx)):
        size = " x ".join(str(n) for n in reversed(grid.shape_zyx))
        raise InputError(f"volume '{node.GetName()}' holds {values.size} voxel values for its {size} voxels "
                         "(damaged image data)")
    return values.reshape(grid.shape_zyx).copy(), grid


def image_data_from_array(array: np.ndarray) -> "vtk.vtkImageData":
    """A vtkImageData holding a deep copy of a (z, y, x) array (origin 0, spacing 1)."""
    if array.ndim != 3:
        raise ValueError(f"expected a (z, y, x) array, got shape {array.shape}")
    contiguous = np.ascontiguousarray(array)
    image = vtk.vtkImageData()
    image.SetDimensions(contiguous.shape[2], contiguous.shape[1], contiguous.shape[0])
    scalars = numpy_support.numpy_to_vtk(contiguous.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def set_volume_grid(node, grid: LpsGrid) -> None:
    """Place a volume node on an LPS grid (sets IJKToRAS; the voxels are untouched)."""
    node.SetIJKToRASMatrix(numpy_to_matrix(grid.ijk_to_ras()))


def smallest_label_dtype(array: np.ndarray) -> np.dtype:
    """The smallest integer type Slicer labelmaps use that holds every value of `array`."""
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    for dtype in _LABEL_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise InputError(f"label values {low}..{high} do not fit a 32-bit label map")


def labelmap_node_from_array(labels: np.ndarray, grid: LpsGrid, scene=None,
                             name: str = "MaskSAM labels"):
    """A vtkMRMLLabelMapVolumeNode with `labels` (z, y, x) on `grid`.

    With `scene` None the node is not added to any scene (a temporary for the segmentation
    logic); the caller owns it.
    """
    import slicer  # only here: the rest of this file works with VTK alone

    if tuple(labels.shape) != grid.shape_zyx:
        raise InputError(f"label array shape {labels.shape} does not match its grid {grid.shape_zyx}")
    node = slicer.vtkMRMLLabelMapVolumeNode()
    node.SetName(name)
    node.SetAndObserveImageData(image_data_from_array(labels.astype(smallest_label_dtype(labels), copy=False)))
    set_volume_grid(node, grid)
    if scene is not None:
        scene.AddNode(node)
    return node


def array_from_labelmap_node(node, expected_grid: Optional[LpsGrid] = None) -> np.ndarray:
    """The (z, y, x) values of a labelmap node; checks its grid when `expected_grid` is given."""
    array, grid = volume_to_array(node)
    if expected_grid is not None and not grid.same_as(expected_grid):
        raise InputError(f"labelmap '{node.GetName()}' is on {grid.describe()}, "
                         f"expected {expected_grid.describe()}")
    return array


def first_scalar_volume(scene):
    """The first node of `scene` whose class is exactly vtkMRMLScalarVolumeNode, or None: the input
    volume to preselect. GetFirstNodeByClass would also return a labelmap or a vector volume (its
    subclasses), which the input selector does not show (nor nodes hidden from editors)."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetClassName() == "vtkMRMLScalarVolumeNode" and not node.GetHideFromEditors():
            return node
    return None
