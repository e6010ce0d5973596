"""Resampling: exact shapes, voxel edges kept aligned, unchanged grids reproduced exactly, and
label maps resampled per class without mixing classes."""

from __future__ import annotations

import numpy as np
import pytest

from MaskSAMCore.data.resampling import (argmax_of_resampled, label_orders, resample_array, resample_labels,
                                         resampled_shape)


def test_shapes_are_exact_and_an_unchanged_grid_is_a_copy():
    array = np.random.default_rng(0).normal(size=(7, 11, 13)).astype(np.float32)
    for shape in [(7, 11, 13), (3, 22, 5), (14, 1, 26)]:
        out = resample_array(array, shape, (3, 3, 3))
        assert out.shape == shape and out.dtype == np.float32 and out.flags.c_contiguous
    same = resample_array(array, array.shape, (3, 1, 0))
    np.testing.assert_array_equal(same, array)
    same[0, 0, 0] += 1
    assert not np.array_equal(same, array)  # a new array, never a view of the input


def test_voxel_edges_stay_aligned():
    ramp = np.arange(8, dtype=np.float32)[None, None, :].repeat(2, 0).repeat(2, 1)
    halved = resample_array(ramp, (2, 2, 4), (1, 1, 1))
    np.testing.assert_allclose(halved[0, 0], [0.5, 2.5, 4.5, 6.5])  # mean of each pair of voxels
    doubled = resample_array(ramp, (2, 2, 16), (1, 1, 1))
    np.testing.assert_allclose(doubled[0, 0, 1:-1], np.arange(1, 15) / 2 - 0.25)
    assert doubled[0, 0, 0] == 0.0 and doubled[0, 0, -1] == 7.0  # edge voxels repeat beyond the border


def test_cubic_and_linear_reproduce_a_linear_ramp_inside_the_volume():
    z, y, x = np.meshgrid(np.arange(10), np.arange(12), np.arange(9), indexing="ij")
    ramp = (0.5 * z + 2.0 * y - 1.5 * x).astype(np.float32)
    for order in (1, 3):
        out = resample_array(ramp, (10, 18, 9), (order, order, order))
        expected_y = (np.arange(18) + 0.5) * 12 / 18 - 0.5
        inner = slice(3, 15)
        np.testing.assert_allclose(out[:, inner, :], (0.5 * z[:, :1] + 2.0 * expected_y[None, inner, None]
                                                      - 1.5 * x[:, :1]).astype(np.float32), atol=1e-4)


@pytest.mark.parametrize("separate_z", [False, True])
def test_labels_resampled_per_class_block_equal_the_full_computation(separate_z):
    rng = np.random.default_rng(3)
    labels = np.zeros((17, 31, 26), np.int16)
    for value in range(1, 6):
        corner = [rng.integers(0, n - 4) for n in labels.shape]
        labels[tuple(slice(c, c + int(rng.integers(2, 9))) for c in corner)] = value
    labels[rng.random(labels.shape) < 0.01] = 3  # scattered voxels: a class spread everywhere
    for shape in [(23, 40, 19), (9, 17, 30)]:
        fast = resample_labels(labels, shape, separate_z)
        reference = argmax_of_resampled((((labels == v).astype(np.float32), v) for v in range(6)), shape,
                                        label_orders(separate_z))
        np.testing.assert_array_equal(fast, reference)
        assert fast.dtype == np.int16 and set(np.unique(fast)) <= set(range(6))


def test_labels_never_take_an_in_between_value():
    labels = np.zeros((4, 10, 10), np.int16)
    labels[:, :, :5] = 1
    labels[:, :, 5:] = 3  # a linear blend would give 2 at the border
    out = resample_labels(labels, (4, 10, 23), separate_z=False)
    assert set(np.unique(out)) == {1, 3}


def test_resampled_shape_rounds_the_physical_extent():
    assert resampled_shape((10, 100, 101), (5.0, 0.8, 0.8), (2.5, 1.0, 1.0)) == (20, 80, 81)
    assert resampled_shape((1, 3, 3), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0)) == (1, 1, 1)


def test_label_ties_go_to_the_most_frequent_class_then_the_lower_value():
    """Halving an axis makes every voxel on a boundary a 50/50 tie between its two classes: it goes
    to the most frequent class (here 2, filling most of the map), not to the lowest value."""
    labels = np.full((2, 2, 16), 2, np.int16)
    labels[..., 3:4] = 0         # one voxel wide: after halving, a tie with class 2 on either side
    labels[..., 9:10] = 1
    out = resample_labels(labels, (2, 2, 8), separate_z=False)
    np.testing.assert_array_equal(out[0, 0], [2] * 8)
    labels[..., 8:10] = 1         # two voxels, aligned with the halving: wins its voxel outright
    np.testing.assert_array_equal(resample_labels(labels, (2, 2, 8), separate_z=False)[0, 0], [2, 2, 2, 2, 1, 2, 2, 2])
