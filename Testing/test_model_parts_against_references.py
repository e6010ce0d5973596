"""Parts of the network against plain references: generalized IoU (the box loss) by hand,
the channels-last 3D convolution blocks against conv3d, every decoder adapter's output reaching
the masks and classes, the decoder's positional encoding (SAM's dense encoding plus the slice
embedding), the mask head fed the auxiliary masks, trainable weights round-tripping, and the
prompt generator's mask prompt and image skip read at the right pixels and slices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from MaskSAMCore.model.boxes import box_area, generalized_box_iou
from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.layers import ChannelsLastConvBlock, LightConvBlock, conv3d_channels_last
from MaskSAMCore.model.mask_decoder import MaskSAMDecoder
from MaskSAMCore.model.prompt_generator import PromptGenerator


def test_generalized_box_iou_values_of_overlapping_and_disjoint_boxes():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.6, 0.6, 0.8, 0.8]])
    # overlap: inter 1/16, union 7/16, hull 9/16 -> 1/7 - (2/16)/(9/16) = 1/7 - 2/9
    # disjoint: inter 0, union 0.08, hull 0.64 -> -(0.56 / 0.64)
    expected = torch.tensor([1 / 7 - 2 / 9, -0.56 / 0.64])
    assert torch.allclose(generalized_box_iou(a, b), expected, atol=1e-5)
    assert torch.allclose(generalized_box_iou(b, a), expected, atol=1e-5)   # symmetric


def test_generalized_box_iou_broadcasts_queries_against_targets():
    queries = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    targets = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    table = generalized_box_iou(queries[:, None], targets[None])
    assert table.shape == (2, 1)
    assert torch.isclose(table[0, 0], torch.tensor(1.0))
    assert torch.isclose(table[1, 0], torch.tensor(-0.5), atol=1e-5)   # union 0.5, hull 1


def test_box_area_of_an_inverted_box_is_zero():
    assert box_area(torch.tensor([0.6, 0.2, 0.4, 0.5])) == 0
    assert box_area(torch.tensor([0.2, 0.6, 0.4, 0.5])) == 0


def test_channels_last_conv_equals_conv3d_on_a_non_square_slab():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 5, 3, padding=1)
    x = torch.randn(2, 4, 6, 9, 3)                              # (B, T, h, w, C), h != w
    reference = conv(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
    assert torch.allclose(conv3d_channels_last(conv, x), reference, atol=1e-5)


def test_conv_blocks_are_conv_layernorm_gelu_per_voxel():
    torch.manual_seed(0)
    block = ChannelsLastConvBlock(3, 5)
    light = LightConvBlock(3, 5)
    x = torch.randn(1, 3, 5, 7, 3)
    first = x.permute(0, 4, 1, 2, 3)

    def ln(y, norm):   # layer norm over channels of a channels-first tensor
        return F.layer_norm(y.movedim(1, -1), (y.shape[1],), norm.weight, norm.bias, norm.eps).movedim(-1, 1)

    y = F.gelu(ln(block.conv1(first), block.norm1))
    y = F.gelu(ln(block.conv2(y), block.norm2))
    assert torch.allclose(block(x), y.permute(0, 2, 3, 4, 1), atol=1e-5)
    assert torch.allclose(light(x), F.gelu(light.conv(first)).permute(0, 2, 3, 4, 1), atol=1e-5)


def _run(decoder, inputs):
    with torch.no_grad():
        return decoder(*inputs)


@pytest.mark.parametrize("adapter", ["adapter_self_attn", "adapter_token_to_image", "adapter_mlp",
                                     "adapter_image_to_token"])
@pytest.mark.parametrize("index", [0, 1])
def test_each_decoder_adapter_output_changes_the_masks_and_classes(adapter, index):
    torch.manual_seed(0)
    config = preset("tiny", num_classes=3)
    t, n, c = config.num_slices, config.num_queries, config.backbone.prompt_embed_dim
    h, w = config.embedding_hw
    decoder = MaskSAMDecoder(config)
    with torch.no_grad():
        for p in decoder.parameters():
            p.normal_(0, 0.2)
    m = n * t
    inputs = (torch.randn(t, c, h, w), torch.randn(t, c, h, w), torch.randn(m, 2, c),
              torch.randn(m, h, w, c), torch.randn(m, c))
    before_cls, before_mask = _run(decoder, inputs)
    module = getattr(decoder.transformer.layers[index], adapter)
    shift = torch.Generator().manual_seed(1)
    handle = module.register_forward_hook(
        lambda mod, args, out: out + torch.randn(out.shape, generator=shift) * 0.5)
    after_cls, after_mask = _run(decoder, inputs)
    handle.remove()
    assert (after_mask - before_mask).abs().max() > 1e-6
    assert (after_cls - before_cls).abs().max() > 1e-6


def _perturbed(config, seed=0):
    torch.manual_seed(seed)
    model = build_masksam(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_decoder_positional_encoding_is_sams_dense_pe_plus_the_slice_embedding():
    config = preset("tiny", num_classes=3)
    model = _perturbed(config)
    with torch.no_grad():
        encoded = model._encode(torch.randn(1, 1, config.num_slices, *config.image_hw))
        dense = model.prompt_encoder.get_dense_pe()[0]                     # (C, h, w)
        depth = model.decoder_depth_pos_embed.embedding                    # (T, C)
    expected = dense.unsqueeze(0) + depth[:, :, None, None]
    assert torch.allclose(encoded.image_pe, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["mask", "mask_box", "mask_avg_box"])
def test_mask_head_refines_with_the_auxiliary_masks_in_mask_modes(mode):
    config = preset("tiny", num_classes=3, prompt_mode=mode)
    model = _perturbed(config)
    b, n, t = 1, config.num_queries, config.num_slices
    hw = config.low_res_mask_hw
    low_res = torch.randn(b, n, t, *hw)
    with torch.no_grad():
        one = model.mask_head(low_res, torch.randn(b, t, n, *hw), config.image_hw)
        two = model.mask_head(low_res, torch.randn(b, t, n, *hw), config.image_hw)
    assert (one - two).abs().max() > 1e-4


def test_trainable_weights_round_trip_into_a_fresh_network():
    config = preset("tiny", num_classes=3)
    trained = _perturbed(config, seed=0)
    fresh = build_masksam(config)
    fresh.load_trainable_state_dict(trained.trainable_state_dict())
    for (name, a), (_, b) in zip(trained.named_parameters(), fresh.named_parameters()):
        if a.requires_grad:
            assert torch.equal(a, b), name


def _inputs(config, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    t, (h, w) = config.num_slices, config.embedding_hw
    d = config.backbone.encoder_embed_dim
    neck = torch.randn(b * t, config.backbone.prompt_embed_dim, h, w, generator=g)
    features = [torch.randn(b * t, h, w, d, generator=g) for _ in config.feature_block_indexes]
    image = torch.randn(b, t, *config.image_hw, 3, generator=g)
    return neck, features, image


@pytest.mark.parametrize("image_size", [64, (64, 48)])
def test_low_res_mask_prompt_is_the_aux_logits_average_pooled_at_every_pixel(image_size):
    torch.manual_seed(0)
    config = preset("tiny", num_classes=3, image_size=image_size)
    generator = PromptGenerator(config).eval()
    with torch.no_grad():
        prompts = generator(*_inputs(config, b=2))
    aux = prompts.aux_mask_logits                          # (B, N, T, H, W)
    b, n, t, height, width = aux.shape
    f = config.backbone.patch_size // 4
    expected = F.avg_pool2d(aux.reshape(-1, 1, height, width), f).view(b, n, t, height // f, width // f)
    assert torch.allclose(prompts.aux_low_res, expected.transpose(1, 2), atol=1e-5)


def test_full_resolution_skip_reads_the_image_of_the_same_slice():
    """Only the last level (one 3x3x3 conv) sees the image, so the image of slice 0 reaches the
    auxiliary masks of slices 0 and 1 and never slice T-1."""
    torch.manual_seed(0)
    config = preset("tiny", num_classes=3)
    generator = PromptGenerator(config).eval()
    neck, features, image = _inputs(config)
    changed = image.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        before = generator(neck, features, image).aux_mask_logits
        after = generator(neck, features, changed).aux_mask_logits
    moved = (after - before).abs().amax(dim=(0, 1, 3, 4))     # per slice
    assert moved[0] > 1e-4
    assert torch.all(moved[2:] == 0), moved
