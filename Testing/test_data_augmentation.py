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


def _reference_gamma(channel: np.ndarray, gamma: float) -> np.ndarray:
    """nnU-Net's gamma (retain_stats=True), written out independently: rescale to [0, 1], power,
    back to the range, then the input's mean and std restored. float64."""
    x = channel.astype(np.float64)
    low, span = x.min(), x.max() - x.min()
    out = ((x - low) / span) ** gamma * span + low
    return (out - out.mean()) / out.std() * x.std() + x.mean()


def _gamma_cases(base: np.ndarray, gamma: float):
    """Every outcome of the two gamma steps on `base` (C, T, H, W): none, inverted only, plain
    only, inverted then plain (nnU-Net's order), each channel on its own."""
    inverted = np.stack([-_reference_gamma(-c, gamma) for c in base])
    plain = np.stack([_reference_gamma(c, gamma) for c in base])
    both = np.stack([_reference_gamma(c, gamma) for c in inverted])
    return {"none": base.astype(np.float64), "inverted": inverted, "plain": plain, "both": both}


def test_inverted_gamma_is_gamma_on_the_negated_image_negated_back():
    """Pins gamma_inverted_p's transform: invert, gamma, invert back (per channel, mean/std kept).
    With gamma fixed at 2 the inverted variant is concave on a ramp (1 - (1 - u)^2) where plain
    gamma is convex (u^2), so dropping the inversion (or the inversion back) changes the values."""
    settings = replace(AugmentationSettings().only(gamma_inverted_p=1.0), gamma_range=(2.0, 2.0))
    ramp = np.linspace(0.0, 1.0, 2 * 4 * 4 * 4).reshape(2, 4, 4, 4)
    base = (ramp * np.array([3.0, 1.0]).reshape(2, 1, 1, 1) - np.array([1.0, 0.5]).reshape(2, 1, 1, 1))
    base = base.astype(np.float32)
    out = augment_intensity(base.copy(), np.random.default_rng(0), settings, planar=True)
    expected = _gamma_cases(base, 2.0)
    np.testing.assert_allclose(out, expected["inverted"], atol=1e-5)
    assert not np.allclose(out, expected["plain"], atol=1e-3)
    # concave: the middle of the ramp is lifted above its linear position (standardised values)
    u = (base[0] - base[0].mean()) / base[0].std()
    v = (out[0] - out[0].mean()) / out[0].std()
    assert v.ravel()[len(v.ravel()) // 2] > u.ravel()[len(u.ravel()) // 2] + 0.1


def test_gamma_steps_follow_nnunet_probabilities_and_order():
    """Over 4000 seeded patches with the default gamma settings (inverted p=0.1, then plain
    p=0.3, drawn independently): the four outcomes occur 63 / 7 / 27 / 3 %. Each draw is
    classified by exact comparison with the reference outcomes, so a changed probability, a
    dropped inversion or a swapped order shows up as a wrong frequency (or an unmatched draw).
    Binomial sd at n=4000 is <= 0.8 %; the tolerance (2.5 %) is > 3 sd and the seed is fixed."""
    defaults = AugmentationSettings()
    settings = replace(defaults.only(gamma_inverted_p=defaults.gamma_inverted_p, gamma_p=defaults.gamma_p),
                       gamma_range=(2.0, 2.0))
    base = np.random.default_rng(5).normal(size=(1, 1, 2, 4)).astype(np.float32)
    expected = _gamma_cases(base, 2.0)
    names = list(expected)
    for i, a in enumerate(names):  # the outcomes are distinguishable on this input
        for b in names[i + 1:]:
            assert not np.allclose(expected[a], expected[b], atol=1e-3), (a, b)
    rng = np.random.default_rng(2024)
    counts = dict.fromkeys(names + ["unmatched"], 0)
    n = 4000
    for _ in range(n):
        out = augment_intensity(base.copy(), rng, settings, planar=True)
        match = [name for name in names if np.allclose(out, expected[name], atol=1e-4)]
        counts[match[0] if len(match) == 1 else "unmatched"] += 1
    assert counts["unmatched"] == 0
    p_inv, p_plain = 0.1, 0.3
    assert defaults.gamma_inverted_p == p_inv and defaults.gamma_p == p_plain
    for name, p in {"none": (1 - p_inv) * (1 - p_plain), "inverted": p_inv * (1 - p_plain),
                    "plain": (1 - p_inv) * p_plain, "both": p_inv * p_plain}.items():
        assert counts[name] / n == pytest.approx(p, abs=0.025), (name, counts)


def test_each_channel_gets_its_own_gamma_in_both_gamma_steps():
    """nnU-Net draws gamma per channel: two identical channels come out different (one value
    for all channels would keep them equal), in the inverted step and in the plain one."""
    ramp = np.linspace(-1.0, 1.0, 4 * 4 * 4, dtype=np.float32).reshape(1, 4, 4, 4)
    for step in ("gamma_inverted_p", "gamma_p"):
        settings = AugmentationSettings().only(**{step: 1.0})
        out = augment_intensity(np.concatenate([ramp, ramp]), np.random.default_rng(3), settings, planar=True)
        assert not np.allclose(out[0], out[1], atol=1e-4), step


def test_gamma_is_below_one_half_of_the_time_and_uniform_on_each_side():
    """nnU-Net's draw for gamma_range (0.7, 1.5): below 1 with probability 1/2, uniform on
    [0.7, 1) then, else uniform on [1, 1.5] (so a brightening and a darkening are equally
    likely, though the range is lopsided). 4000 seeded draws; binomial sd 0.8 %."""
    from MaskSAMCore.data.augmentation import _draw_gamma

    rng = np.random.default_rng(11)
    draws = np.array([_draw_gamma(rng, (0.7, 1.5)) for _ in range(4000)])
    below = draws[draws < 1.0]
    assert len(below) / len(draws) == pytest.approx(0.5, abs=0.03)
    assert below.min() >= 0.7 and below.mean() == pytest.approx(0.85, abs=0.01)
    assert draws.max() <= 1.5 and draws[draws >= 1.0].mean() == pytest.approx(1.25, abs=0.01)
    assert {_draw_gamma(rng, (1.2, 1.5)) >= 1.2 for _ in range(50)} == {True}   # no "below 1" part
