"""The input volumes of a multi-channel model: one voxel grid for all, by the core's rule.

`masksam predict` refuses channel files whose headers differ from channel 0's by more than
`ImageGeometry.grid_differences` allows, and accepts those within it (float rounding between two
series of one scan). The Segment button applies that same rule to the chosen volumes, so the
module refuses exactly what the command line refuses, and says so in the button's tooltip
before anything runs, naming what differs and by how much. One volume chosen for two channels
is refused there too.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMSegmentLib.geometry import LpsGrid


def image_geometry(grid: LpsGrid) -> ImageGeometry:
    """The core's geometry of a module grid: both are LPS, in ITK order, row-major directions."""
    return ImageGeometry(grid.size, grid.spacing, grid.origin, grid.direction)


def _by_x(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.6g}" for v in values)


def _how_much(name: str, grid: LpsGrid, reference: LpsGrid) -> str:
    """One difference named by `grid_differences`, with its size: "origin differs by 5 mm"."""
    if name == "size":
        return f"size differs ({_by_x(grid.size)} voxels vs {_by_x(reference.size)})"
    if name == "spacing":
        return f"spacing differs ({_by_x(grid.spacing)} mm vs {_by_x(reference.spacing)} mm)"
    if name == "origin":
        distance = float(np.linalg.norm(np.subtract(grid.origin, reference.origin)))
        return f"origin differs by {distance:.4g} mm"
    # the largest angle between corresponding voxel axes
    cosines = np.clip(np.sum(grid.direction_matrix * reference.direction_matrix, axis=0), -1.0, 1.0)
    return f"direction differs by {float(np.degrees(np.arccos(cosines.min()))):.3g}°"


def grid_problem(volume_name: str, grid: LpsGrid, reference_name: str, reference: LpsGrid) -> Optional[str]:
    """Why a channel's volume cannot go with channel 0's (the core's rule and wording), or None."""
    differences = image_geometry(reference).grid_differences(image_geometry(grid))
    if not differences:
        return None
    amounts = ", ".join(_how_much(name, grid, reference) for name in differences)
    return (f"Volume '{volume_name}' is not on the grid of channel 0 ('{reference_name}'): its {amounts}; "
            f"all channels must share one voxel grid (resample it onto '{reference_name}' first).")


def channel_grid_problems(volumes: Sequence) -> List[str]:
    """One sentence per volume (channels 1, 2, ...) not on the grid of `volumes[0]` (channel 0);
    every volume must be placeable in space (checked before)."""
    from MaskSAMSegmentLib.volume_nodes import volume_grid  # needs VTK; keep module import light

    reference = volume_grid(volumes[0])
    problems = [grid_problem(volume.GetName(), volume_grid(volume), volumes[0].GetName(), reference)
                for volume in volumes[1:]]
    return [problem for problem in problems if problem is not None]


def repeated_volume_problems(volumes: Sequence, channel_names: Sequence[str]) -> List[str]:
    """One sentence per volume chosen for more than one channel: the model would see one image
    where it was trained on two (a second selector left on the first volume by mistake)."""
    problems: List[str] = []
    for index, volume in enumerate(volumes):
        if volume is None or any(other is volume for other in volumes[:index]):
            continue
        channels = [name for other, name in zip(volumes, channel_names) if other is volume]
        if len(channels) > 1:
            problems.append(f"'{volume.GetName()}' is chosen for both {' and '.join(channels)}; "
                            "choose one volume per channel.")
    return problems
