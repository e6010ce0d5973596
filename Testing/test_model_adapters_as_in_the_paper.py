"""The adapters as the paper draws them (§2.4, Fig. 4), where they sit in SAM's encoder and
decoder blocks (§2.6), the encoder at initialisation (SAM's own, the adapters silent) and the
residual 3D mask head.

References are written here from the paper's description with plain torch operations.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from MaskSAMCore.model.adapters import Adapter, DConvAdapter, DMLPAdapter
from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.image_encoder import AdaptedBlock, AdaptedImageEncoder
from MaskSAMCore.model.mask_head import MaskHead3D
from MaskSAMCore.model.sam_import import ImageEncoderViT, window_partition, window_unpartition

G, T, H, W, C = 2, 4, 5, 6, 16


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


def _depth_mlp(mlp, x):
    """x + MLP over axis 1 (the T slices)."""
    moved = x.movedim(1, -1)
    return x + F.linear(F.gelu(F.linear(moved, mlp.expand.weight, mlp.expand.bias)),
                        mlp.project.weight, mlp.project.bias).movedim(-1, 1)


def _reference(adapter, x):
    down = lambda v: F.gelu(F.linear(v, adapter.down.weight, adapter.down.bias))  # noqa: E731
    up = lambda v: F.linear(v, adapter.up.weight, adapter.up.bias)                # noqa: E731
    if isinstance(adapter, DConvAdapter):
        hidden = down(x)
        conv = adapter.depth_conv.conv
        channels_first = hidden.permute(0, 4, 1, 2, 3)
        conv_out = F.conv3d(channels_first, conv.weight, conv.bias, padding=1, groups=conv.in_channels)
        return up(hidden + conv_out.permute(0, 2, 3, 4, 1))
    if isinstance(adapter, DMLPAdapter):
        if adapter.position == "before_down":
            return up(down(_depth_mlp(adapter.depth_mlp, x)))
        if adapter.position == "after_up":
            return _depth_mlp(adapter.depth_mlp, up(down(x)))
        return up(_depth_mlp(adapter.depth_mlp, down(x)))
    return up(down(x))


@pytest.mark.parametrize("make", [partial(Adapter, C), partial(DConvAdapter, C),
                                  partial(DMLPAdapter, C, T, position="middle"),
                                  partial(DMLPAdapter, C, T, position="after_up"),
                                  partial(DMLPAdapter, C, T, position="before_down")],
                         ids=["vanilla", "dconv", "dmlp_middle", "dmlp_after_up", "dmlp_before_down"])
def test_adapters_compute_the_papers_branches(make):
    """Fig. 4: FC-down, GELU, [depthwise 3D conv with skip | depth MLP with skip], FC-up."""
    torch.manual_seed(0)
    adapter = make()
    _perturb(adapter)
    x = torch.randn(G, T, H, W, C)
    with torch.no_grad():
        assert torch.allclose(adapter(x), _reference(adapter, x), atol=1e-5)


def test_depth_mlp_is_an_inverted_bottleneck():
    adapter = DMLPAdapter(C, T)
    assert adapter.depth_mlp.expand.in_features == T and adapter.depth_mlp.expand.out_features > T


@pytest.mark.parametrize("kind", ["depth_conv", "depth_mlp", "vanilla"])
def test_each_block_gets_the_adapter_the_variant_names(kind):
    """B9 (MaskSAM): DConvAdapter on image embeddings (every encoder block, decoder image->token),
    DMLPAdapter on prompt tokens; B8: DMLPAdapter everywhere; B5: vanilla everywhere."""
    model = build_masksam(preset("tiny", num_classes=3, adapter=kind))
    image_type = {"depth_conv": DConvAdapter, "depth_mlp": DMLPAdapter, "vanilla": Adapter}[kind]
    token_type = Adapter if kind == "vanilla" else DMLPAdapter
    for block in model.image_encoder.blocks:
        assert type(block.adapter) is image_type
    for layer in model.mask_decoder.transformer.layers:
        assert type(layer.adapter_image_to_token) is image_type
        for name in ("adapter_self_attn", "adapter_token_to_image", "adapter_mlp"):
            assert type(getattr(layer, name)) is token_type, name


def _perturbed_block_and_input(window: int, encoder_adapters: int = 1):
    """A tiny preset's encoder block (windowed when `window` > 0) with non-zero adapters, and an
    input of two volumes' slices (2T, h, w, C)."""
    torch.manual_seed(0)
    config = preset("tiny", num_classes=3, encoder_adapters=encoder_adapters)
    grid = config.embedding_hw
    block = AdaptedBlock(config, window, grid if window == 0 else (window, window))
    _perturb(block)
    return config, grid, block, torch.randn(2 * config.num_slices, *grid, config.backbone.encoder_embed_dim)


