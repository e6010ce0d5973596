"""A synthetic abdominal CT slab: body, five labelled organs and a vertebra, in Hounsfield units.

Everything is laid out in millimetres relative to the body, in LPS patient axes (x towards the
patient's left, y posterior, z superior), and then sampled on the case's voxel grid, so a case
with finer spacing shows the same anatomy with more voxels. Organs are ellipsoids deformed by a
smooth random field, with per-case jitter of position, size and orientation, and sometimes one
organ missing (as after a nephrectomy or splenectomy), which teaches a model not to predict a
structure everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from MaskSAMCore.data.resampling import resample_array

PHANTOM_LABELS: Dict[str, int] = {
    "background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4, "aorta": 5,
}
OPTIONAL_ORGANS = ("spleen", "kidney_left", "kidney_right")
MISSING_ORGAN_PROBABILITY = 0.15

AIR_HU, FAT_HU, MUSCLE_HU, CAVITY_HU, BONE_HU = -1000.0, -100.0, 40.0, 5.0, 600.0


@dataclass(frozen=True)
class Ellipsoid:
    """An organ in body units: centre as fractions of the body's semi-axes (x, y) and of the
    slab's half height (z); semi-axes in the same units."""

    name: str
    centre: Tuple[float, float, float]
    semi_axes: Tuple[float, float, float]
    hu: float


# Placed like a radiologist would expect on an axial slice (patient's right = -x in LPS).
ORGANS = (
    Ellipsoid("liver", (-0.42, -0.05, 0.25), (0.40, 0.55, 0.60), 60.0),
    Ellipsoid("spleen", (0.55, 0.30, 0.35), (0.17, 0.28, 0.40), 50.0),
    Ellipsoid("kidney_right", (-0.42, 0.48, -0.15), (0.17, 0.24, 0.42), 150.0),
    Ellipsoid("kidney_left", (0.42, 0.48, -0.10), (0.17, 0.24, 0.42), 150.0),
)
AORTA_CENTRE, AORTA_RADIUS, AORTA_HU = (0.10, 0.28), 0.10, 200.0
VERTEBRA_CENTRE, VERTEBRA_SEMI_AXES = (0.0, 0.70), (0.15, 0.17)


