"""Network settings a user or a model folder gives: bad values refused naming the setting,
unknown settings refused, the default number of queries, the feature blocks of each preset,
windows that tile the token grid (SAM's own 14 at its native 1024 px), and model.json's network
section round-tripping through JSON."""

from __future__ import annotations

import json

import pytest

from MaskSAMCore.model.config import MaskSAMConfig, preset


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=60), "image_size 60 is not a multiple of the ViT patch 8"),
    (dict(image_size=(64, 44)), "not a multiple of the ViT patch 8"),
    (dict(image_size=0), "not a multiple of the ViT patch"),
    (dict(num_classes=1, num_queries=12), "num_classes must be at least 2"),
    (dict(num_classes=13, num_queries=12), r"num_queries \(12\) must be >= num_classes \(13\)"),
    (dict(num_slices=0), "in_channels and num_slices must be positive"),
    (dict(in_channels=0), "in_channels and num_slices must be positive"),
    (dict(prompt_mode="boxes"), "prompt_mode must be one of"),
    (dict(adapter="conv"), "adapter must be one of"),
    (dict(depth_mlp_position="end"), "depth_mlp_position must be one of"),
    (dict(encoder_adapters=3), "encoder_adapters must be 1 or 2, not 3"),
    (dict(prompt_generator_channels=(32, 24, 16)), "prompt_generator_channels needs 4 levels"),
])
def test_bad_settings_are_refused_naming_the_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        preset("tiny", num_classes=overrides.pop("num_classes", 3), **overrides)


def test_as_many_queries_as_classes_is_allowed():
    assert preset("tiny", num_classes=12, num_queries=12).num_queries == 12


def test_a_patch_that_is_not_a_power_of_two_is_refused():
    config = preset("tiny", num_classes=3)
    data = config.to_dict()
    data["backbone"]["patch_size"] = 12
    data["image_size"] = 48
    with pytest.raises(ValueError, match="power of two"):
        MaskSAMConfig.from_dict(data)


@pytest.mark.parametrize("name, image_size, window", [("vit_b", 512, 16), ("vit_b", 768, 16),
                                                      ("vit_b", 448, 14), ("vit_l", 512, 16),
                                                      ("vit_b", 1024, 14), ("vit_h", 1024, 14)])
def test_window_size_tiles_the_token_grid(name, image_size, window):
    assert preset(name, num_classes=3, image_size=image_size).backbone.window_size == window


def test_default_queries_outnumber_the_classes_by_four():
    assert preset("tiny", num_classes=3).num_queries == 12
    assert preset("tiny", num_classes=20).num_queries == 24
    assert preset("vit_b", num_classes=30).num_queries == 34


@pytest.mark.parametrize("image_size", [64, (64, 48), (64, 64)])
def test_config_round_trips_through_json(image_size):
    config = preset("tiny", num_classes=3, image_size=image_size, adapter="depth_mlp",
                    depth_mlp_position="after_up", depth_pos_embed=False)
    data = json.loads(json.dumps(config.to_dict()))
    again = MaskSAMConfig.from_dict(data)
    assert again == config
    assert again.image_hw == config.image_hw
    assert isinstance(again.backbone.encoder_global_attn_indexes, tuple)


def test_encoder_adapters_is_stored_only_when_not_the_default():
    """A model.json written before the setting existed (no field) reads back as one adapter per
    block, and the default network's model.json still has no field an earlier MaskSAM refuses."""
    config = preset("tiny", num_classes=3)
    data = json.loads(json.dumps(config.to_dict()))
    assert "encoder_adapters" not in data
    assert MaskSAMConfig.from_dict(data) == config and config.encoder_adapters == 1
    two = preset("tiny", num_classes=3, encoder_adapters=2)
    assert MaskSAMConfig.from_dict(json.loads(json.dumps(two.to_dict()))).encoder_adapters == 2


def test_square_pair_is_stored_as_one_number():
    assert preset("tiny", num_classes=3, image_size=(64, 64)).image_size == 64
    assert preset("tiny", num_classes=3, image_size=(64, 48)).to_dict()["image_size"] == [64, 48]


def test_unknown_network_setting_is_refused():
    data = preset("tiny", num_classes=3).to_dict()
    data["num_querys"] = 12
    with pytest.raises(ValueError, match=r"unknown network settings \['num_querys'\]"):
        MaskSAMConfig.from_dict(data)


@pytest.mark.parametrize("name, blocks", [("tiny", (0, 1, 2)), ("vit_b", (2, 5, 8, 11)),
                                          ("vit_h", (7, 15, 23, 31))])
def test_feature_blocks(name, blocks):
    assert preset(name, num_classes=3).feature_block_indexes == blocks
