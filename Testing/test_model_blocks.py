"""Shape contracts and SAM-equivalence of every MaskSAM building block (tiny widths, CPU)."""

from functools import partial

import pytest
import torch

from MaskSAMCore.model.adapters import Adapter, DConvAdapter, DepthwiseConv3d, DMLPAdapter
from MaskSAMCore.model.attention import (
    decoder_attention,
    encoder_attention,
    image_to_token_attention,
    relative_position_table,
    token_to_image_attention,
)
from MaskSAMCore.model.boxes import generalized_box_iou, masks_to_boxes
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.depth_embedding import DepthPositionalEmbedding
from MaskSAMCore.model.image_encoder import AdaptedBlock, AdaptedImageEncoder
from MaskSAMCore.model.depthwise_conv import (
    depthwise_conv3d_by_slices,
    depthwise_conv3d_direct,
    depthwise_conv3d_shifted,
)
from MaskSAMCore.model.layers import TokenUpsampler
from MaskSAMCore.model.mask_decoder import MaskSAMDecoder, SliceLayout
from MaskSAMCore.model.mask_head import MaskHead3D
from MaskSAMCore.model.modality_adapter import ModalityAdapter
from MaskSAMCore.model.prompt_generator import PromptGenerator
from MaskSAMCore.model.sam_import import (DecoderAttention, EncoderAttention, EncoderBlock, TwoWayTransformer,
                                          get_rel_pos)

