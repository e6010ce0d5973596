"""Losses: finite, near zero for perfect predictions, and they drive a toy problem down."""

from types import SimpleNamespace

import pytest
import torch

from MaskSAMCore.training.losses import MaskSAMLoss
from MaskSAMCore.training.point_sampling import mask_points


def _toy_seg(h=24, w=24):
    seg = torch.zeros(1, 2, h, w, dtype=torch.long)
    seg[0, 0, 3:12, 4:15] = 1
    seg[0, 0, 14:20, 2:22] = 2
    seg[0, 1, 5:18, 5:18] = 2                      # class 1 absent from slice 1
    return seg


def _perfect_output(seg, k, n):
    """Query c predicts class c exactly (mask, box, class); the rest say 'no object'."""
    from MaskSAMCore.training.targets import build_targets

    b, t, h, w = seg.shape
    targets = build_targets(seg, k)
    mask_logits = torch.full((b, n, t, h, w), -30.0)
    class_logits = torch.full((b, t, n, k + 1), -30.0)
    class_logits[..., k] = 30.0
    boxes = torch.zeros(b, t, n, 4)
    for ti in range(t):
        for c in targets.classes[ti].tolist():
            mask_logits[0, c, ti][seg[0, ti] == c] = 30.0
            class_logits[0, ti, c] = -30.0
            class_logits[0, ti, c, c] = 30.0
            boxes[0, ti, c] = targets.boxes[ti, c]
    return SimpleNamespace(class_logits=class_logits, mask_logits=mask_logits,
                           aux_mask_logits=mask_logits.clone(), aux_boxes=boxes)


def test_perfect_predictions_cost_almost_nothing_and_random_ones_a_lot():
    seg = _toy_seg()
    criterion = MaskSAMLoss(num_classes=3, num_points=4096)
    perfect = criterion(_perfect_output(seg, 3, 6), seg)
    assert perfect.num_targets == 5
    assert set(perfect.terms) == {"cls", "mask_bce", "mask_dice", "aux_bce", "aux_dice", "box_l1", "box_giou"}
    assert float(perfect.total) < 1e-3, perfect.terms
    g = torch.Generator().manual_seed(0)
    random = SimpleNamespace(class_logits=torch.randn(1, 2, 6, 4, generator=g),
                             mask_logits=torch.randn(1, 6, 2, 24, 24, generator=g),
                             aux_mask_logits=torch.randn(1, 6, 2, 24, 24, generator=g),
                             aux_boxes=torch.rand(1, 2, 6, 4, generator=g))
    result = criterion(random, seg)
    assert torch.isfinite(result.total) and float(result.total) > 1.0


def test_loss_decreases_when_optimised_on_a_toy_problem():
    torch.manual_seed(0)
    seg = _toy_seg()
    n, k = 6, 3
    params = {
        "class_logits": torch.zeros(1, 2, n, k + 1, requires_grad=True),
        "mask_logits": (0.1 * torch.randn(1, n, 2, 24, 24)).requires_grad_(),
        "aux_mask_logits": (0.1 * torch.randn(1, n, 2, 24, 24)).requires_grad_(),
        "aux_boxes": torch.full((1, 2, n, 4), 0.5).add(0.05 * torch.randn(1, 2, n, 4)).requires_grad_(),
    }
    criterion = MaskSAMLoss(num_classes=k, num_points=4096)
    optimizer = torch.optim.Adam(params.values(), lr=0.1)
    history = []
    for _ in range(60):
        result = criterion(SimpleNamespace(**params), seg)
        optimizer.zero_grad()
        result.total.backward()
        optimizer.step()
        history.append(float(result.total.detach()))
    assert all(torch.isfinite(torch.tensor(history)))
    assert history[-1] < 0.1 * history[0], (history[0], history[-1])


def test_ablation_outputs_drop_their_terms():
    seg = _toy_seg()
    out = _perfect_output(seg, 3, 6)
    out.aux_mask_logits = None
    assert set(MaskSAMLoss(3)(out, seg).terms) == {"cls", "mask_bce", "mask_dice", "box_l1", "box_giou"}
    out = _perfect_output(seg, 3, 6)
    out.aux_boxes = None
    assert set(MaskSAMLoss(3)(out, seg).terms) == {"cls", "mask_bce", "mask_dice", "aux_bce", "aux_dice"}


