"""Dice and HD95 (mm, anisotropic spacing) against brute force and their conventions; the
command's tests are in test_inference_evaluate*.py."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from MaskSAMCore.inference.metrics import dice, hausdorff95, image_diagonal_mm

SPACING_ZYX = (3.0, 0.8, 0.5)


def test_dice_counts_overlap_and_leaves_both_empty_undefined():
    a = np.zeros((4, 10, 10), bool)
    b = np.zeros_like(a)
    a[:, :5] = True          # 200 voxels
    b[:, 3:8] = True         # 200 voxels, 80 shared
    assert dice(a, b) == pytest.approx(2 * 80 / 400)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) is None


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_of_parallel_planes_is_their_distance_in_mm(axis):
    shape = (9, 10, 11)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    index_a = [slice(None)] * 3
    index_b = [slice(None)] * 3
    index_a[axis], index_b[axis] = 2, 6
    a[tuple(index_a)] = True
    b[tuple(index_b)] = True
    assert hausdorff95(a, b, SPACING_ZYX) == pytest.approx(4 * SPACING_ZYX[axis])


def _surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1]
    all_neighbours_in = np.ones_like(mask)
    for axis in range(3):
        for shift in (-1, 1):
            all_neighbours_in &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(inner & ~all_neighbours_in) * np.asarray(spacing)


def test_hd95_matches_brute_force_surface_distances():
    rng = np.random.default_rng(3)
    zz, yy, xx = np.mgrid[:10, :16, :14]
    a = ((zz - 5) * 3.0) ** 2 + ((yy - 7) * 0.8) ** 2 + ((xx - 6) * 0.5) ** 2 < 12 ** 2
    b = ((zz - 4) * 3.0) ** 2 + ((yy - 9) * 0.8) ** 2 + ((xx - 8) * 0.5) ** 2 < 10 ** 2
    b |= rng.random(b.shape) > 0.97  # some far-away speckles that HD95 must see
    pa, pb = _surface_points(a, SPACING_ZYX), _surface_points(b, SPACING_ZYX)
    distances = cdist(pa, pb)
    expected = max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))
    assert hausdorff95(a, b, SPACING_ZYX) == pytest.approx(expected, rel=1e-9)


def test_hd95_is_the_95th_percentile_of_each_directed_distance():
    """An ellipsoid against a box: the directed surface distances spread over many values, so the
    90th, 95th and 99th percentiles differ (in the speckle test above they do not on one side)."""
    zz, yy, xx = np.mgrid[:10, :24, :20]
    a = ((zz - 5) * 3.0) ** 2 + ((yy - 10) * 0.8) ** 2 + ((xx - 9) * 0.5) ** 2 < 12 ** 2
    b = (abs(zz - 4) <= 2) & (abs(yy - 12) <= 8) & (abs(xx - 11) <= 6)
    distances = cdist(_surface_points(a, SPACING_ZYX), _surface_points(b, SPACING_ZYX))
    a_to_b, b_to_a = distances.min(axis=1), distances.min(axis=0)
    expected = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    for q in (90, 99):  # the test can tell the 95th percentile from its neighbours
        assert abs(max(np.percentile(a_to_b, q), np.percentile(b_to_a, q)) - expected) > 0.1
    # Either mask as the prediction: both directed distances use the 95th percentile.
    assert hausdorff95(a, b, SPACING_ZYX) == pytest.approx(expected, rel=1e-9)
    assert hausdorff95(b, a, SPACING_ZYX) == pytest.approx(expected, rel=1e-9)


def test_hd95_conventions_for_empty_masks():
    empty = np.zeros((5, 6, 7), bool)
    full = empty.copy()
    full[2, 3, 4] = True
    assert hausdorff95(empty, empty, SPACING_ZYX) is None
    diagonal = image_diagonal_mm((5, 6, 7), SPACING_ZYX)
    assert diagonal == pytest.approx(np.sqrt(15 ** 2 + 4.8 ** 2 + 3.5 ** 2))
    assert hausdorff95(full, empty, SPACING_ZYX) == pytest.approx(diagonal)
    assert hausdorff95(full, full, SPACING_ZYX) == 0.0


def test_hd95_of_structures_with_stray_voxels_far_apart_costs_their_surfaces_not_the_box_between():
    """A weak model's stray voxel in a far corner makes the box around prediction and truth the
    whole image; HD95 needs only the surfaces' voxels, so its memory stays below one mask's."""
    shape = (120, 256, 256)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[50:60, 100:120, 100:120] = True
    b[52:62, 101:121, 98:118] = True
    a[1, 2, 250] = b[118, 250, 3] = True
    tracemalloc.start()
    try:
        value = hausdorff95(a, b, (2.0, 0.8, 0.8))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert value == pytest.approx(4.0)
    assert peak < a.nbytes, f"{peak / 2 ** 20:.0f} MiB"   # distance transforms over the box: 438 MiB