G, T, H, W, C = 2, 4, 6, 5, 16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _perturb(module: torch.nn.Module) -> None:
    """Give every weight a random value (SAM's zero-initialised tables included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


@pytest.mark.parametrize("make_adapter", [partial(Adapter, C), partial(DConvAdapter, C), partial(DMLPAdapter, C, T)])
def test_adapters_keep_shape_and_start_near_zero(make_adapter):
    torch.manual_seed(0)  # built here, not at collection, so the draw does not depend on test order
    adapter = make_adapter()
    x = torch.randn(G, T, H, W, C)
    out = adapter(x)
    assert out.shape == x.shape
    # The residual branch starts (almost) silent: PyTorch's default init would give ~0.3 x x.std().
    assert out.std() < 0.01 * x.std()
    assert out.abs().max() < 1e-2


def test_depth_adapters_mix_slices_but_vanilla_does_not():
    x = torch.randn(G, T, H, W, C)
    changed = x.clone()
    changed[:, 0] += 1.0
    for adapter, mixes in ((Adapter(C), False), (DConvAdapter(C), True), (DMLPAdapter(C, T), True)):
        _perturb(adapter)
        difference = (adapter(changed) - adapter(x))[:, 1:].abs().max()
        assert (difference > 1e-4) == mixes, type(adapter).__name__


def test_depth_adapters_never_mix_groups():
    x = torch.randn(G, T, H, W, C)
    changed = x.clone()
    changed[0] += 1.0
    for adapter in (DConvAdapter(C), DMLPAdapter(C, T)):
        _perturb(adapter)
        assert torch.equal(adapter(changed)[1], adapter(x)[1])


@pytest.mark.parametrize("position", ["middle", "after_up", "before_down"])
def test_dmlp_positions(position):
    adapter = DMLPAdapter(C, T, position=position)
    assert adapter(torch.randn(G, T, 7, C)).shape == (G, T, 7, C)


def test_dconv_adapter_needs_spatial_layout():
    with pytest.raises(ValueError, match="expects \\(G, T, h, w, C\\)"):
        DConvAdapter(C)(torch.randn(G, T, 7, C))


def test_depth_positional_embedding_adds_per_slice():
    embed = DepthPositionalEmbedding(T, C)
    with torch.no_grad():
        embed.embedding.copy_(torch.arange(T, dtype=torch.float32).unsqueeze(1).expand(T, C))
    x = torch.zeros(G * T, H, W, C)
    out = embed(x)
    assert torch.equal(out[T + 2], torch.full((H, W, C), 2.0))
    first = embed(torch.zeros(G * T, C, H, W), channels_first=True)
    assert torch.equal(first[3, :, 0, 0], torch.full((C,), 3.0))
    with pytest.raises(ValueError, match="not a multiple of 4 slices"):
        embed(torch.zeros(7, H, W, C))


def test_modality_adapter_maps_channels_to_rgb_and_starts_grey():
    adapter = ModalityAdapter(in_channels=2, hidden_channels=8)
    x = torch.randn(2, 2, T, 8, 8)
    out = adapter(x)
    assert out.shape == (2, T, 8, 8, 3)  # channels-last, ready for SAM's patch embedding
    grey = x.mean(1).unsqueeze(-1).expand(-1, -1, -1, -1, 3)
    assert (out - grey).abs().max() < 0.05
    with pytest.raises(ValueError, match="expected input \\(B, 2, T, H, W\\)"):
        adapter(torch.randn(2, 3, T, 8, 8))


@pytest.mark.parametrize("size, table_size", [((8, 8), (8, 8)), ((6, 10), (6, 10)),
                                              ((8, 8), (14, 14)), ((6, 10), (16, 9))])
def test_fused_encoder_attention_equals_sam(size, table_size):
    """Also with position tables made for another size (SAM's global blocks at 512 px, whose
    tables were made for 1024 px and are resized on the fly)."""
    attn = EncoderAttention(32, num_heads=4, use_rel_pos=True, input_size=table_size)
    _perturb(attn)
    x = torch.randn(3, *size, 32)
    assert torch.allclose(encoder_attention(attn, x), attn(x), atol=1e-5)


@pytest.mark.parametrize("size, length", [(8, 15), (8, 27), (5, 3)])
def test_relative_position_table_is_sams_lookup_made_on_the_tables_device(size, length):
    rel_pos = torch.randn(length, 6)
    assert torch.equal(relative_position_table(size, rel_pos), get_rel_pos(size, size, rel_pos))


def test_fused_decoder_attention_equals_sam():
    attn = DecoderAttention(32, num_heads=4, downsample_rate=2)
    q, k = torch.randn(5, 8, 32), torch.randn(5, 30, 32)
    assert torch.allclose(decoder_attention(attn, q, k, k), attn(q=q, k=k, v=k), atol=1e-6)


@pytest.mark.parametrize("window", [0, 4])
def test_adapted_block_computes_what_sam_block_computes(window):
    config = preset("tiny", num_classes=3)
    dim = config.backbone.encoder_embed_dim
    grid = config.embedding_hw
    adapted = AdaptedBlock(config, window, grid if window == 0 else (window, window))
    sam_block = EncoderBlock(dim=dim, num_heads=config.backbone.encoder_num_heads, use_rel_pos=True,
                             window_size=window, input_size=grid if window == 0 else (window, window),
                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    _perturb(adapted)
    sam_state = {k: v for k, v in adapted.state_dict().items() if "adapter" not in k}
    sam_block.load_state_dict(sam_state)
    x = torch.randn(2 * config.num_slices, *grid, dim)
    # With a silent adapter branch the block is exactly SAM's block (fused attention included) ...
    with torch.no_grad():
        adapted.adapter.up.weight.zero_()
        adapted.adapter.up.bias.zero_()
    assert torch.allclose(adapted(x), sam_block(x), atol=1e-4)
    # ... and the adapter is really in the computation.
    with torch.no_grad():
        adapted.adapter.up.weight.normal_(0, 0.5)
    assert not torch.allclose(adapted(x), sam_block(x), atol=1e-2)


def test_image_encoder_shapes():
    config = preset("tiny", num_classes=3, image_size=(64, 96))
    encoder = AdaptedImageEncoder(config)
    neck, features = encoder(torch.randn(2 * config.num_slices, 3, 64, 96))
    h, w = config.embedding_hw
    assert neck.shape == (2 * config.num_slices, config.backbone.prompt_embed_dim, h, w)
    assert len(features) == len(config.feature_block_indexes)
    assert all(f.shape == (2 * config.num_slices, h, w, config.backbone.encoder_embed_dim) for f in features)


@pytest.mark.parametrize("name, blocks", [("vit_b", (2, 5, 8, 11)), ("vit_l", (5, 11, 17, 23)),
                                          ("vit_h", (7, 15, 23, 31)), ("tiny", (0, 1, 2))])
def test_prompt_generator_reads_the_last_block_and_three_more_a_quarter_apart(name, blocks):
    # ViT-B's are the paper's "each three attention blocks"; deeper backbones must still end
    # with the last block rather than read only the top third of the encoder.
    assert preset(name, num_classes=3).feature_block_indexes == blocks


@pytest.mark.parametrize("mode", ["mask", "box", "mask_box", "mask_avg_box"])
def test_prompt_generator_shapes(mode):
    config = preset("tiny", num_classes=3, prompt_mode=mode)
    b, t, n = 2, config.num_slices, config.num_queries
    h, w = config.embedding_hw
    generator = PromptGenerator(config)
    features = [torch.randn(b * t, h, w, config.backbone.encoder_embed_dim) for _ in config.feature_block_indexes]
    prompts = generator(torch.randn(b * t, config.backbone.prompt_embed_dim, h, w), features,
                        torch.randn(b, t, *config.image_hw, 3))
    assert prompts.class_tokens.shape == (b, t, n, config.backbone.prompt_embed_dim)
    if mode == "box":
        assert prompts.aux_mask_logits is None and prompts.aux_low_res is None
    else:
        aux = prompts.aux_mask_logits
        assert aux.shape == (b, n, t, *config.image_hw)
        assert prompts.aux_low_res.shape == (b, t, n, *config.low_res_mask_hw)
        # the low-resolution prompt is the average of the full-resolution logits
        f = config.backbone.patch_size // 4
        pooled = aux[0, 1, 2, :f, :f].mean()
        assert torch.allclose(prompts.aux_low_res[0, 2, 1, 0, 0], pooled, atol=1e-5)
    if mode == "mask":
        assert prompts.learned_boxes is None
    else:
        boxes = prompts.learned_boxes
        assert boxes.shape == (b, t, n, 4)
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()


def test_slice_layout_views_rows_by_query_without_copies():
    layout = SliceLayout(num_slices=3)
    rows = torch.arange(2 * 2 * 3, dtype=torch.float32)  # B = N = 2; row index = (b*N + n)*T + t
    x = rows.view(-1, 1, 1).expand(-1, 4, 5).contiguous()
    grouped = layout.image_by_slice(x, (2, 2))  # (B*N, T, h, w, C)
    assert grouped.shape == (4, 3, 2, 2, 5)
    assert grouped[1, 2, 0, 0, 0] == 5  # b=0, n=1, t=2 -> row 1*3 + 2
    assert grouped.data_ptr() == x.data_ptr() and layout.tokens_by_slice(x).data_ptr() == x.data_ptr()
    pe = torch.arange(3, dtype=torch.float32).view(3, 1, 1).expand(3, 4, 5)
    assert torch.equal(layout.add_image_pe(x, pe), x + (rows % 3).view(-1, 1, 1))


def test_folded_cross_attentions_equal_sam():
    attn = DecoderAttention(32, num_heads=4, downsample_rate=2)
    _perturb(attn)
    tokens, image, values = torch.randn(5, 8, 32), torch.randn(5, 30, 32), torch.randn(5, 30, 32)
    assert torch.allclose(token_to_image_attention(attn, tokens, image, values),
                          attn(q=tokens, k=image, v=values), atol=1e-5)
    assert torch.allclose(image_to_token_attention(attn, image, tokens, 2 * tokens),
                          attn(q=image, k=tokens, v=2 * tokens), atol=1e-5)


def _silence_adapters(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, sub in module.named_modules():
            if name.endswith("up") and "adapter" in name:
                sub.weight.zero_()
                sub.bias.zero_()


def _decoder_and_inputs(volumes: int = 2):
    """A tiny perturbed decoder and random inputs for ``volumes`` patches (rows: volume, query, slice)."""
    config = preset("tiny", num_classes=3)
    t, n = config.num_slices, config.num_queries
    c = config.backbone.prompt_embed_dim
    h, w = config.embedding_hw
    m = volumes * n * t
    decoder = MaskSAMDecoder(config)
    _perturb(decoder)
    inputs = dict(neck=torch.randn(volumes * t, c, h, w), pe=torch.randn(t, c, h, w),
                  sparse=torch.randn(m, 2, c), dense=torch.randn(m, h, w, c), class_tokens=torch.randn(m, c))
    return config, decoder, inputs


def _decode(decoder, inputs):
    return decoder(inputs["neck"], inputs["pe"], inputs["sparse"], inputs["dense"], inputs["class_tokens"])


def test_decoder_with_silent_adapters_computes_sam_per_prompt():
    config, decoder, inputs = _decoder_and_inputs()
    t, n = config.num_slices, config.num_queries
    c = config.backbone.prompt_embed_dim
    h, w = config.embedding_hw
    _silence_adapters(decoder)
    sam = TwoWayTransformer(depth=config.backbone.decoder_depth, embedding_dim=c,
                            num_heads=config.backbone.decoder_num_heads,
                            mlp_dim=config.backbone.decoder_mlp_dim)
    sam.load_state_dict({k[len("transformer."):]: v for k, v in decoder.state_dict().items()
                         if k.startswith("transformer.") and "adapter" not in k})
    m = inputs["sparse"].shape[0]
    with torch.no_grad():
        embedding, masks = _decode(decoder, inputs)
        for row in [0, 5, m - 1]:
            volume, slice_ = row // (n * t), row % t  # rows are (volume, query, slice)
            tokens = torch.cat([inputs["class_tokens"][row, None], decoder.iou_token.weight,
                                decoder.mask_tokens.weight, inputs["sparse"][row]]).unsqueeze(0)
            image = inputs["neck"][volume * t + slice_] + inputs["dense"][row].permute(2, 0, 1)
            hs, keys = sam(image.unsqueeze(0), inputs["pe"][slice_].unsqueeze(0), tokens)
            upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(1, c, h, w))
            hyper = decoder.output_hypernetworks_mlps[0](hs[:, 2])
            expected_mask = torch.einsum("bc,bchw->bhw", hyper, upscaled)[0]
            assert torch.allclose(embedding[row], hs[0, 0], atol=1e-4)
            assert torch.allclose(masks[row], expected_mask, atol=1e-3 * expected_mask.abs().max())


def test_decoder_depth_adapters_connect_the_slices_of_one_query_only():
    config, decoder, inputs = _decoder_and_inputs(volumes=2)
    b, t, n = 2, config.num_slices, config.num_queries
    changed = dict(inputs, dense=inputs["dense"].clone())
    row = (1 * n + 2) * t + 1  # volume 1, query 2, slice 1
    changed["dense"][row] += 1.0
    with torch.no_grad():
        before = _decode(decoder, inputs)[1].view(b, n, t, -1)
        after = _decode(decoder, changed)[1].view(b, n, t, -1)
    moved = (after - before).abs().amax(dim=-1) > 1e-6
    expected = torch.zeros(b, n, t, dtype=torch.bool)
    expected[1, 2, :] = True
    assert torch.equal(moved, expected)


def test_mask_decoder_shapes():
    config = preset("tiny", num_classes=3)
    b, t, n = 1, config.num_slices, config.num_queries
    c = config.backbone.prompt_embed_dim
    h, w = config.embedding_hw
    m = b * t * n
    decoder = MaskSAMDecoder(config)
    embedding, masks = decoder(torch.randn(b * t, c, h, w), torch.randn(t, c, h, w),
                               torch.randn(m, 2, c), torch.randn(m, h, w, c), torch.randn(m, c))
    assert embedding.shape == (m, c)
    assert masks.shape == (m, *config.low_res_mask_hw)


def test_mask_head_shapes():
    head = MaskHead3D(hidden_channels=4)
    low = torch.randn(2, 3, T, 16, 24)
    out = head(low, torch.randn(2, T, 3, 16, 24), (64, 96))
    assert out.shape == (2, 3, T, 64, 96)
    with pytest.raises(ValueError, match="auxiliary"):
        head(low, None, (64, 96))


def test_masks_to_boxes_and_giou():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 2:5, 3:6] = True
    boxes, nonempty = masks_to_boxes(masks)
    assert nonempty.tolist() == [True, False]
    assert torch.allclose(boxes[0], torch.tensor([0.3, 0.2, 0.6, 0.5]))
    assert torch.equal(boxes[1], torch.zeros(4))
    a = torch.tensor([0.1, 0.1, 0.5, 0.5])
    assert torch.isclose(generalized_box_iou(a, a), torch.tensor(1.0))
    far = torch.tensor([0.6, 0.6, 0.9, 0.9])
    assert generalized_box_iou(a, far) < 0


@pytest.mark.parametrize("implementation", [depthwise_conv3d_direct, depthwise_conv3d_by_slices,
                                            depthwise_conv3d_shifted])
@pytest.mark.parametrize("depth", [1, 2, T])
def test_every_depthwise_conv_equals_conv3d(implementation, depth):
    conv = torch.nn.Conv3d(C, C, 3, padding=1, groups=C)
    _perturb(conv)
    x = torch.randn(G, depth, H, W, C)
    expected = conv(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
    assert torch.allclose(implementation(x, conv.weight, conv.bias), expected, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_depthwise_conv_on_cuda_equals_conv3d_on_cpu(dtype):
    conv = torch.nn.Conv3d(C, C, 3, padding=1, groups=C)
    _perturb(conv)
    x = torch.randn(G, T, H, W, C).to(dtype)
    expected = depthwise_conv3d_direct(x.float(), conv.weight, conv.bias)
    adapter_conv = DepthwiseConv3d(C).cuda()
    adapter_conv.conv.load_state_dict(conv.state_dict())
    with torch.no_grad():
        result = adapter_conv(x.cuda()).float().cpu() - x.float()
    assert torch.allclose(result, expected, atol=1e-5 if dtype == torch.float32 else 0.1)


def test_token_upsampler_equals_transposed_convolution():
    up = TokenUpsampler(C, 3, factor=4)
    transposed = torch.nn.ConvTranspose3d(C, 3, (1, 4, 4), stride=(1, 4, 4))
    with torch.no_grad():  # Linear rows are ordered (fy, fx, out)
        weight = up.linear.weight.view(4, 4, 3, C).permute(3, 2, 0, 1).unsqueeze(2)
        transposed.weight.copy_(weight)
        transposed.bias.copy_(up.linear.bias.view(4, 4, 3)[0, 0])
        up.linear.bias.copy_(transposed.bias.repeat(16))
    x = torch.randn(G, T, H, W, C)
    expected = transposed(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
    assert torch.allclose(up(x), expected, atol=1e-5)


def test_channels_last_sam_paths_equal_sam_modules():
    config = preset("tiny", num_classes=3, image_size=(64, 96))
    model_parts = MaskSAMDecoder(config)
    from MaskSAMCore.model.sam_fast_paths import embed_masks, upscaled_mask_logits
    from MaskSAMCore.model.sam_import import PromptEncoder

    encoder = PromptEncoder(embed_dim=32, image_embedding_size=config.embedding_hw,
                            input_image_size=config.image_hw, mask_in_chans=8)
    _perturb(encoder)
    _perturb(model_parts)
    masks = torch.randn(5, 1, *config.low_res_mask_hw)
    assert torch.allclose(embed_masks(encoder, masks).permute(0, 3, 1, 2), encoder._embed_masks(masks), atol=1e-4)
    tokens, hyper = torch.randn(5, 32, *config.embedding_hw), torch.randn(5, 4)
    expected = torch.einsum("mc,mchw->mhw", hyper, model_parts.output_upscaling(tokens))
    assert torch.allclose(upscaled_mask_logits(model_parts, tokens.permute(0, 2, 3, 1), hyper),
                          expected, atol=1e-4)
