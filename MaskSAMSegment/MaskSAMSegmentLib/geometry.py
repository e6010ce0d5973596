"""Image grids in the two world conventions that meet in this module: Slicer's RAS and ITK's LPS.

A Slicer volume node places voxel (i, j, k) at ``IJKToRAS @ (i, j, k, 1)`` in RAS millimetres
(x grows towards the patient's Right, y Anterior, z Superior). ITK, SimpleITK and every file
MaskSAMCore reads or writes use LPS (x Left, y Posterior, z Superior)::

    point_LPS = origin + direction @ diag(spacing) @ (i, j, k)
    point_RAS = diag(-1, -1, 1) @ point_LPS

so ``IJKToRAS = [[F D S, F o], [0, 1]]`` with ``F = diag(-1, -1, 1)``, D the 3x3 direction
(columns = unit axis vectors), S = diag(spacing) and o the LPS origin. Nothing here imports
Slicer or VTK: the conversion is plain NumPy so it can be tested and reused anywhere. A matrix
that places no volume (a zero axis, parallel axes) raises `ValueError` saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from MaskSAMCore.data.header_checks import parallel_axes

# Flips x and y: LPS <-> RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# Two grids are "the same" when they differ by less than this (mm, or unitless for directions):
# files store geometry as text or float32, so exact equality is too strict.
GRID_TOLERANCE = 1e-4


@dataclass(frozen=True)
class LpsGrid:
    """Where a voxel array sits in LPS world space, in ITK order.

    size:      voxels along (x, y, z) = (i, j, k); the NumPy array of the image is (z, y, x)
    spacing:   mm between voxel centres along (i, j, k)
    origin:    LPS position (mm) of the centre of voxel (0, 0, 0)
    direction: 3x3 matrix, row-major, whose *columns* are the LPS unit vectors of i, j, k
    """

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]  # 9 values, row-major

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        """The NumPy shape of an array on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix from voxel indices (i, j, k) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix from voxel indices to RAS millimetres (Slicer's IJKToRAS)."""
        flip = np.eye(4)
        flip[:3, :3] = LPS_TO_RAS
        return flip @ self.ijk_to_lps()

    def same_as(self, other: "LpsGrid", tolerance: float = GRID_TOLERANCE) -> bool:
        """True when both grids put every voxel at the same world position."""
        return tuple(self.size) == tuple(other.size) and bool(
            np.allclose(self.ijk_to_lps(), other.ijk_to_lps(), atol=tolerance)
        )

    def describe(self) -> str:
        """One line for messages: size, spacing and origin."""
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.4g}" for o in self.origin)
        return f"{'x'.join(str(n) for n in self.size)} voxels, spacing ({spacing}) mm, LPS origin ({origin})"


def grid_from_ijk_to_ras(ijk_to_ras: np.ndarray, size_xyz: Sequence[int]) -> LpsGrid:
    """The LPS grid of a Slicer volume whose IJKToRAS matrix (4x4) and dimensions (x, y, z) are given.

    Spacing is the length of each column of the 3x3 part; the direction is what remains once
    the spacing is divided out, flipped to LPS. A mirrored grid (negative determinant) is kept
    as it is: ITK directions may be improper too. `ValueError` for a matrix with a zero,
    non-finite or (nearly) parallel axes, which places no volume.
    """
    matrix = np.asarray(ijk_to_ras, dtype=float).reshape(4, 4)
    linear_lps = LPS_TO_RAS @ matrix[:3, :3]
    spacing = np.linalg.norm(linear_lps, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"its IJK to RAS matrix has a zero or non-finite axis: {matrix.tolist()}")
    direction = linear_lps / spacing
    reason = parallel_axes(direction)
    if reason:
        raise ValueError(f"its IJK to RAS matrix {reason}")
    origin = LPS_TO_RAS @ matrix[:3, 3]
    return LpsGrid(
        size=tuple(int(n) for n in size_xyz),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=tuple(float(d) for d in direction.ravel()),
    )
