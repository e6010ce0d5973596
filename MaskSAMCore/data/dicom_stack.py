"""Whether slice positions make one regular stack: even steps along the slice normal, and no
sideways drift but an even one (a CT gantry tilt). Geometry of the positions alone; `dicom_series`
takes the positions from the headers and names the series in its messages.

How uneven the steps may be: exported positions are rounded, some exporters and anonymisers to
two decimals (0.01 mm). Along an oblique normal each position is then off by up to
sqrt(3) x 0.005 mm, a step between neighbours by up to 0.017 mm: 3.5 % of a 0.5 mm step, where
1 % of a 5 mm step is 0.05 mm. So a step may differ from the grid's by 1 % of it or 0.02 mm,
whichever is more. 3D Slicer warns beyond 0.01 mm and resamples, dcm2niix accepts 0.2 mm; a
stack rounded so is read on the grid from its first slice to its last, as exactly as it allows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from MaskSAMCore.errors import InputError

SPACING_TOLERANCE = 0.01   # of the step
SPACING_TOLERANCE_MM = 0.02
# The stack may drift sideways by a tenth of a pixel (positions and orientations rounded).
SIDEWAYS_TOLERANCE_PIXELS = 0.1
# A widest step this close (in steps) to 2, 3, ... typical ones looks like slices left out.
MISSING_SLICE_TOLERANCE = 0.1


def uneven_steps(along: np.ndarray, step: float) -> bool:
    """True when a step between neighbouring slices (`along`: their sorted positions on the slice
    normal) differs from the grid's `step` by more than rounded positions explain, or a slice
    lies that far off the grid (small steps that add up: the grid would drift from the slices)."""
    grid = along[0] + step * np.arange(len(along))
    off = max(float(np.abs(np.diff(along) - step).max()), float(np.abs(along - grid).max()))
    return off > max(SPACING_TOLERANCE * step, SPACING_TOLERANCE_MM)


def widest_step(names: Sequence[str], along: np.ndarray) -> str:
    """The two slices around the widest step, by name and position (`along`: the sorted positions
    on the slice normal, `names` in that order), since PACS file names (UIDs) do not show which
    slices are neighbours; and whether a slice seems to be missing there: only when the widest
    step is about twice (or three times, ...) the typical one."""
    steps = np.diff(along)
    widest = int(np.argmax(steps))
    multiple = float(steps[widest] / np.median(steps))
    missing = round(multiple) >= 2 and abs(multiple - round(multiple)) <= MISSING_SLICE_TOLERANCE
    why = "a missing slice?" if missing else "slices at uneven distances"
    return (f"widest ({steps[widest]:.4g} mm) between {names[widest]} and {names[widest + 1]} "
            f"(at {along[widest]:.4g} and {along[widest + 1]:.4g} mm along the slice normal: {why})")


def stack_lean(name: str, positions: np.ndarray, along: np.ndarray, normal: np.ndarray,
               tolerance_mm: float) -> np.ndarray:
    """How far the stack moves sideways per mm along the slice normal: zero for a straight stack,
    a constant vector for a gantry tilt (every slice shifted alike from the one before). Slices
    off that straight line by more than `tolerance_mm` make the series (`name`) no volume at all."""
    depth = along - along[0]
    sideways = positions - positions[:1] - np.outer(depth, normal)   # (n, 3), perpendicular to the normal
    if float(np.linalg.norm(sideways, axis=1).max()) <= tolerance_mm:
        return np.zeros(3)
    lean = depth @ sideways / float(depth @ depth)   # least squares: sideways[k] ~ depth[k] * lean
    off = float(np.linalg.norm(sideways - np.outer(depth, lean), axis=1).max())
    if off > tolerance_mm:
        raise InputError(f"{name}: its slices are shifted sideways unevenly (up to {off:.3g} mm off a straight "
                         "or evenly tilted stack); the series does not form one volume")
    if float(np.linalg.norm(lean)) > 1.0:
        raise InputError(f"{name}: its slices are shifted sideways more than they lie apart (a tilt over 45 "
                         "degrees); the series does not form one volume")
    return lean
