"""Loading weights and model folders: a SAM state dict touches only SAM's own weights (never a
MaskSAM addition inside SAM's modules) and names a misshapen weight; a checkpoint's SAM type is
read from its embedding width; the cache lookup needs the file; model folders order class names
by value, refuse newer formats, suggest the best checkpoint of an unfinished run, treat a
checkpoint without a scope as trainable weights and build the model in eval mode."""

from __future__ import annotations

import json

import pytest
import torch

from MaskSAMCore.errors import CheckpointError, ModelFolderError
from MaskSAMCore.inference.random_model import synthetic_plan
from MaskSAMCore.model import sam_checkpoints
from MaskSAMCore.model.builder import build_masksam, is_sam_weight
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.sam_checkpoints import find_cached_by_hash, load_sam_state_dict
from MaskSAMCore.model_folder import ModelFolder, save_checkpoint, write_model_json


ADAPTER = "image_encoder.blocks.0.adapter.up.weight"


def _sam_state(config):
    torch.manual_seed(0)
    return {name: torch.randn_like(t) if t.is_floating_point() else t
            for name, t in build_masksam(config).state_dict().items() if is_sam_weight(name)}


def test_keys_outside_sams_modules_are_ignored():
    config = preset("tiny", num_classes=3)
    state = _sam_state(config)
    state["class_head.weight"] = torch.full((4, config.backbone.prompt_embed_dim), 7.0)
    state["global_class_tokens.weight"] = torch.zeros(1)          # wrong shape, still ignored
    model = build_masksam(config, sam_checkpoint=state)
    assert not torch.any(model.class_head.weight == 7.0)
    assert torch.equal(model.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])


def test_masksam_additions_inside_sam_modules_are_not_loaded_from_a_sam_state_dict():
    config = preset("tiny", num_classes=3)
    state = _sam_state(config)
    fresh = build_masksam(config).state_dict()[ADAPTER]
    state[ADAPTER] = torch.full_like(fresh, 7.0)
    model = build_masksam(config, sam_checkpoint=state)
    assert not torch.any(model.state_dict()[ADAPTER] == 7.0)


def test_a_misshapen_sam_weight_is_one_line_naming_it():
    config = preset("tiny", num_classes=3)
    state = _sam_state(config)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    with pytest.raises(CheckpointError, match=r"SAM weight mask_decoder.iou_token.weight has shape \(1, 7\)"):
        build_masksam(config, sam_checkpoint=state)


def _fake_sam(path, width):
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 1, 1)}, path)
    return path


@pytest.mark.parametrize("width, found", [(768, "vit_b"), (1024, "vit_l"), (1280, "vit_h")])
def test_checkpoint_type_is_named_by_its_embed_width(tmp_path, width, found):
    path = _fake_sam(tmp_path / "sam.pth", width)
    assert set(load_sam_state_dict(path, expected_type=found)) == {"image_encoder.patch_embed.proj.weight"}
    for other in {"vit_b", "vit_l", "vit_h"} - {found}:
        with pytest.raises(CheckpointError, match=f"is a SAM {found} checkpoint, but this model needs SAM {other}"):
            load_sam_state_dict(path, expected_type=other)


def test_an_unknown_width_is_named_as_such(tmp_path):
    path = _fake_sam(tmp_path / "sam.pth", 512)
    with pytest.raises(CheckpointError, match=r"is a SAM unknown \(512-wide\) checkpoint"):
        load_sam_state_dict(path, expected_type="vit_b")
    load_sam_state_dict(path, expected_type="none")   # random-init backbones check nothing


def test_a_checkpoint_holding_other_values_than_tensors_is_refused(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 1, 1), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="not a dict of tensors"):
        load_sam_state_dict(path, expected_type="vit_b")


def test_cache_lookup_by_hash_needs_the_file(tmp_path):
    info = sam_checkpoints.REGISTRY["vit_l"]
    assert find_cached_by_hash(info.sha256, cache_dir=tmp_path) is None
    assert find_cached_by_hash("0" * 64, cache_dir=tmp_path) is None
    (tmp_path / info.filename).write_bytes(b"x")
    assert find_cached_by_hash(info.sha256, cache_dir=tmp_path) == tmp_path / info.filename


def _folder(path, config, labels=None, sam=None, checkpoints=("final",)):
    path.mkdir(parents=True, exist_ok=True)
    write_model_json(path, {
        "name": "Test model", "labels": labels or {"background": 0, "liver": 1, "spleen": 2},
        "channel_names": {"0": "CT"}, "network": config.to_dict(), "plan": synthetic_plan(config),
        "sam": sam if sam is not None else {"model_type": None, "sha256": None, "random_init": True},
    })
    weights = build_masksam(config).state_dict()
    for which in checkpoints:
        save_checkpoint(path / f"checkpoint_{which}.pt", {"weights": weights, "weights_scope": "all"})
    return path


def test_class_names_are_ordered_by_label_value_whatever_the_order_in_model_json(tmp_path):
    config = preset("tiny", num_classes=3)
    folder = ModelFolder.load(_folder(tmp_path / "m", config, {"spleen": 2, "background": 0, "liver": 1}))
    assert folder.class_names == ["background", "liver", "spleen"]


def test_a_newer_folder_format_version_is_refused(tmp_path):
    config = preset("tiny", num_classes=3)
    path = _folder(tmp_path / "m", config)
    meta = json.loads((path / "model.json").read_text())
    assert meta["format_version"] == 1   # a model without regions stays readable by older MaskSAMs
    meta["format_version"] = 3
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFolderError, match="has format version 3; this MaskSAM reads up to 2"):
        ModelFolder.load(path)


def test_without_a_recorded_sam_hash_the_backbone_is_random_and_needs_no_sam_file(tmp_path):
    config = preset("tiny", num_classes=3)
    folder = ModelFolder.load(_folder(tmp_path / "m", config, sam={"model_type": "none"}))
    assert folder.random_init
    assert folder.resolve_sam_checkpoint() is None
    folder.build_model()


def test_an_unfinished_training_suggests_the_best_checkpoint_before_the_latest(tmp_path):
    config = preset("tiny", num_classes=3)
    folder = ModelFolder.load(_folder(tmp_path / "m", config, checkpoints=("latest", "best")))
    with pytest.raises(ModelFolderError, match=r"present: best, latest: .* predict with --checkpoint best\)"):
        folder.checkpoint_path("final")


def test_a_checkpoint_without_a_scope_holds_trainable_weights_and_the_model_is_in_eval_mode(tmp_path):
    config = preset("tiny", num_classes=3)
    path = _folder(tmp_path / "m", config, checkpoints=())
    torch.manual_seed(3)
    trained = build_masksam(config)
    save_checkpoint(path / "checkpoint_final.pt", {"weights": trained.trainable_state_dict()})
    model = ModelFolder.load(path).build_model()
    assert not model.training
    assert torch.equal(model.class_head.weight, trained.class_head.weight)
