"""The whole MaskSAM network: forward/backward, freezing, presets, SAM checkpoints, ablations."""

import itertools

import pytest
import torch

from MaskSAMCore.errors import CheckpointError, ShapeError
from MaskSAMCore.model.builder import build_masksam, is_sam_weight, parameter_report
from MaskSAMCore.model.config import ADAPTER_KINDS, PROMPT_MODES, MaskSAMConfig, preset
from MaskSAMCore.model.sam_import import sam_model_registry


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _loss(out) -> torch.Tensor:
    """A scalar touching every output, with random weights so no gradient is trivially zero."""
    total = out.class_logits.sin().mean() + out.mask_logits.sin().mean()
    if out.aux_mask_logits is not None:
        total = total + out.aux_mask_logits.sin().mean()
    if out.aux_boxes is not None:
        total = total + out.aux_boxes.sin().mean()
    return total


@pytest.mark.parametrize("shape", [(1, 1, 4, 64, 64), (2, 2, 4, 64, 96)])
def test_tiny_forward_backward_shapes(shape):
    b, c, t, h, w = shape
    config = preset("tiny", num_classes=5, in_channels=c, image_size=(h, w))
    model = build_masksam(config)
    out = model(torch.randn(shape))
    n, k = config.num_queries, config.num_classes
    assert out.class_logits.shape == (b, t, n, k + 1)
    assert out.mask_logits.shape == (b, n, t, h, w)
    assert out.aux_mask_logits.shape == (b, n, t, h, w)
    assert out.aux_boxes.shape == (b, t, n, 4)
    assert out.prompt_boxes.shape == (b, t, n, 4)
    scores = model.semantic(out)
    assert scores.shape == (b, k, t, h, w)
    assert torch.isfinite(scores).all() and (scores >= 0).all()
    _loss(out).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_class_scores_are_summed_in_float32_under_autocast():
    """bf16 rounding of the query sum moved scores by ~0.01 near 1: labels at boundaries."""
    from MaskSAMCore.model.masksam import MaskSAM, MaskSAMOutput

    class_logits = torch.randn(2, 4, 12, 6) * 3                 # (B, T, N, K+1)
    mask_logits = torch.randn(2, 12, 4, 32, 32) * 4             # (B, N, T, H, W)
    output = MaskSAMOutput(class_logits=class_logits, mask_logits=mask_logits, aux_mask_logits=None,
                           aux_boxes=None, prompt_boxes=None)
    exact = MaskSAM.semantic(output)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = MaskSAM.semantic(output)
    assert mixed.dtype == torch.float32
    assert (mixed - exact).abs().max() < 1e-5


