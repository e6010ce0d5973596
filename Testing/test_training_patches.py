"""Training patches: foreground forced where the sampler puts it, every case and position
reachable, augmentation that never smears edges or mixes slices, and the loader using the
augmentation it is given."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest


def _write_case(folder, name, data, seg):
    from MaskSAMCore.data.preprocess_runner import class_locations
    from MaskSAMCore.data.store import save_case

    save_case(folder, name, data.astype(np.float32), seg.astype(np.int16), class_locations(seg, seed=1),
              {"case": name})


def _coordinates(shape):
    """Channels holding each voxel's own (t, h, w): a patch shows where every voxel came from."""
    return np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float32)


def test_forced_patches_choose_the_class_first_so_a_small_structure_gets_its_share(tmp_path):
    """nnU-Net draws the class, then a voxel of it: a 4-voxel lesion beside a large organ is in
    about half of the forced patches, not in 4 of every 1000."""
    from MaskSAMCore.data.augmentation import AugmentationSettings
    from MaskSAMCore.data.sampling import PatchSampler

    seg = np.zeros((6, 120, 120), np.int16)
    seg[:, 10:110, 10:60] = 1
    seg[3, 100:102, 100:102] = 2
    _write_case(tmp_path, "case", np.zeros((1,) + seg.shape), seg)
    sampler = PatchSampler(tmp_path, ["case"], (4, 16, 16), AugmentationSettings.none(), planar=True)
    rng = np.random.default_rng(0)
    with_lesion = [(sampler.sample(rng, force_foreground=True)[1] == 2).any() for _ in range(60)]
    assert 0.3 <= np.mean(with_lesion) <= 0.7


def test_every_training_case_is_sampled(tmp_path):
    from MaskSAMCore.data.augmentation import AugmentationSettings
    from MaskSAMCore.data.sampling import PatchSampler

    seg = np.zeros((4, 16, 16), np.int16)
    for value in (1, 2, 3):
        _write_case(tmp_path, f"case{value}", np.full((1,) + seg.shape, value), seg)
    sampler = PatchSampler(tmp_path, ["case1", "case2", "case3"], (4, 16, 16), AugmentationSettings.none(), planar=True)
    rng = np.random.default_rng(0)
    assert {float(sampler.sample(rng, force_foreground=False)[0][0, 0, 0, 0]) for _ in range(40)} == {1.0, 2.0, 3.0}


def test_a_volume_smaller_than_the_patch_sits_in_its_middle_and_every_position_can_be_drawn(tmp_path):
    from MaskSAMCore.data.augmentation import AugmentationSettings
    from MaskSAMCore.data.sampling import PatchSampler

    _write_case(tmp_path, "small", np.full((1, 2, 20, 20), 5.0), np.ones((2, 20, 20), np.int16))
    sampler = PatchSampler(tmp_path, ["small"], (4, 32, 32), AugmentationSettings.none(), planar=True)
    expected = np.zeros((4, 32, 32), np.int16)
    expected[1:3, 6:26, 6:26] = 1
    rng = np.random.default_rng(0)
    for _ in range(10):
        data, seg = sampler.sample(rng, force_foreground=False)
        np.testing.assert_array_equal(seg, expected)
        np.testing.assert_array_equal(data[0], 5.0 * expected)
    # one voxel taller than the patch: both starting rows occur, the last row is trained on too
    _write_case(tmp_path, "tall", _coordinates((4, 33, 32)), np.zeros((4, 33, 32), np.int16))
    sampler = PatchSampler(tmp_path, ["tall"], (4, 32, 32), AugmentationSettings.none(), planar=True)
    assert {float(sampler.sample(rng, force_foreground=False)[0][1, 0, 0, 0]) for _ in range(30)} == {0.0, 1.0}


def test_rotated_and_scaled_patches_are_resampled_from_image_not_from_smeared_edges(tmp_path):
    """The source region carries a margin so the rotated corners hold real image: neighbouring
    output voxels then lie the same distance apart in the source everywhere, corners included."""
    from MaskSAMCore.data.augmentation import AugmentationSettings
    from MaskSAMCore.data.sampling import PatchSampler

    shape = (8, 160, 160)
    seg = np.zeros(shape, np.int16)
    seg[4, 80, 80] = 1                                      # forced patches centre here
    _write_case(tmp_path, "case", _coordinates(shape), seg)
    settings = AugmentationSettings().only(rotation_p=1.0, scale_p=1.0)
    sampler = PatchSampler(tmp_path, ["case"], (4, 32, 32), settings, planar=True)
    rng = np.random.default_rng(3)
    for _ in range(10):
        data, _ = sampler.sample(rng, force_foreground=True)
        step = np.hypot(np.diff(data[1], axis=2), np.diff(data[2], axis=2))
        assert np.ptp(step) < 1e-3, (step.min(), step.max())


@pytest.mark.parametrize("name", ["blur_p", "low_resolution_p"])
def test_in_plane_blur_and_low_resolution_never_mix_slices(name):
    from dataclasses import replace

    from MaskSAMCore.data.augmentation import AugmentationSettings, augment_intensity

    settings = replace(AugmentationSettings().only(**{name: 1.0}), blur_p_per_channel=1.0,
                       low_resolution_p_per_channel=1.0, low_resolution_zoom_range=(0.5, 0.6))
    data = np.broadcast_to(np.array([0.0, 4.0, -3.0, 9.0], np.float32)[None, :, None, None], (1, 4, 24, 24)).copy()
    out = augment_intensity(data.copy(), np.random.default_rng(0), settings, planar=True)
    np.testing.assert_allclose(out, data, atol=1e-4)


