"""Bringing a voxel array to LPS voxel order: the nearest axis-aligned order, by transposing and
reversing array axes only (views, no interpolation), and back.

The network works in voxel order. A scan stored with an axis reversed (a left-handed grid, RAS
storage) or with its axes in another order (an MRI stored sagittally or coronally, a volume with
x and y swapped) would otherwise reach it mirrored or turned relative to the scans it was trained
on, and be segmented badly without any warning. After `lps_reorientation`, array axes (z, y, x)
= (0, 1, 2) are the voxel axes closest to the patient's superior, posterior and left (ITK x
closest to L, y to P, z to S), each pointing that way; the grid itself is untouched, so the
result is undone exactly (`Reorientation.undo`, `undo_reorientation`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:   # NumPy only at run time: training's mirroring rule imports this module
    from MaskSAMCore.data.image_io import ImageGeometry

# After reorientation the patient's left-right runs along array axis 2 (x) of every case.
LEFT_RIGHT_ARRAY_AXIS = 2
# Assignments scoring within this of the best count as ties; ties keep the stored order.
_TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Reorientation:
    """How an array (..., z, y, x) is brought to LPS voxel order:
    ``np.flip(np.transpose(array, axes), flipped)`` on its last three axes.

    axes: reoriented array axis k is original array axis ``axes[k]`` (0, 1, 2 = z, y, x);
    flipped: the reoriented array axes then reversed (sorted).
    """

    axes: Tuple[int, int, int] = (0, 1, 2)
    flipped: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(int(a) for a in self.axes))
        object.__setattr__(self, "flipped", tuple(sorted(int(a) for a in self.flipped)))
        if sorted(self.axes) != [0, 1, 2] or not set(self.flipped) <= {0, 1, 2}:
            raise ValueError(f"not a reorientation: axes {self.axes}, flipped {self.flipped}")

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not self.flipped

    def apply(self, array: np.ndarray) -> np.ndarray:
        """(..., z, y, x) on the original grid -> (..., z', y', x') in LPS voxel order (a view)."""
        if self.is_identity:
            return array
        offset = array.ndim - 3
        moved = np.transpose(array, list(range(offset)) + [offset + a for a in self.axes])
        return np.flip(moved, [offset + a for a in self.flipped]) if self.flipped else moved

    def undo(self, array: np.ndarray) -> np.ndarray:
        """(..., z', y', x') in LPS voxel order -> (..., z, y, x) on the original grid (contiguous
        unless nothing was changed)."""
        if self.is_identity:
            return array
        offset = array.ndim - 3
        unflipped = np.flip(array, [offset + a for a in self.flipped]) if self.flipped else array
        backward = [offset + int(a) for a in np.argsort(self.axes)]
        return np.ascontiguousarray(np.transpose(unflipped, list(range(offset)) + backward))

    def order(self, values_zyx: Sequence[Any]) -> Tuple[Any, ...]:
        """Per-axis values (spacing, shape) in array order (z, y, x) -> in the reoriented order."""
        return tuple(values_zyx[a] for a in self.axes)

    def to_dict(self) -> Dict[str, Any]:
        return {"axes": list(self.axes), "flipped": list(self.flipped)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Reorientation":
        return cls(tuple(data["axes"]), tuple(data["flipped"]))


def lps_reorientation(geometry: ImageGeometry) -> Reorientation:
    """The transpose and flips that bring arrays on `geometry` to LPS voxel order.

    Each voxel axis is assigned a distinct patient axis (L, P, S) so that the sum of the
    |components| of the voxel axes' directions along their patient axes is largest (the best of
    the 6 assignments): an oblique scan goes to the order it is closest to, and two voxel axes
    never claim the same patient axis, as a per-axis "largest component" could for strongly
    oblique or sheared grids. An axis is reversed when its direction has a negative component
    along its patient axis.

    Near 45 degrees two assignments score almost alike and a small tilt decides: a scan turned 44
    degrees in-plane keeps its stored order, one turned 46 degrees has its array turned by 90
    degrees (two axes swapped, one reversed); exact ties (within 1e-6) keep the stored order.
    Either way such a scan reaches the network up to 45 degrees from the orientation it was
    trained on; without resampling no voxel order does better.
    """
    direction = geometry.direction_matrix   # direction[p, i]: LPS component p of ITK axis i
    scores = []
    for patient_of in itertools.permutations(range(3)):   # patient_of[i]: patient axis of ITK axis i
        scores.append((sum(abs(direction[patient_of[i], i]) for i in range(3)), patient_of))
    best = max(score for score, _ in scores)
    # The first assignment close to the best: itertools yields the stored order (identity) first.
    patient_of = next(assignment for score, assignment in scores if score >= best - _TIE_TOLERANCE)
    axes = [0, 0, 0]
    flipped = []
    for itk_axis, patient_axis in enumerate(patient_of):
        # ITK axis i is array axis 2 - i; the patient's L, P, S are reoriented array axes 2, 1, 0.
        axes[2 - patient_axis] = 2 - itk_axis
        if direction[patient_axis, itk_axis] < 0:
            flipped.append(2 - patient_axis)
    return Reorientation(tuple(axes), tuple(flipped))


def plan_reorientation(plan: Dict[str, Any], geometry: ImageGeometry) -> Reorientation:
    """`lps_reorientation(geometry)` for plans with ``reorient_to_lps`` (every plan made since it
    exists); plans made before it keep the stored voxel order."""
    return lps_reorientation(geometry) if plan.get("reorient_to_lps", False) else Reorientation()


def undo_reorientation(array: np.ndarray, properties: Dict[str, Any]) -> np.ndarray:
    """An array (..., z', y', x') on the grid `preprocess_case` cropped (LPS voxel order) back in
    the input's own voxel order (..., z, y, x), by ``properties["reorientation"]`` (absent:
    nothing to undo)."""
    recorded = properties.get("reorientation")
    return Reorientation.from_dict(recorded).undo(array) if recorded else array
