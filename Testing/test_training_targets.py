"""Dataset mapping: a label patch becomes per-slice sets of (class, binary mask, box)."""

import pytest
import torch

from MaskSAMCore.training.targets import build_targets


def _hand_built_patch() -> torch.Tensor:
    """(B=1, T=2, H=6, W=8) with classes 0..3; class 1 is absent from slice 1, class 3 everywhere."""
    seg = torch.zeros(1, 2, 6, 8, dtype=torch.int16)
    seg[0, 0, 1:3, 2:5] = 1   # rows 1-2, columns 2-4
    seg[0, 0, 4, 7] = 2       # a single pixel in the last column
    seg[0, 1, 0:6, 0:2] = 2   # full height, columns 0-1
    return seg


def test_classes_present_per_slice_include_background_and_skip_absent_ones():
    targets = build_targets(_hand_built_patch(), num_classes=4)
    assert targets.num_slices == 2
    assert [c.tolist() for c in targets.classes] == [[0, 1, 2], [0, 2]]
    assert targets.num_targets == 5
    assert targets.present.tolist() == [[True, True, True, False], [True, False, True, False]]


def test_binary_masks_are_exactly_the_label_regions():
    seg = _hand_built_patch()
    targets = build_targets(seg, num_classes=4)
    for s in range(2):
        masks = targets.slice_masks(s)
        assert masks.shape == (len(targets.classes[s]), 6, 8)
        for mask, cls in zip(masks, targets.classes[s]):
            assert torch.equal(mask.bool(), seg[0, s] == cls)
        # the masks of a slice partition it
        assert torch.equal(masks.sum(0), torch.ones(6, 8))


def test_boxes_enclose_whole_pixels_normalised_x_along_width():
    targets = build_targets(_hand_built_patch(), num_classes=4)
    boxes0 = targets.slice_boxes(0)
    # class 1: columns 2..4 of 8, rows 1..2 of 6
    assert boxes0[1].tolist() == pytest.approx([2 / 8, 1 / 6, 5 / 8, 3 / 6])
    # class 2: the single pixel (row 4, column 7)
    assert boxes0[2].tolist() == pytest.approx([7 / 8, 4 / 6, 1.0, 5 / 6])
    # background surrounds everything in slice 0
    assert boxes0[0].tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0])
    boxes1 = targets.slice_boxes(1)
    assert boxes1[1].tolist() == pytest.approx([0.0, 0.0, 2 / 8, 1.0])   # class 2 in slice 1
    assert boxes1[0].tolist() == pytest.approx([2 / 8, 0.0, 1.0, 1.0])   # background
    # absent classes have zero boxes
    assert targets.boxes[1, 1].abs().sum() == 0 and targets.boxes[:, 3].abs().sum() == 0


def test_slices_are_flattened_batch_major():
    seg = torch.zeros(2, 3, 4, 4, dtype=torch.long)
    seg[1, 2, 0, 0] = 1  # only slice s = 1 * 3 + 2 = 5 holds class 1
    targets = build_targets(seg, num_classes=2)
    assert [1 in c.tolist() for c in targets.classes] == [False] * 5 + [True]


def test_label_outside_the_classes_is_refused():
    seg = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    seg[0, 0, 0, 0] = 5
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        build_targets(seg, num_classes=3)
