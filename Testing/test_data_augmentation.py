"""Augmentation moves image and labels together, fills rotated corners with real image, and its
intensity transforms change only the image."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from MaskSAMCore.data.augmentation import (AugmentationSettings, augment_intensity, draw_mirror_axes,
                                           draw_spatial_transform, in_plane_only)
from MaskSAMCore.data.preprocess_runner import class_locations
from MaskSAMCore.data.sampling import PatchSampler
from MaskSAMCore.data.store import save_case

PATCH = (4, 32, 32)
SPATIAL = AugmentationSettings().only(rotation_p=1.0, scale_p=1.0, mirror_p=0.5)


def blobs(shape, seed=0) -> np.ndarray:
    """Labels (T, H, W) with three classes of blobs, each several voxels across."""
    rng = np.random.default_rng(seed)
    t, h, w = np.ogrid[:shape[0], :shape[1], :shape[2]]
    seg = np.zeros(shape, np.int16)
    for _ in range(25):
        value = rng.integers(1, 4)
        ct, ch, cw = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(0, shape[2])
        radius = rng.uniform(4, 9)
        seg[((t - ct) * 3) ** 2 + (h - ch) ** 2 + (w - cw) ** 2 <= radius ** 2] = value
    return seg


def write_case(folder: Path, seg: np.ndarray, data: np.ndarray, name: str = "case") -> Path:
    save_case(folder, name, data, seg, class_locations(seg, seed=1), {"case": name})
    return folder


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_labels_as_an_image_follow_the_labels_exactly_with_nearest_neighbour(tmp_path):
    seg = blobs((8, 90, 90))
    write_case(tmp_path, seg, seg[None].astype(np.float32))
    sampler = PatchSampler(tmp_path, ["case"], PATCH, replace(SPATIAL, image_order=0), planar=True)
    rng = np.random.default_rng(5)
    for _ in range(20):
        data, patch_seg = sampler.sample(rng, force_foreground=True)
        np.testing.assert_array_equal(data[0], patch_seg)
        assert patch_seg.any()


def test_labels_as_one_hot_images_follow_the_labels_with_linear_interpolation(tmp_path):
    seg = blobs((8, 90, 90), seed=1)
    one_hot = np.stack([(seg == k).astype(np.float32) for k in range(4)])
    write_case(tmp_path, seg, one_hot)
    sampler = PatchSampler(tmp_path, ["case"], PATCH, SPATIAL, planar=True)  # images linear (default)
    rng = np.random.default_rng(6)
    samples = [sampler.sample(rng, force_foreground=True) for _ in range(20)]
    for k in (1, 2, 3):
        from_image = np.concatenate([(d[k] > 0.5).ravel() for d, _ in samples])
        from_labels = np.concatenate([(s == k).ravel() for _, s in samples])
        assert dice(from_image, from_labels) > 0.98, k


def test_every_output_voxel_shows_the_label_of_the_voxel_it_was_taken_from(tmp_path):
    """Channels holding each voxel's own (t, h, w) coordinates reveal, after augmentation, where
    every output voxel came from: the label there must be the output label. They also show that
    slices were not mixed (planar) and that a real rotation happened."""
    seg = np.zeros((8, 100, 100), np.int16)
    seg[:, 35:65, 35:65] = blobs((8, 30, 30), seed=2)  # patches centred here never leave the volume
    coordinates = np.stack(np.meshgrid(*[np.arange(n) for n in seg.shape], indexing="ij")).astype(np.float32)
    write_case(tmp_path, seg, coordinates)
    sampler = PatchSampler(tmp_path, ["case"], PATCH, SPATIAL, planar=True)
    rng = np.random.default_rng(7)
    rotated = 0
    for _ in range(30):
        data, patch_seg = sampler.sample(rng, force_foreground=True)
        source = np.rint(data).astype(int)
        agree = seg[source[0], source[1], source[2]] == patch_seg
        assert agree.mean() > 0.995  # (exact but for rounding ties at half-voxel positions)
        np.testing.assert_allclose(data[0], np.rint(data[0]), atol=1e-4)   # whole slices only
        assert np.all(np.ptp(data[0].reshape(4, -1), axis=1) == 0)
        if np.abs(np.diff(data[1], axis=2)).max() > 0.05:        # h changes along w: rotated
            rotated += 1
    assert rotated >= 20


def test_rotated_and_scaled_patches_have_no_empty_corners_when_the_volume_is_large(tmp_path):
    seg = np.zeros((10, 220, 220), np.int16)
    seg[5, 110, 110] = 1                                         # forced patches centre here
    write_case(tmp_path, seg, np.ones((1,) + seg.shape, np.float32))
    sampler = PatchSampler(tmp_path, ["case"], (4, 64, 64), SPATIAL, planar=True)
    rng = np.random.default_rng(8)
    for _ in range(20):
        data, _ = sampler.sample(rng, force_foreground=True)
        assert data.min() == 1.0


def test_spatial_transforms_are_drawn_with_nnunet_probabilities():
    rng = np.random.default_rng(9)
    settings = AugmentationSettings()
    draws = [draw_spatial_transform(rng, settings, planar=True) for _ in range(4000)]
    assert np.mean([d is None for d in draws]) == pytest.approx(0.8 * 0.8, abs=0.03)
    mirrors = [draw_mirror_axes(rng, settings) for _ in range(4000)]
    for axis in range(3):
        assert np.mean([axis in m for m in mirrors]) == pytest.approx(0.5, abs=0.03)
    assert in_plane_only((4, 64, 64), anisotropic=False)
    assert not in_plane_only((64, 64, 64), anisotropic=False)
    assert in_plane_only((64, 64, 64), anisotropic=True)


@pytest.mark.parametrize("name", ["noise_p", "blur_p", "brightness_p", "contrast_p", "low_resolution_p",
                                  "gamma_inverted_p", "gamma_p"])
def test_each_intensity_transform_changes_the_image_reproducibly(name):
    settings = AugmentationSettings().only(**{name: 1.0})
    settings = replace(settings, blur_p_per_channel=1.0, low_resolution_p_per_channel=1.0,
                       low_resolution_zoom_range=(0.5, 0.6))
    base = np.random.default_rng(3).normal(size=(2,) + PATCH).astype(np.float32)
    first = augment_intensity(base.copy(), np.random.default_rng(11), settings, planar=True)
    second = augment_intensity(base.copy(), np.random.default_rng(11), settings, planar=True)
    assert first.shape == base.shape and first.dtype == np.float32 and np.isfinite(first).all()
    assert not np.allclose(first, base)
    np.testing.assert_array_equal(first, second)
    if name == "contrast_p":
        assert first.min() >= base.min() and first.max() <= base.max()
    if name.startswith("gamma"):
        np.testing.assert_allclose(first.mean(axis=(1, 2, 3)), base.mean(axis=(1, 2, 3)), atol=1e-4)
        np.testing.assert_allclose(first.std(axis=(1, 2, 3)), base.std(axis=(1, 2, 3)), rtol=1e-4)


def test_no_augmentation_returns_the_plain_crop(tmp_path):
    seg = blobs((8, 50, 50), seed=3)
    data = np.random.default_rng(0).normal(size=(1,) + seg.shape).astype(np.float32)
    write_case(tmp_path, seg, data)
    sampler = PatchSampler(tmp_path, ["case"], PATCH, AugmentationSettings.none(), planar=True)
    patch, patch_seg = sampler.sample(np.random.default_rng(1), force_foreground=False)
    # find the crop: the patch must equal the volume at some offset
    t, h, w = [int(v) for v in np.argwhere(np.isclose(data[0], patch[0, 0, 0, 0]))[0]]
    np.testing.assert_array_equal(patch[0], data[0, t:t + 4, h:h + 32, w:w + 32])
    np.testing.assert_array_equal(patch_seg, seg[t:t + 4, h:h + 32, w:w + 32])