def synthesize_case(rng: np.random.Generator, shape_zyx: Sequence[int], spacing_zyx: Sequence[float],
                    missing: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One phantom on a grid of `shape_zyx` voxels of `spacing_zyx` mm.

    Returns (image (z, y, x) int16 HU, labels (z, y, x) uint8 with `PHANTOM_LABELS` values).
    `missing` names an organ of `OPTIONAL_ORGANS` to leave out."""
    shape = tuple(int(n) for n in shape_zyx)
    z, y, x = _coordinates(shape, spacing_zyx)
    fov_x, fov_y = shape[2] * spacing_zyx[2], shape[1] * spacing_zyx[1]
    half_height = shape[0] * spacing_zyx[0] / 2.0
    semi_a = 0.40 * fov_x * rng.uniform(0.94, 1.06)                         # body half-width, mm
    semi_b = min(0.31 * fov_x, 0.44 * fov_y) * rng.uniform(0.94, 1.06)     # body half-depth, mm
    x = x - rng.uniform(-0.04, 0.04) * semi_a
    y = y - rng.uniform(-0.04, 0.04) * semi_b
    u, v, w = x / semi_a, y / semi_b, z / half_height                       # body units

    taper = 1.0 - 0.06 * w ** 2                                             # slightly narrower at the ends
    body_r = np.sqrt((u / taper) ** 2 + (v / taper) ** 2)
    body = body_r <= 1.0
    fat_thickness = rng.uniform(0.08, 0.14)
    inner = body_r <= 1.0 - fat_thickness                                  # inside subcutaneous fat
    cavity = body_r <= 1.0 - fat_thickness - rng.uniform(0.05, 0.08)       # inside the muscle wall

    image = np.full(shape, AIR_HU, dtype=np.float32)
    image[body] = FAT_HU + rng.uniform(-10, 10)
    image[inner] = MUSCLE_HU
    image[cavity] = CAVITY_HU                                              # bowel and mesenteric fat, mixed
    image += np.where(cavity, 15.0 * _smooth_field(rng, shape, 6), 0.0)      # bowel-like texture
    labels = np.zeros(shape, dtype=np.uint8)

    for organ in ORGANS:
        if organ.name == missing:
            continue
        mask = _deformed_ellipsoid(rng, organ, u, v, w, shape) & cavity
        image[mask] = organ.hu + rng.uniform(-6, 6)
        labels[mask] = PHANTOM_LABELS[organ.name]
        if organ.name.startswith("kidney"):
            medulla = _deformed_ellipsoid(rng, organ, u, v, w, shape, scale=0.55) & mask
            image[medulla] = 100.0 + rng.uniform(-8, 8)

    aorta = _aorta(rng, u, v, w, semi_a, semi_b) & cavity
    image[aorta] = AORTA_HU + rng.uniform(-20, 20)
    labels[aorta] = PHANTOM_LABELS["aorta"]

    vertebra = (((u - VERTEBRA_CENTRE[0]) / VERTEBRA_SEMI_AXES[0]) ** 2
                + ((v - VERTEBRA_CENTRE[1]) / VERTEBRA_SEMI_AXES[1]) ** 2) <= 1.0
    vertebra = vertebra & inner  # the (y, x) cross-section, broadcast along z
    image[vertebra] = BONE_HU + rng.uniform(-40, 40)
    labels[vertebra] = 0  # bone is visible but not a labelled structure

    # Partial volume at edges, smooth scanner inhomogeneity inside the body, then quantum noise.
    in_plane_sigma = 0.6
    image = ndimage.gaussian_filter(image, sigma=(0.4, in_plane_sigma, in_plane_sigma))
    image += np.where(body, 20.0 * _smooth_field(rng, shape, 3), 0.0)
    image += rng.normal(0.0, rng.uniform(15.0, 25.0), size=shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return image, labels


def _coordinates(shape: Tuple[int, int, int], spacing_zyx: Sequence[float]):
    """Millimetres from the volume centre along z, y, x, as broadcastable open grids."""
    grids = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    return tuple((g - (n - 1) / 2.0) * s for g, n, s in zip(grids, shape, spacing_zyx))


def _smooth_field(rng: np.random.Generator, shape: Tuple[int, int, int], coarse: int) -> np.ndarray:
    """A smooth random field of about unit amplitude: coarse Gaussian noise, cubic upsampling."""
    grid = rng.normal(0.0, 1.0, size=(max(2, coarse // 2), coarse, coarse)).astype(np.float32)
    return resample_array(grid, shape, (3, 3, 3))


def _deformed_ellipsoid(rng: np.random.Generator, organ: Ellipsoid, u: np.ndarray, v: np.ndarray,
                        w: np.ndarray, shape: Tuple[int, int, int], scale: float = 1.0) -> np.ndarray:
    """Boolean mask of `organ` with random shift, size, in-plane rotation and a smooth bulge."""
    cu, cv, cw = (c + rng.uniform(-0.05, 0.05) for c in organ.centre)
    su, sv, sw = (s * scale * rng.uniform(0.85, 1.15) for s in organ.semi_axes)
    angle = np.deg2rad(rng.uniform(-15, 15))
    du, dv = u - cu, v - cv
    ru = np.cos(angle) * du + np.sin(angle) * dv
    rv = -np.sin(angle) * du + np.cos(angle) * dv
    radius = np.sqrt((ru / su) ** 2 + (rv / sv) ** 2 + ((w - cw) / sw) ** 2)
    bulge = 1.0 + 0.12 * _smooth_field(rng, shape, 4)
    return radius * bulge <= 1.0


def _aorta(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, w: np.ndarray, semi_a: float,
           semi_b: float) -> np.ndarray:
    """A gently curving tube along z; radius in units of the body half-width."""
    radius = AORTA_RADIUS * rng.uniform(0.85, 1.15)
    sway = rng.uniform(-0.04, 0.04)
    cu = AORTA_CENTRE[0] + sway * np.sin(np.pi * w / 2)
    cv = AORTA_CENTRE[1] + rng.uniform(-0.03, 0.03)
    du = u - cu
    dv = (v - cv) * semi_b / semi_a  # a round cross-section in millimetres
    return (du ** 2 + dv ** 2) <= radius ** 2
