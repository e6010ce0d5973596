"""Data augmentation with nnU-Net's transforms and probabilities, in NumPy/SciPy.

Per training patch, in this order (probabilities per patch unless noted):

- rotation p=0.2, +-30 degrees; scaling p=0.2, factor 0.7-1.4 (> 1 zooms out). Image and labels
  go through the *same* affine map: images linear, labels nearest neighbour, so they stay aligned;
- Gaussian noise p=0.1, standard deviation 0-0.1 (images are normalised, so about 0-10 % of the
  foreground spread);
- Gaussian blur p=0.2, sigma 0.5-1 voxel, each channel with p=0.5;
- brightness p=0.15, x 0.75-1.25; contrast p=0.15, 0.75-1.25 around the mean, range kept;
- low resolution p=0.25, each channel with p=0.5: down to 0.5-1 of the size (nearest), back up
  (cubic);
- gamma on the inverted image p=0.1, then gamma p=0.3, gamma 0.7-1.5, mean and std kept;
- mirroring along each axis with p=0.5.

When the patch is flat (T much smaller than H, W: more than 3x) or the data anisotropic, spatial
transforms, blur and low resolution act in-plane only (nnU-Net's "dummy 2D" augmentation):
rotating 4 slices out of their plane would mostly rotate in padding.

A spatial transform is a 3x3 matrix mapping output patch coordinates (voxels, relative to the
patch centre) to input coordinates (relative to the same centre in the source region); the
caller extracts a source region with `region_margin` extra voxels per side so the corners are
filled with real image wherever the volume is large enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from MaskSAMCore.data.resampling import resample_array


@dataclass(frozen=True)
class AugmentationSettings:
    """Probabilities and ranges; the defaults are nnU-Net v2's."""

    rotation_p: float = 0.2
    rotation_max_degrees: float = 30.0
    scale_p: float = 0.2
    scale_range: Tuple[float, float] = (0.7, 1.4)
    noise_p: float = 0.1
    noise_std_range: Tuple[float, float] = (0.0, 0.1)
    blur_p: float = 0.2
    blur_sigma_range: Tuple[float, float] = (0.5, 1.0)
    blur_p_per_channel: float = 0.5
    brightness_p: float = 0.15
    brightness_range: Tuple[float, float] = (0.75, 1.25)
    contrast_p: float = 0.15
    contrast_range: Tuple[float, float] = (0.75, 1.25)
    low_resolution_p: float = 0.25
    low_resolution_zoom_range: Tuple[float, float] = (0.5, 1.0)
    low_resolution_p_per_channel: float = 0.5
    gamma_inverted_p: float = 0.1
    gamma_p: float = 0.3
    gamma_range: Tuple[float, float] = (0.7, 1.5)
    mirror_p: float = 0.5
    mirror_axes: Tuple[int, ...] = (0, 1, 2)
    # Interpolation of images in spatial transforms (labels: always 0). Linear, as nnU-Net v2's
    # grid_sample-based transform: cubic costs about 5x more for no visible benefit in training.
    image_order: int = 1

    @classmethod
    def none(cls) -> "AugmentationSettings":
        """No augmentation at all (all probabilities 0)."""
        return cls().only()

    def only(self, **probabilities: float) -> "AugmentationSettings":
        """These settings with every probability 0 except the ones given (for tests and ablations)."""
        zeros = {name: 0.0 for name in ("rotation_p", "scale_p", "noise_p", "blur_p", "brightness_p", "contrast_p",
                                        "low_resolution_p", "gamma_inverted_p", "gamma_p", "mirror_p")}
        zeros.update(probabilities)
        return replace(self, **zeros)


def in_plane_only(patch_size: Sequence[int], anisotropic: bool) -> bool:
    """nnU-Net's "dummy 2D" rule: a flat patch or anisotropic data -> in-plane spatial transforms."""
    return bool(anisotropic) or max(patch_size[1:]) / patch_size[0] > 3


# -- spatial ---------------------------------------------------------------------------------------

def draw_spatial_transform(rng: np.random.Generator, settings: AugmentationSettings,
                           planar: bool) -> Optional[np.ndarray]:
    """A random output->input matrix (3, 3), or None when neither rotation nor scaling applies.
    `planar`: rotate about axis 0 only and scale axes 1, 2 only."""
    rotate = rng.random() < settings.rotation_p
    scale = rng.random() < settings.scale_p
    limit = math.radians(settings.rotation_max_degrees)
    angles = rng.uniform(-limit, limit, size=3)
    factor = rng.uniform(*settings.scale_range)
    if not (rotate or scale):
        return None
    matrix = np.eye(3)
    if rotate:
        matrix = _rotation(angles[0], axes=(1, 2))
        if not planar:
            matrix = matrix @ _rotation(angles[1], axes=(0, 2)) @ _rotation(angles[2], axes=(0, 1))
    if scale:
        scales = np.array([1.0 if planar else factor, factor, factor])
        matrix = matrix @ np.diag(scales)  # sampling a larger input area per output voxel = zoom out
    return matrix


def _rotation(angle: float, axes: Tuple[int, int]) -> np.ndarray:
    matrix = np.eye(3)
    a, b = axes
    c, s = math.cos(angle), math.sin(angle)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


