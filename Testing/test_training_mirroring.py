"""Left-right mirroring is left out of augmentation when a dataset labels left and right structures."""

from types import SimpleNamespace

import numpy as np
import pytest

from MaskSAMCore.training.mirroring import lateral_label_names, left_right_patch_axis, training_mirror_axes

AXIAL = (1, 0, 0, 0, 1, 0, 0, 0, 1)
SAGITTAL = (0, 0, 1, 1, 0, 0, 0, 1, 0)     # voxel x -> LPS y, voxel y -> LPS z, voxel z -> LPS x


def _rotated(direction, degrees, axis):
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    rotations = {"z": [[c, -s, 0], [s, c, 0], [0, 0, 1]], "x": [[1, 0, 0], [0, c, -s], [0, s, c]]}
    return tuple((np.array(rotations[axis]) @ np.array(direction).reshape(3, 3)).ravel())


def test_lateral_names_are_recognised():
    labels = {"background": 0, "liver": 1, "kidney_left": 2, "Right Lung": 3, "adrenal_L": 4,
              "R_femur": 5, "lr_ratio": 6, "bladder": 7, "leftover": 8}
    assert lateral_label_names(labels) == ["kidney_left", "Right Lung", "adrenal_L", "R_femur"]


@pytest.mark.parametrize("direction, forward, expected", [
    (AXIAL, [0, 1, 2], 2),                        # axial: array x (W) is left-right
    (_rotated(AXIAL, 8, "z"), [0, 1, 2], 2),      # oblique by a few degrees: still W
    (SAGITTAL, [0, 1, 2], 0),                     # sagittal slices: the slice axis is left-right
    (SAGITTAL, [1, 0, 2], 1),                     # ...and the plan moved array axis 0 to H
    (_rotated(AXIAL, 90, "z"), [0, 1, 2], 1),     # rotated in-plane by 90 degrees: H
])
def test_left_right_axis_follows_the_direction_and_the_plan(direction, forward, expected):
    assert left_right_patch_axis([direction], forward) == expected


@pytest.mark.parametrize("forward, expected", [([0, 1, 2], 2), ([2, 0, 1], 0), ([1, 2, 0], 1)])
def test_after_reorientation_to_lps_the_plan_alone_places_left_right(forward, expected):
    """Preprocessing put every case's left-right on array axis x: the stored directions no longer matter."""
    assert left_right_patch_axis([SAGITTAL, SAGITTAL, AXIAL], forward, reoriented_to_lps=True) == expected
    plan = {"transpose_forward": forward, "reorient_to_lps": True}
    geometries = {"a": SimpleNamespace(direction=SAGITTAL)}
    assert training_mirror_axes({"kidney_left": 1}, geometries, plan) == [a for a in (0, 1, 2) if a != expected]


def test_mirror_axes_keep_all_axes_unless_labels_are_lateral():
    geometries = {f"c{i}": SimpleNamespace(direction=AXIAL) for i in range(3)}
    geometries["odd"] = SimpleNamespace(direction=SAGITTAL)     # outvoted by the axial cases
    plan = {"transpose_forward": [0, 1, 2]}
    assert training_mirror_axes({"background": 0, "liver": 1}, geometries, plan) == [0, 1, 2]
    assert training_mirror_axes({"background": 0, "kidney_left": 1, "kidney_right": 2}, geometries, plan) == [0, 1]