@pytest.mark.parametrize("prompt_mode", PROMPT_MODES)
@pytest.mark.parametrize("convolution", ["direct", "by_slices", "shifted"])
def test_the_network_runs_under_bf16_autocast_with_every_depthwise_convolution(monkeypatch, prompt_mode, convolution):
    """What CUDA runs (bf16 autocast; eager CUDA picks `by_slices`, a compiled model `shifted`),
    here on the CPU so that a dtype mix-up fails in CI, not first on a lent GPU."""
    from MaskSAMCore.model import adapters, depthwise_conv

    config = preset("tiny", num_classes=4, prompt_mode=prompt_mode)
    model = build_masksam(config).eval()
    patches = torch.randn(2, config.in_channels, config.num_slices, *config.image_hw)
    with torch.no_grad():
        exact = model.segment(patches)
        monkeypatch.setattr(adapters, "depthwise_conv3d", getattr(depthwise_conv, f"depthwise_conv3d_{convolution}"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.segment(patches)
    assert mixed.shape == exact.shape and mixed.dtype == torch.float32
    assert torch.isfinite(mixed).all()
    assert (mixed - exact).abs().max() < 0.1
    assert (mixed.argmax(1) == exact.argmax(1)).float().mean() > 0.99


def test_optimizer_step_changes_every_trainable_weight_and_no_sam_weight():
    model = build_masksam(preset("tiny", num_classes=4))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    _loss(model(torch.randn(1, 1, 4, 64, 64))).backward()
    optimizer.step()
    frozen = trainable = 0
    for name, p in model.named_parameters():
        if is_sam_weight(name):
            assert not p.requires_grad, name
            assert torch.equal(p, before[name]), f"SAM weight {name} changed"
            frozen += 1
        else:
            assert p.requires_grad, name
            assert not torch.equal(p, before[name]), f"trainable weight {name} did not change"
            trainable += 1
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert frozen > 50 and trainable > 50


def test_vit_b_parameter_counts_match_the_paper():
    report = parameter_report(build_masksam(preset("vit_b", num_classes=16)))
    trainable, total = report["total"]["trainable"], report["total"]["total"]
    print(f"vit_b: trainable {trainable / 1e6:.2f} M, total {total / 1e6:.2f} M")
    # Table 5: "14M" tunable parameters (rounded) for MaskSAM on ViT-B; a frozen prompt generator
    # (10 M) or a second adapter per encoder block (+3.6 M) would show here.
    assert 13.5e6 <= trainable < 14.5e6
    assert 95e6 <= total <= 115e6
    assert report["image encoder (SAM)"]["trainable"] == 0
    assert report["mask decoder (SAM)"]["trainable"] == 0
    assert report["prompt encoder (SAM)"]["trainable"] == 0


def test_presets_record_slices_and_round_trip_through_json():
    for name, slices, size in (("tiny", 4, (64, 64)), ("vit_b", 8, (512, 512))):
        config = preset(name, num_classes=16)
        assert config.num_slices == slices and config.image_hw == size
        assert MaskSAMConfig.from_dict(config.to_dict()) == config
    assert preset("vit_b", num_classes=30).num_queries >= 34  # queries outnumber classes
    with pytest.raises(ValueError, match="unknown preset"):
        preset("vit_x")


@pytest.fixture(scope="module")
def sam_vit_b_checkpoint(tmp_path_factory):
    """A state dict saved from segment_anything's own vit_b builder (1024 px), random weights."""
    sam = sam_model_registry["vit_b"]()
    with torch.no_grad():  # SAM zero-initialises some tables; make every weight distinctive
        for name, p in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b.pth"
    torch.save(sam.state_dict(), path)
    return path, sam.state_dict()


def test_official_1024_checkpoint_loads_into_512_model(sam_vit_b_checkpoint):
    path, original = sam_vit_b_checkpoint
    model = build_masksam(preset("vit_b", num_classes=16), sam_checkpoint=path)
    loaded = model.state_dict()
    assert loaded["image_encoder.pos_embed"].shape == (1, 32, 32, 768)
    global_block = "image_encoder.blocks.2.attn.rel_pos_h"
    window_block = "image_encoder.blocks.0.attn.rel_pos_h"
    assert original[global_block].shape == (127, 64) and loaded[global_block].shape == (63, 64)
    assert original[window_block].shape == (27, 64) and loaded[window_block].shape == (31, 64)
    # the resized embedding is an interpolation of the original, not noise
    corner = original["image_encoder.pos_embed"][0, :2, :2].mean((0, 1))
    assert torch.allclose(loaded["image_encoder.pos_embed"][0, 0, 0], corner, atol=0.15)
    for name, tensor in original.items():
        if name.startswith(("prompt_encoder.", "mask_decoder.")) or (
            name.startswith("image_encoder.") and "pos" not in name
        ):
            assert torch.equal(loaded[name], tensor), name


def test_wrong_type_checkpoint_is_refused_with_one_line(sam_vit_b_checkpoint, tmp_path):
    path, _ = sam_vit_b_checkpoint
    with pytest.raises(CheckpointError, match="is a SAM vit_b checkpoint, but this model needs SAM vit_l"):
        build_masksam(preset("vit_l", num_classes=4), sam_checkpoint=path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        build_masksam(preset("vit_b", num_classes=4), sam_checkpoint=truncated)
    assert "\n" not in str(info.value)
    not_sam = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, not_sam)
    with pytest.raises(CheckpointError, match="not a Segment Anything checkpoint"):
        build_masksam(preset("vit_b", num_classes=4), sam_checkpoint=not_sam)


def test_bad_input_shapes_give_one_clear_line():
    model = build_masksam(preset("tiny", num_classes=3, in_channels=2))
    with pytest.raises(ShapeError, match="expects a 5D input"):
        model(torch.randn(2, 4, 64, 64))
    with pytest.raises(ShapeError, match="takes 2 image channel\\(s\\), the input has 1"):
        model(torch.randn(1, 1, 4, 64, 64))
    with pytest.raises(ShapeError, match="patches"):
        model(torch.randn(1, 2, 3, 64, 64))


@pytest.mark.parametrize("mode,adapter", list(itertools.product(PROMPT_MODES, ADAPTER_KINDS)))
def test_every_ablation_variant_runs_forward(mode, adapter):
    config = preset("tiny", num_classes=3, prompt_mode=mode, adapter=adapter)
    out = build_masksam(config)(torch.randn(1, 1, 4, 64, 64))
    assert out.mask_logits.shape == (1, config.num_queries, 4, 64, 64)
    assert (out.aux_mask_logits is None) == (mode == "box")
    assert (out.aux_boxes is None) == (mode == "mask")


@pytest.mark.parametrize("position", ["after_up", "before_down"])
def test_depth_mlp_placement_ablations_and_no_depth_embedding(position):
    config = preset("tiny", num_classes=3, adapter="depth_mlp", depth_mlp_position=position,
                    depth_pos_embed=False)
    model = build_masksam(config)
    assert not any("depth_pos_embed.embedding" in name for name, _ in model.named_parameters())
    assert model(torch.randn(1, 1, 4, 64, 64)).class_logits.shape[-1] == 4


def test_decoding_a_few_patches_at_a_time_gives_the_same_scores():
    model = build_masksam(preset("tiny", num_classes=4)).eval()
    x = torch.randn(5, 1, 4, 64, 64)
    with torch.no_grad():
        whole = model.segment(x)
        chunked = model.segment(x, patches_per_decoder_call=2)
        one_by_one = torch.cat([model.segment(x[i:i + 1]) for i in range(5)])
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.allclose(whole, one_by_one, atol=1e-5)  # no patch influences another


@pytest.mark.parametrize("prompt", ["aux_low_res", "class_tokens", "boxes"])
def test_each_prompt_reaches_only_its_own_query(prompt):
    """A prompt of (volume 0, slice 2, query 1) changes that query's outputs and no other's."""
    model = build_masksam(preset("tiny", num_classes=4)).eval()
    with torch.no_grad():
        for p in model.parameters():  # adapters and heads away from their near-zero start
            p.add_(torch.randn_like(p) * 0.05)
        encoded = model._encode(torch.randn(2, 1, 4, 64, 64))
        before = model._decode(encoded, 0, 2)
        holder = encoded if prompt == "boxes" else encoded.prompts
        changed = getattr(holder, prompt).clone()
        changed[0, 2, 1] = changed[0, 2, 1] * 0.5 + 0.1
        setattr(holder, prompt, changed)
        after = model._decode(encoded, 0, 2)
    mask_moved = (after.mask_logits - before.mask_logits).abs().flatten(2).amax(-1) > 1e-6  # (B, N)
    class_moved = (after.class_logits - before.class_logits).abs().amax(dim=(1, 3)) > 1e-6  # (B, N)
    expected = torch.zeros_like(mask_moved)
    expected[0, 1] = True
    assert torch.equal(mask_moved, expected)
    assert torch.equal(class_moved, expected)