def region_margin(patch_size: Sequence[int], matrix: Optional[np.ndarray]) -> Tuple[int, int, int]:
    """Extra voxels per side of the source region so that `matrix` maps the whole output patch
    inside it (plus 2 voxels for the cubic kernel); 0 along axes the matrix leaves alone."""
    if matrix is None:
        return (0, 0, 0)
    half = (np.asarray(patch_size, dtype=np.float64) - 1) / 2
    corners = np.array(np.meshgrid(*[(-h, h) for h in half], indexing="ij")).reshape(3, -1)
    reach = np.abs(matrix @ corners).max(axis=1)
    margins = []
    for axis in range(3):
        untouched = np.allclose(matrix[axis], np.eye(3)[axis]) and np.allclose(matrix[:, axis], np.eye(3)[:, axis])
        margins.append(0 if untouched else max(0, math.ceil(reach[axis] - half[axis] - 1e-6)) + 2)
    return tuple(margins)


def apply_spatial(region: np.ndarray, matrix: np.ndarray, patch_size: Sequence[int], order: int) -> np.ndarray:
    """Resample a source region (T+2m, H+2m, W+2m) through `matrix` to the patch (T, H, W),
    both centred. order 0 for labels (values are copied, never mixed), `image_order` (1) for images."""
    out_centre = (np.asarray(patch_size, dtype=np.float64) - 1) / 2
    in_centre = (np.asarray(region.shape, dtype=np.float64) - 1) / 2
    offset = in_centre - matrix @ out_centre
    return ndimage.affine_transform(region, matrix, offset=offset, output_shape=tuple(int(p) for p in patch_size),
                                    order=order, mode="nearest", prefilter=order > 1)


# -- intensity -------------------------------------------------------------------------------------

def augment_intensity(data: np.ndarray, rng: np.random.Generator, settings: AugmentationSettings,
                      planar: bool) -> np.ndarray:
    """Noise, blur, brightness, contrast, low resolution and gamma on data (C, T, H, W) float32
    (modified in place and returned). Random draws happen in a fixed order, so a given
    generator state always gives the same result."""
    channels = data.shape[0]
    if rng.random() < settings.noise_p:
        std = rng.uniform(*settings.noise_std_range)
        data += rng.normal(0.0, std, size=data.shape).astype(np.float32)
    if rng.random() < settings.blur_p:
        for c in range(channels):
            sigma = rng.uniform(*settings.blur_sigma_range, size=3)
            if planar:
                sigma[0] = 0.0
            if rng.random() < settings.blur_p_per_channel:
                data[c] = ndimage.gaussian_filter(data[c], sigma=sigma, mode="nearest")
    if rng.random() < settings.brightness_p:
        data *= rng.uniform(*settings.brightness_range, size=(channels, 1, 1, 1)).astype(np.float32)
    if rng.random() < settings.contrast_p:
        for c in range(channels):
            data[c] = _contrast(data[c], rng.uniform(*settings.contrast_range))
    if rng.random() < settings.low_resolution_p:
        for c in range(channels):
            zoom = rng.uniform(*settings.low_resolution_zoom_range)
            if rng.random() < settings.low_resolution_p_per_channel:
                data[c] = _low_resolution(data[c], zoom, planar)
    if rng.random() < settings.gamma_inverted_p:
        for c in range(channels):
            data[c] = -_gamma(-data[c], _draw_gamma(rng, settings.gamma_range))
    if rng.random() < settings.gamma_p:
        for c in range(channels):
            data[c] = _gamma(data[c], _draw_gamma(rng, settings.gamma_range))
    return data


def _contrast(channel: np.ndarray, factor: float) -> np.ndarray:
    low, high = channel.min(), channel.max()
    mean = channel.mean()
    return np.clip((channel - mean) * factor + mean, low, high)


def _low_resolution(channel: np.ndarray, zoom: float, planar: bool) -> np.ndarray:
    shape = channel.shape
    small = tuple(n if (planar and axis == 0) else max(1, int(round(n * zoom))) for axis, n in enumerate(shape))
    down = resample_array(channel, small, (0, 0, 0))
    return resample_array(down, shape, (3, 3, 3))


def _draw_gamma(rng: np.random.Generator, gamma_range: Tuple[float, float]) -> float:
    """nnU-Net's draw: half of the time below 1, half above, so both directions are equally likely."""
    low, high = gamma_range
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1.0))
    return float(rng.uniform(max(low, 1.0), high))


def _gamma(channel: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma on the channel rescaled to [0, 1], back to its range, then its mean and std restored."""
    mean, std = channel.mean(), channel.std()
    low, high = channel.min(), channel.max()
    span = high - low
    if span <= 0:
        return channel
    out = np.power((channel - low) / span, gamma) * span + low
    out_std = out.std()
    if out_std > 0:
        out = (out - out.mean()) / out_std * std + mean
    return out.astype(np.float32, copy=False)


# -- mirroring -------------------------------------------------------------------------------------

def draw_mirror_axes(rng: np.random.Generator, settings: AugmentationSettings) -> Tuple[int, ...]:
    """The spatial axes (0=T, 1=H, 2=W) to flip."""
    draws = rng.random(size=3)
    return tuple(axis for axis in settings.mirror_axes if draws[axis] < settings.mirror_p)


def mirror(data: np.ndarray, seg: np.ndarray, axes: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """Flip data (C, T, H, W) and seg (T, H, W) along the same spatial axes."""
    if not axes:
        return data, seg
    return (np.ascontiguousarray(np.flip(data, axis=tuple(a + 1 for a in axes))),
            np.ascontiguousarray(np.flip(seg, axis=axes)))