def _sam_attention(block: AdaptedBlock, normed: torch.Tensor, window: int, grid) -> torch.Tensor:
    """SAM's own attention of `block` over (slices, h, w, C), in windows when `window` > 0."""
    if not window:
        return block.attn(normed)
    parts, pad = window_partition(normed, window)
    return window_unpartition(block.attn(parts), window, pad, grid)


@pytest.mark.parametrize("window", [0, 4])
def test_encoder_block_adds_the_adapter_of_the_normed_post_attention_features_per_volume(window):
    """Fig. 4(c): y = x + attn(norm1(x)); out = y + mlp(norm2(y)) + adapter(norm2(y)), the adapter
    seeing (volume, slice) groups of whole slices."""
    config, grid, block, x = _perturbed_block_and_input(window)
    with torch.no_grad():
        attended = _sam_attention(block, block.norm1(x), window, grid)
        y = x + attended
        z = block.norm2(y)
        by_volume = z.view(2, config.num_slices, *z.shape[1:])
        expected = y + block.mlp(z) + _reference(block.adapter, by_volume).view_as(z)
        assert torch.allclose(block(x), expected, atol=1e-4)


@pytest.mark.parametrize("window", [0, 4])
def test_second_encoder_adapter_sits_behind_attention(window):
    """The other reading of §2.4 (`encoder_adapters=2`): a = attn(norm1(x)); y = x + a + adapter(a);
    out = y + mlp(norm2(y)) + adapter(norm2(y))."""
    config, grid, block, x = _perturbed_block_and_input(window, encoder_adapters=2)
    with torch.no_grad():
        attended = _sam_attention(block, block.norm1(x), window, grid)
        by_volume = attended.view(2, config.num_slices, *attended.shape[1:])
        y = x + attended + _reference(block.attn_adapter, by_volume).view_as(attended)
        z = block.norm2(y)
        expected = y + block.mlp(z) + _reference(block.adapter, z.view_as(by_volume)).view_as(z)
        assert torch.allclose(block(x), expected, atol=1e-4)


def test_second_encoder_adapter_adds_one_adapter_per_block_and_defaults_to_off():
    one, two = (build_masksam(preset("tiny", num_classes=3, encoder_adapters=n)) for n in (1, 2))
    trainable = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (one, two)]
    per_block = sum(p.numel() for p in one.image_encoder.blocks[0].adapter.parameters())
    assert trainable[1] - trainable[0] == per_block * len(one.image_encoder.blocks)
    assert all(block.attn_adapter is None for block in one.image_encoder.blocks)
    assert preset("vit_b", num_classes=3).encoder_adapters == 1


@pytest.mark.parametrize("encoder_adapters", [1, 2])
def test_encoder_at_initialisation_with_silent_adapters_is_sams_encoder(encoder_adapters):
    """Depth embedding starts at zero, SAM's absolute embedding and blocks are used: with the
    adapters' output layers zeroed, neck and block features equal SAM's ImageEncoderViT."""
    torch.manual_seed(0)
    config = preset("tiny", num_classes=3, encoder_adapters=encoder_adapters)
    b = config.backbone
    ours = AdaptedImageEncoder(config)
    sam = ImageEncoderViT(img_size=config.image_hw[0], patch_size=b.patch_size, embed_dim=b.encoder_embed_dim,
                          depth=b.encoder_depth, num_heads=b.encoder_num_heads, out_chans=b.prompt_embed_dim,
                          qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                          window_size=b.window_size, global_attn_indexes=b.encoder_global_attn_indexes)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "adapter" not in name and "depth_pos_embed" not in name:
                p.normal_(0, 0.2)
        for block in ours.blocks:
            for adapter in filter(None, (block.adapter, block.attn_adapter)):
                adapter.up.weight.zero_()
                adapter.up.bias.zero_()
    sam.load_state_dict({k: v for k, v in ours.state_dict().items()
                         if "adapter" not in k and "depth_pos_embed" not in k})
    x = torch.randn(config.num_slices, 3, *config.image_hw)
    with torch.no_grad():
        neck, features = ours(x)
        tokens = sam.patch_embed(x) + sam.pos_embed
        expected_features = []
        for index, block in enumerate(sam.blocks):
            tokens = block(tokens)
            if index in config.feature_block_indexes:
                expected_features.append(tokens)
        assert torch.allclose(neck, sam(x), atol=1e-4)
    assert len(features) == len(expected_features)
    for got, expected in zip(features, expected_features):
        assert torch.allclose(got, expected, atol=1e-4)


