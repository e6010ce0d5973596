"""Which slices of a case a user drew on, for datasets annotated on some slices only.

A user who annotates sparsely paints a few slices in one slice view. Which array axis those slices
lie across depends on the view and on how the volume is stored (an MRI stored sagittally has its
K axis left-right), so the axis is read from the drawing itself. Along the axis drawn on, the
drawn slices leave gaps inside their range (every fifth slice), or the drawing ends abruptly (a
single slice, or a block of consecutive ones, cut out of the structure: its first and last slices
are as large as any); along the other two axes a drawn structure fills every slice it crosses and
tapers off at its edges.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

ARRAY_AXIS_NAMES = ("K", "J", "I")                       # label arrays are (z, y, x) = (K, J, I)
SLICE_NAMES_BY_LPS_AXIS = ("sagittal", "coronal", "axial")  # slices across L-R, P-A, S-I


@dataclass(frozen=True)
class DrawnSlices:
    """axis: the array axis (0, 1 or 2 of a (K, J, I) array) the user drew across.
    drawn: (n,) bool, True for each slice along that axis holding a segment voxel."""

    axis: int
    drawn: np.ndarray

    @property
    def axis_name(self) -> str:
        return ARRAY_AXIS_NAMES[self.axis]


def find_drawn_slices(labels: np.ndarray) -> DrawnSlices:
    """The axis of `labels` (K, J, I) whose slices the segments were drawn on.

    Per axis, compared in this order: the share of slices between the first and the last drawn
    one that are drawn (below one where the user skipped slices; smallest wins), how abruptly the
    drawing ends (its first and last slices' voxels over its largest slice's; largest wins), the
    share of all slices that are drawn (smallest wins); ties keep K, the stored slice axis.
    Without any segment voxel: K, nothing drawn.
    """
    best_key, best = None, None
    for axis in range(3):
        other_axes = tuple(a for a in range(3) if a != axis)
        voxels = np.count_nonzero(labels, axis=other_axes)    # per slice along `axis`
        indices = np.flatnonzero(voxels)
        if indices.size == 0:
            return DrawnSlices(0, np.zeros(labels.shape[0], dtype=bool))
        filled = indices.size / (indices[-1] - indices[0] + 1)
        abrupt = (voxels[indices[0]] + voxels[indices[-1]]) / (2 * voxels.max())
        key = (round(filled, 9), -round(abrupt, 9), round(indices.size / voxels.size, 9))
        drawn = voxels > 0
        if best_key is None or key < best_key:
            best_key, best = key, DrawnSlices(axis, drawn)
    return best


def mark_undrawn_slices(labels: np.ndarray, value: int) -> DrawnSlices:
    """Sets every slice without a segment voxel (across the drawn axis) to `value`, in place."""
    found = find_drawn_slices(labels)
    index = [slice(None)] * 3
    index[found.axis] = ~found.drawn
    labels[tuple(index)] = value
    return found


def slice_orientation(direction: np.ndarray, axis: int) -> str:
    """'axial', 'coronal' or 'sagittal': the nearest name for the slices across array axis `axis`
    (of a (K, J, I) array) of a volume whose 3x3 direction matrix (columns: the LPS unit vectors
    of i, j, k) is `direction`."""
    column = np.abs(np.asarray(direction, dtype=float)[:, 2 - axis])
    return SLICE_NAMES_BY_LPS_AXIS[int(np.argmax(column))]
