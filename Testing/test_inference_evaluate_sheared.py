"""HD95 on a sheared grid (a CT gantry tilt's, kept by NRRD): distances between the surface
voxels' centres in space, in `hausdorff95` and in the `masksam evaluate` report."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import cdist

from test_inference_metrics import SPACING_ZYX, _surface_points

from MaskSAMCore.cli import main
from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.image_writing import write_label
from MaskSAMCore.inference.metrics import hausdorff95


def test_hd95_on_a_sheared_grid_measures_between_voxel_centres_in_space():
    """A gantry tilt's grid: each slice is shifted 2.4 mm along y from the one below. Distances
    between surface voxels are measured in space (the spacing alone would ignore the lean); an
    unsheared but rotated grid keeps the spacing's answer."""
    zz, yy, xx = np.mgrid[:10, :16, :14]
    a = ((zz - 5) * 3.0) ** 2 + ((yy - 7) * 0.8) ** 2 + ((xx - 6) * 0.5) ** 2 < 12 ** 2
    b = (abs(zz - 4) <= 2) & (abs(yy - 9) <= 5) & (abs(xx - 8) <= 6)
    steps = np.diag([3.0, 0.8, 0.5])   # columns: one voxel along z, y, x in mm
    steps[1, 0] = 2.4
    pa, pb = (_surface_points(m, (1.0, 1.0, 1.0)) @ steps.T for m in (a, b))
    distances = cdist(pa, pb)
    expected = max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))
    assert hausdorff95(a, b, SPACING_ZYX, steps) == pytest.approx(expected, rel=1e-9)
    assert abs(hausdorff95(a, b, SPACING_ZYX) - expected) > 0.1   # the lean matters here
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    assert hausdorff95(a, b, SPACING_ZYX, rotation @ np.diag(SPACING_ZYX)) == pytest.approx(
        hausdorff95(a, b, SPACING_ZYX), rel=1e-9)
    empty = np.zeros_like(a)
    assert hausdorff95(a, empty, SPACING_ZYX, steps) == pytest.approx(np.linalg.norm(steps @ np.array(a.shape)))


@pytest.mark.parametrize("lean", [2.4, -2.4], ids=["leaning forward", "leaning back"])
def test_a_missed_structure_on_a_sheared_grid_costs_the_grid_s_longest_diagonal(lean):
    """The penalty for a structure in one mask only is the worst distance possible in the image:
    the longest of its corner-to-corner diagonals, whichever way the slices lean."""
    mask = np.zeros((10, 16, 14), bool)
    mask[4, 5, 6] = True
    steps = np.diag([3.0, 0.8, 0.5])
    steps[1, 0] = lean
    corners = np.array(list(itertools.product(*((0, n) for n in mask.shape))), float) @ steps.T
    longest = cdist(corners, corners).max()
    assert hausdorff95(mask, np.zeros_like(mask), SPACING_ZYX, steps) == pytest.approx(longest, rel=1e-12)
    assert hausdorff95(np.zeros_like(mask), mask, SPACING_ZYX, steps) == pytest.approx(longest, rel=1e-12)


def test_evaluate_measures_hd95_in_space_on_a_sheared_grid(tmp_path):
    """Label maps on a tilted CT's sheared grid (NRRD): the report's HD95 is the one between the
    surface voxels' positions in space, as ITK places them."""
    lean = np.radians(20.0)   # the slice axis leans 20 degrees towards y, then the grid is rotated
    direction = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0] @ np.array(
        [[1.0, 0.0, 0.0], [0.0, 1.0, np.sin(lean)], [0.0, 0.0, np.cos(lean)]])
    geometry = ImageGeometry((14, 16, 10), (0.5, 0.8, 3.0), (10.0, -20.0, 30.0), tuple(direction.ravel()))
    zz, yy, xx = np.mgrid[:10, :16, :14]
    a = ((zz - 5) * 3.0) ** 2 + ((yy - 7) * 0.8) ** 2 + ((xx - 6) * 0.5) ** 2 < 12 ** 2
    b = (abs(zz - 4) <= 2) & (abs(yy - 9) <= 5) & (abs(xx - 8) <= 6)
    for folder, mask in (("pred", a), ("gt", b)):
        write_label(mask.astype(np.uint8), geometry, tmp_path / folder / "case.nrrd")
    image = geometry.apply(sitk.Image(14, 16, 10, sitk.sitkUInt8))
    pa, pb = ([image.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in _surface_points(m, (1, 1, 1))]
              for m in (a, b))
    distances = cdist(pa, pb)
    expected = max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))
    out = tmp_path / "report.json"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["cases"][0]["hd95_mm"]["label_1"] == pytest.approx(expected, rel=1e-6)
