"""The prompts MaskSAM makes for itself and what it does with them: boxes from masks on
non-square grids, the box prompt of each prompt-generator variant (paper Fig. 5), corners in
pixels for SAM's prompt encoder, every feature level reaching the prompt generator, and the
semantic scores (MaskFormer inference) a user's label map comes from.

Each expected value is computed here from the definition (plain loops / NumPy), never copied
from a run of the code under test.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MaskSAMCore.model.boxes import cxcywh_to_xyxy, masks_to_boxes, scale_xyxy
from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.layers import pool_per_slice
from MaskSAMCore.model.masksam import MaskSAM, MaskSAMOutput
from MaskSAMCore.model.prompt_generator import PromptGenerator, Prompts


def _tight_box(mask: np.ndarray):
    """Normalised xyxy of a 2D bool mask, far edge exclusive (boxes.py's convention), or None."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    height, width = mask.shape
    return [cols.min() / width, rows.min() / height, (cols.max() + 1) / width, (rows.max() + 1) / height]


def test_masks_to_boxes_on_a_non_square_grid_uses_width_for_x_and_height_for_y():
    torch.manual_seed(0)
    masks = torch.rand(3, 5, 12, 20) > 0.97           # (..., H=12, W=20), some empty
    masks[0, 0] = False
    boxes, nonempty = masks_to_boxes(masks)
    for index in np.ndindex(3, 5):
        expected = _tight_box(masks[index].numpy())
        assert bool(nonempty[index]) == (expected is not None)
        assert torch.allclose(boxes[index], torch.tensor(expected or [0.0] * 4, dtype=torch.float32), atol=1e-6), index


def test_scale_and_centre_size_conversions():
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    assert torch.allclose(scale_xyxy(boxes, width=100, height=10), torch.tensor([[10.0, 2.0, 30.0, 4.0]]))
    # centre (0.5, 0.4), width 0.2, height 0.6 -> x 0.4..0.6, y 0.1..0.7; out of range is clamped
    centre = torch.tensor([[0.5, 0.4, 0.2, 0.6], [0.05, 0.9, 0.3, 0.4]])
    expected = torch.tensor([[0.4, 0.1, 0.6, 0.7], [0.0, 0.7, 0.2, 1.0]])
    assert torch.allclose(cxcywh_to_xyxy(centre), expected, atol=1e-6)


def _prompts(b=2, t=3, n=5, h=16, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, t, h, w, generator=g) - 2.5   # mostly negative: some masks empty
    logits[0, 1, 0] = -1.0                                  # certainly empty
    logits[1, 2, 2, 3:7, 5:11] = 4.0                        # certainly non-empty
    corners = torch.rand(b, t, n, 2, 2, generator=g)
    learned = torch.cat([corners.amin(-2), corners.amax(-2)], -1)  # valid xyxy
    return Prompts(aux_mask_logits=logits, aux_low_res=None, learned_boxes=learned,
                   class_tokens=torch.zeros(b, t, n, 1))


@pytest.mark.parametrize("mode", ["mask_avg_box", "mask", "mask_box", "box"])
def test_box_prompts_follow_the_prompt_generator_variant(mode):
    """Fig. 5: (d) mean of the learnable box and the thresholded auxiliary mask's box; (a) the
    mask's box; (b), (c) the learnable box. Empty mask: learnable box / the whole slice."""
    model = build_masksam(preset("tiny", num_classes=3, prompt_mode=mode))
    prompts = _prompts()
    if mode == "mask":
        prompts.learned_boxes = None
    got = model._box_prompts(prompts)
    b, n, t = prompts.aux_mask_logits.shape[:3]
    assert got.shape == (b, t, n, 4)
    for bi, ti, ni in np.ndindex(b, t, n):
        mask_box = _tight_box((prompts.aux_mask_logits[bi, ni, ti] > 0).numpy())
        learned = None if prompts.learned_boxes is None else prompts.learned_boxes[bi, ti, ni].tolist()
        if mode in ("box", "mask_box"):
            expected = learned
        elif mode == "mask":
            expected = mask_box if mask_box is not None else [0.0, 0.0, 1.0, 1.0]
        else:
            expected = learned if mask_box is None else [(a + c) / 2 for a, c in zip(learned, mask_box)]
        assert torch.allclose(got[bi, ti, ni], torch.tensor(expected, dtype=torch.float32), atol=1e-6), (bi, ti, ni)


def test_sam_receives_box_corners_in_pixels_x_along_width():
    """A non-square patch: SAM's prompt encoder must get x * W and y * H, rows (volume, query, slice)."""
    model = build_masksam(preset("tiny", num_classes=3, image_size=(64, 96))).eval()
    seen = []
    original = model.prompt_encoder._embed_boxes
    model.prompt_encoder._embed_boxes = lambda boxes: (seen.append(boxes.clone()), original(boxes))[1]
    with torch.no_grad():
        encoded = model._encode(torch.randn(2, 1, 4, 64, 96))
        model._decode(encoded, 0, 2)
    boxes = encoded.boxes                                               # (B, T, N, 4) in [0, 1]
    b, t, n = boxes.shape[:3]
    expected = torch.empty(b * n * t, 4)
    for bi, ni, ti in np.ndindex(b, n, t):
        x0, y0, x1, y1 = boxes[bi, ti, ni].tolist()
        expected[(bi * n + ni) * t + ti] = torch.tensor([x0 * 96, y0 * 64, x1 * 96, y1 * 64])
    assert torch.allclose(seen[0], expected, atol=1e-4)


def test_semantic_scores_are_maskformer_inference():
    """score[b, k, t] = sum_n softmax(class[b, t, n])[k] * sigmoid(mask[b, n, t]); the last
    class column ("no object") is dropped, background (column 0) is kept."""
    g = torch.Generator().manual_seed(3)
    b, t, n, k, h, w = 2, 3, 4, 3, 5, 6
    class_logits = torch.randn(b, t, n, k + 1, generator=g) * 2
    mask_logits = torch.randn(b, n, t, h, w, generator=g) * 2
    out = MaskSAMOutput(class_logits=class_logits, mask_logits=mask_logits, aux_mask_logits=None,
                        aux_boxes=None, prompt_boxes=None)
    got = MaskSAM.semantic(out)
    cl, ml = class_logits.double().numpy(), mask_logits.double().numpy()
    expected = np.zeros((b, k, t, h, w))
    for bi, ti, ni in np.ndindex(b, t, n):
        probs = np.exp(cl[bi, ti, ni]) / np.exp(cl[bi, ti, ni]).sum()
        for ki in range(k):
            expected[bi, ki, ti] += probs[ki] / (1 + np.exp(-ml[bi, ni, ti]))
    assert np.allclose(got.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 8, 6, 5), (1, 2, 7, 5, 3)])
