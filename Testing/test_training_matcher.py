"""Hungarian matching: optimal on small problems, and the batched costs equal a naive per-pair sum."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MaskSAMCore.model.boxes import generalized_box_iou
from MaskSAMCore.training.matcher import HungarianMatcher, optimal_assignment
from MaskSAMCore.training.slice_view import SlicePredictions
from MaskSAMCore.training.targets import build_targets
from MaskSAMCore.training.weights import LossWeights


def _brute_force_min_cost(cost: np.ndarray) -> float:
    n, m = cost.shape
    return min(sum(cost[rows[j], j] for j in range(m)) for rows in itertools.permutations(range(n), m))


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 2), (5, 3), (6, 4), (7, 1), (6, 6)])
def test_assignment_equals_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.normal(size=shape)
        rows, cols = optimal_assignment(cost)
        assert sorted(cols.tolist()) == list(range(shape[1]))        # every target matched once
        assert len(set(rows.tolist())) == shape[1]                   # by distinct queries
        assert cost[rows, cols].sum() == pytest.approx(_brute_force_min_cost(cost), abs=1e-9)


def test_non_finite_costs_do_not_crash_the_assignment():
    cost = np.array([[np.nan, 1.0], [0.0, np.inf], [2.0, 3.0]])
    rows, cols = optimal_assignment(cost)
    assert cols.tolist() == [0, 1] and len(set(rows.tolist())) == 2


def _random_output(b, t, n, k, h, w, seed, aux=True, boxes=True):
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(b, t, n, 2, 2, generator=g).sort(dim=-2).values  # (x0<x1, y0<y1)
    box = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], -1)
    return SimpleNamespace(
        class_logits=torch.randn(b, t, n, k + 1, generator=g),
        mask_logits=torch.randn(b, n, t, h, w, generator=g) * 3,
        aux_mask_logits=torch.randn(b, n, t, h, w, generator=g) * 3 if aux else None,
        aux_boxes=box if boxes else None,
    )


def _naive_pair_cost(out, targets, s, q, c, weights, t):
    """The cost of query q against class c in slice s, one pair at a time, at every pixel."""
    b, ti = divmod(s, t)
    gt = (targets.labels[s] == c).float().flatten()
    cost = -weights.cls * out.class_logits[b, ti, q].softmax(-1)[c]

    def bce_dice(logits):
        x = logits.flatten()
        p = x.sigmoid()
        bce = F.binary_cross_entropy_with_logits(x, gt)
        dice = 1 - (2 * (p * gt).sum() + 1) / (p.sum() + gt.sum() + 1)
        return bce, dice

    bce, dice = bce_dice(out.mask_logits[b, q, ti])
    cost = cost + weights.mask_bce * bce + weights.mask_dice * dice
    if out.aux_mask_logits is not None:
        bce, dice = bce_dice(out.aux_mask_logits[b, q, ti])
        cost = cost + weights.aux_mask_bce * bce + weights.aux_mask_dice * dice
    if out.aux_boxes is not None:
        pb, gb = out.aux_boxes[b, ti, q], targets.boxes[s, c]
        cost = cost + weights.box_l1 * (pb - gb).abs().sum() + weights.box_giou * (1 - generalized_box_iou(pb, gb))
    return float(cost)


@pytest.mark.parametrize("aux,boxes", [(True, True), (False, True), (True, False)])
def test_matcher_finds_the_brute_force_optimum_of_the_naive_cost(aux, boxes):
    b, t, n, k, h, w = 2, 2, 5, 4, 6, 7
    out = _random_output(b, t, n, k, h, w, seed=3, aux=aux, boxes=boxes)
    g = torch.Generator().manual_seed(4)
    seg = torch.randint(0, k, (b, t, h, w), generator=g)
    seg[0, 1][seg[0, 1] == 2] = 0            # class 2 absent from one slice
    seg[1, 0] = 0                            # a slice with background only
    targets = build_targets(seg, k)
    weights = LossWeights(cls=1.3, mask_bce=0.7, mask_dice=1.1, aux_mask_bce=0.4, aux_mask_dice=0.6,
                          box_l1=0.9, box_giou=0.5)
    matcher = HungarianMatcher(weights, num_points=10_000)   # > h * w: every pixel, like the naive cost
    matches = matcher(SlicePredictions.from_output(out), targets)

    assert len(matches) == targets.num_targets
    for s in range(b * t):
        classes = targets.classes[s].tolist()
        chosen = matches.slice_index == s
        assert sorted(matches.class_index[chosen].tolist()) == classes
        naive = np.array([[_naive_pair_cost(out, targets, s, q, c, weights, t) for c in classes]
                          for q in range(n)])
        got = sum(_naive_pair_cost(out, targets, s, q, c, weights, t)
                  for q, c in zip(matches.query_index[chosen].tolist(), matches.class_index[chosen].tolist()))
        assert got == pytest.approx(_brute_force_min_cost(naive), rel=1e-5, abs=1e-5)


def test_matcher_recovers_a_planted_permutation():
    k, n, h, w = 3, 6, 16, 16
    seg = torch.zeros(1, 1, h, w, dtype=torch.long)
    seg[0, 0, 2:8, 3:9] = 1
    seg[0, 0, 10:14, 1:15] = 2
    targets = build_targets(seg, k)
    planted = {0: 4, 1: 0, 2: 3}                                 # class -> query
    mask_logits = torch.full((1, n, 1, h, w), -8.0)
    class_logits = torch.zeros(1, 1, n, k + 1)
    boxes = torch.rand(1, 1, n, 4)
    for c, q in planted.items():
        mask_logits[0, q, 0][seg[0, 0] == c] = 8.0
        class_logits[0, 0, q, c] = 5.0
        boxes[0, 0, q] = targets.boxes[0, c]
    out = SimpleNamespace(class_logits=class_logits, mask_logits=mask_logits,
                          aux_mask_logits=mask_logits.clone(), aux_boxes=boxes)
    # fewer sampled points than pixels: the random-point path must still find it
    matches = HungarianMatcher(LossWeights(), num_points=64)(SlicePredictions.from_output(out), targets)
    assert dict(zip(matches.class_index.tolist(), matches.query_index.tolist())) == planted