def test_brightness_scales_each_channel_by_one_factor():
    from MaskSAMCore.data.augmentation import AugmentationSettings, augment_intensity

    data = np.random.default_rng(0).normal(size=(2, 4, 16, 16)).astype(np.float32)
    out = augment_intensity(data.copy(), np.random.default_rng(1), AugmentationSettings().only(brightness_p=1.0),
                            planar=True)
    for c in range(2):
        ratio = out[c] / data[c]
        assert np.ptp(ratio) < 1e-5 and 0.75 <= ratio.mean() <= 1.25


def test_the_loader_uses_the_augmentation_it_is_given(tmp_path):
    """augment=False gives plain crops; mirror_axes without the left-right axis (lateral labels:
    kidney_left / kidney_right) never flips W; a flat patch is rotated in-plane only."""
    from MaskSAMCore.data.augmentation import AugmentationSettings
    from MaskSAMCore.data.loader import PatchLoader

    shape = (8, 80, 80)
    inside = np.ones((1,) + shape)                   # 1 in the volume; the padding around it is 0
    _write_case(tmp_path, "case", np.concatenate([_coordinates(shape), inside]), np.ones(shape, np.int16))
    plan = {"patch_size": [4, 32, 32], "anisotropic": False}

    def patches(**options):
        loader = PatchLoader(tmp_path, ["case"], plan, batch_size=2, num_batches=6, num_workers=0, seed=2, **options)
        return [image.numpy() for batch, _ in loader for image in batch]

    for image in patches(augment=False):
        np.testing.assert_array_equal(np.diff(image[1], axis=1), 1.0)
        np.testing.assert_array_equal(np.diff(image[2], axis=2), 1.0)
    for image in patches(settings=AugmentationSettings(mirror_axes=(0, 1)).only(mirror_p=1.0)):
        np.testing.assert_array_equal(np.diff(image[2], axis=2), 1.0)      # W never flipped
        np.testing.assert_array_equal(np.diff(image[1], axis=1), -1.0)     # H always flipped
    for image in patches(settings=AugmentationSettings().only(rotation_p=1.0)):
        for t in range(4):                                                 # whole slices only
            assert np.ptp(image[0, t][image[3, t] > 1 - 1e-6]) < 1e-4


def test_with_a_batch_of_two_a_third_of_the_patches_are_forced():
    """nnU-Net's 33 % foreground oversampling must hold for the default batch size of 2 too."""
    from MaskSAMCore.data.loader_worker import BatchSpec, make_batch

    spec = BatchSpec(folder="", case_names=("c",), patch_size=(1, 1, 1), batch_size=2, num_batches=30,
                     oversample_foreground=1 / 3, settings=None, planar=True, seed=0, epoch=0, rank=0)
    stub = SimpleNamespace(sample=lambda rng, force: (np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1), np.int16)))
    forced = [f for b in range(30) for f in make_batch(spec, stub, b)[2]]
    assert sum(forced) == 20


def test_an_odd_shortfall_puts_the_extra_padding_voxel_after_the_volume_as_the_predictor_does(tmp_path):
    """Pins where a volume smaller than the patch lies in a training patch when the shortfall is
    odd: shortfall // 2 voxels before it, the extra voxel after it (random and foreground-forced
    patches alike), which is where the sliding-window predictor puts the volume
    (`WindowGrid.pad_before`), so training and prediction see the same placement."""
    from MaskSAMCore.data.augmentation import AugmentationSettings
    from MaskSAMCore.data.sampling import PatchSampler, patch_start
    from MaskSAMCore.inference.windows import WindowGrid

    shape, patch = (3, 17, 21), (4, 32, 32)            # shortfalls 1, 15, 11: all odd
    seg = np.ones(shape, np.int16)
    _write_case(tmp_path, "odd", _coordinates(shape) + 1, seg)   # +1: coordinates, 0 only in padding
    sampler = PatchSampler(tmp_path, ["odd"], patch, AugmentationSettings.none(), planar=True)
    expected = np.zeros(patch, np.int16)
    expected[0:3, 7:24, 5:26] = 1                      # before: 0, 7, 5; after: 1, 8, 6
    rng = np.random.default_rng(0)
    for force in (False, True) * 5:
        data, patch_seg = sampler.sample(rng, force_foreground=force)
        np.testing.assert_array_equal(patch_seg, expected)
        np.testing.assert_array_equal(data[:, 0, 7, 5], [1.0, 1.0, 1.0])          # volume voxel (0, 0, 0)
        np.testing.assert_array_equal(data[:, 2, 23, 25], [3.0, 17.0, 21.0])      # voxel (2, 16, 20)
    rng = np.random.default_rng(1)
    starts = {tuple(patch_start(shape, patch, rng, centre_on=c)) for c in [None, (0, 0, 0), (2, 16, 20)] * 3}
    assert starts == {(0, -7, -5)}
    grid = WindowGrid(shape, patch, 0.5)
    assert tuple(-s for s in starts.pop()) == grid.pad_before == (0, 7, 5)


def test_a_forced_patch_has_its_chosen_voxel_at_the_patch_centre_when_the_volume_is_large():
    """nnU-Net's rule: the patch starts at voxel - patch // 2 (clipped to the volume), so the
    chosen voxel sits at index patch // 2 of the patch (the later of two middles when even)."""
    from MaskSAMCore.data.sampling import patch_start

    shape, patch = (40, 50, 60), (8, 16, 15)
    start = patch_start(shape, patch, np.random.default_rng(0), centre_on=(20, 25, 30))
    assert tuple(start) == (16, 17, 23)
    assert tuple(np.array((20, 25, 30)) - start) == (4, 8, 7)
    edge = patch_start(shape, patch, np.random.default_rng(0), centre_on=(1, 49, 30))
    assert tuple(edge) == (0, 34, 23)   # clipped: the patch stays inside the volume