def test_importance_sampling_on_large_masks_is_finite_and_gives_gradients():
    torch.manual_seed(1)
    seg = torch.zeros(1, 1, 96, 96, dtype=torch.long)
    seg[0, 0, 20:70, 30:80] = 1
    logits = torch.randn(1, 4, 1, 96, 96, requires_grad=True)
    out = SimpleNamespace(class_logits=torch.randn(1, 1, 4, 3), mask_logits=logits,
                          aux_mask_logits=None, aux_boxes=None)
    result = MaskSAMLoss(num_classes=2, num_points=500)(out, seg)   # 500 < 96 * 96 pixels
    result.total.backward()
    assert torch.isfinite(result.total)
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_mask_points_uses_every_pixel_when_small_and_uncertain_points_when_large():
    pred = torch.randn(3, 8, 8)
    target = (torch.rand(3, 8, 8) > 0.5).float()
    p, t, _ = mask_points(pred, target, num_points=100, oversample=3, importance=0.75)
    assert p.shape == (3, 64) and torch.equal(t, target.reshape(3, 64))
    # a mask that is confident on its left and right quarters only: importance points land there
    pred = torch.full((1, 64, 64), 20.0)
    pred[0, :, 16:48] = 0.0
    p, _, _ = mask_points(pred, torch.ones(1, 64, 64), num_points=200, oversample=3, importance=0.75)
    assert p.shape == (1, 200)
    assert (p[0, :150].abs() < 19).float().mean() > 0.9    # the 150 chosen points are uncertain


def test_loss_terms_equal_hand_computed_values_and_the_total_weights_each_term():
    """One 4 x 4 slice, class 1 in its top-left 2 x 2 corner; queries 0 and 2 matched to classes
    0 and 1, query 1 unmatched. Every term is worked out by hand, and the total must use each
    weight of the user's settings (all different here), no_object included."""
    import math

    from MaskSAMCore.training.matcher import Matches
    from MaskSAMCore.training.slice_view import SlicePredictions
    from MaskSAMCore.training.targets import build_targets
    from MaskSAMCore.training.weights import LossWeights

    seg = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    seg[0, 0, :2, :2] = 1
    class_logits = torch.tensor([[[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 3.0]]]])  # (1, 1, 3, K+1)
    boxes = torch.tensor([[[[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4], [0.0, 0.0, 0.5, 1.0]]]])
    out = SimpleNamespace(class_logits=class_logits, mask_logits=torch.zeros(1, 3, 1, 4, 4),
                          aux_mask_logits=torch.ones(1, 3, 1, 4, 4), aux_boxes=boxes)
    matches = Matches(torch.tensor([0, 0]), torch.tensor([0, 2]), torch.tensor([0, 1]))
    weights = LossWeights(cls=1.1, no_object=0.3, mask_bce=1.7, mask_dice=2.3, aux_mask_bce=0.7,
                          aux_mask_dice=0.9, box_l1=1.3, box_giou=0.4)
    criterion = MaskSAMLoss(num_classes=2, weights=weights, num_points=4096)   # 16 pixels: all of them
    result = criterion.loss(SlicePredictions.from_output(out), build_targets(seg, 2), matches)

    def cross_entropy(logits, target):
        return math.log(sum(math.exp(v) for v in logits)) - logits[target]

    rows = class_logits[0, 0].tolist()
    # Weighted mean over the 3 queries: targets 0, "no object" (2, weight 0.3), 1.
    cls = (cross_entropy(rows[0], 0) + 0.3 * cross_entropy(rows[1], 2) + cross_entropy(rows[2], 1)) / 2.3
    softplus_1, sigmoid_1 = math.log(1 + math.e), 1 / (1 + math.exp(-1))
    foreground = {0: 12, 1: 4}                                   # target pixels of classes 0 and 1
    expected = {
        "cls": cls,
        "mask_bce": math.log(2),                                 # logit 0: ln 2 at every pixel
        "mask_dice": sum(1 - (2 * 0.5 * g + 1) / (0.5 * 16 + g + 1) for g in foreground.values()) / 2,
        "aux_bce": sum(softplus_1 - g / 16 for g in foreground.values()) / 2,
        "aux_dice": sum(1 - (2 * sigmoid_1 * g + 1) / (sigmoid_1 * 16 + g + 1) for g in foreground.values()) / 2,
        # query 0 = class 0's box exactly; query 2 = [0, 0, .5, 1] against [0, 0, .5, .5]: L1 0.5, GIoU 0.5
        "box_l1": 0.5 / 2,
        "box_giou": 0.5 / 2,
    }
    assert result.num_targets == 2
    assert result.terms == pytest.approx(expected, rel=1e-5)
    total = (weights.cls * expected["cls"] + weights.mask_bce * expected["mask_bce"]
             + weights.mask_dice * expected["mask_dice"] + weights.aux_mask_bce * expected["aux_bce"]
             + weights.aux_mask_dice * expected["aux_dice"] + weights.box_l1 * expected["box_l1"]
             + weights.box_giou * expected["box_giou"])
    assert float(result.total) == pytest.approx(total, rel=1e-5)