def test_mask_head_refines_sams_upsampled_mask_residually():
    """DESIGN item 6: output = bilinear up-sampling of (SAM's mask + 3D refinement); the
    refinement starts near zero."""
    torch.manual_seed(0)
    head = MaskHead3D(hidden_channels=4)
    low = torch.randn(2, 3, T, 8, 12) * 3
    aux = torch.randn(2, T, 3, 8, 12)
    plain = F.interpolate(low.reshape(6, T, 8, 12), size=(32, 48), mode="bilinear",
                          align_corners=False).view(2, 3, T, 32, 48)
    with torch.no_grad():
        assert (head(low, aux, (32, 48)) - plain).abs().max() < 0.05       # near-silent at start
        head.refine[-1].weight.zero_()
        head.refine[-1].bias.zero_()
        assert torch.allclose(head(low, aux, (32, 48)), plain, atol=1e-5)  # exactly residual


def test_decoder_adapters_sit_where_the_paper_puts_them():
    """§2.6 iii: a DMLPAdapter behind token self-attention and behind token->image attention, one
    parallel to the token MLP (same input), a DConvAdapter behind image->token attention. Each
    adapter's input is compared with SAM's own attention modules run on the block's tensors."""
    from MaskSAMCore.model.mask_decoder import MaskSAMDecoder

    torch.manual_seed(0)
    config = preset("tiny", num_classes=3)
    t, n, c = config.num_slices, config.num_queries, config.backbone.prompt_embed_dim
    h, w = config.embedding_hw
    decoder = MaskSAMDecoder(config)
    _perturb(decoder)
    layer = decoder.transformer.layers[1]          # a block that adds the positional encodings
    seen = {}

    def keep(name, output=False):
        def hook(module, args, result):
            seen[name] = (result if output else args[0]).detach().clone()
        return hook

    for name in ("adapter_self_attn", "adapter_token_to_image", "adapter_mlp", "adapter_image_to_token", "mlp"):
        getattr(layer, name).register_forward_hook(keep(name))
    for name in ("norm1", "norm3"):
        getattr(layer, name).register_forward_hook(keep(name, output=True))
    layer.register_forward_pre_hook(lambda module, args: seen.__setitem__("args", args))
    m = n * t
    with torch.no_grad():
        decoder(torch.randn(t, c, h, w), torch.randn(t, c, h, w), torch.randn(m, 2, c),
                torch.randn(m, h, w, c), torch.randn(m, c))
        queries, keys, query_pe, key_pe, layout, _ = seen["args"]
        by_slice = lambda x: x.view(-1, t, *x.shape[1:])   # noqa: E731  (B*N, T, ...)
        q = queries + query_pe
        assert torch.allclose(seen["adapter_self_attn"], by_slice(layer.self_attn(q=q, k=q, v=queries)), atol=1e-4)
        keys_pe = layout.add_image_pe(keys, key_pe)
        q = seen["norm1"] + query_pe
        expected = layer.cross_attn_token_to_image(q=q, k=keys_pe, v=keys)
        assert torch.allclose(seen["adapter_token_to_image"], by_slice(expected), atol=1e-4)
        assert torch.equal(seen["adapter_mlp"], by_slice(seen["mlp"]))
        q = seen["norm3"] + query_pe
        expected = layer.cross_attn_image_to_token(q=keys_pe, k=q, v=seen["norm3"])
        assert torch.allclose(seen["adapter_image_to_token"], expected.view(-1, t, h, w, c), atol=1e-4)