def test_pool_per_slice_is_adaptive_average_pooling(shape):
    x = torch.randn(shape)
    b, t, h, w, c = shape
    for size in (1, 2):
        expected = F.adaptive_avg_pool2d(x.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w), size)
        expected = expected.view(b, t, c, size, size).permute(0, 1, 3, 4, 2).reshape(b, t, -1)
        assert torch.allclose(pool_per_slice(x, size), expected, atol=1e-6)


def test_prompt_generator_reads_every_feature_level_and_the_image():
    """§2.3: multiple levels of encoder features (shallow ones feed the finer levels) and, at
    full resolution, the adapted image: each one must influence the auxiliary masks."""
    torch.manual_seed(0)
    config = preset("tiny", num_classes=3)
    b, t = 1, config.num_slices
    h, w = config.embedding_hw
    generator = PromptGenerator(config).eval()
    neck = torch.randn(b * t, config.backbone.prompt_embed_dim, h, w)
    features = [torch.randn(b * t, h, w, config.backbone.encoder_embed_dim) for _ in config.feature_block_indexes]
    image = torch.randn(b, t, *config.image_hw, 3)
    with torch.no_grad():
        base = generator(neck, features, image).aux_mask_logits
        for index in range(len(features)):
            changed = list(features)
            changed[index] = features[index] + 1.0
            moved = (generator(neck, changed, image).aux_mask_logits - base).abs().max()
            assert moved > 1e-4, f"feature map {index} does not reach the prompt generator"
        moved = (generator(neck, features, image + 1.0).aux_mask_logits - base).abs().max()
        assert moved > 1e-4, "the full-resolution image skip is missing"
