"""SAM's weights and model folders: the presets are Segment Anything's own architectures,
SAM weights load resized and frozen or are refused when incomplete, a model folder keeps only
MaskSAM's own weights, names its classes by label value, refuses a newer format, a damaged
checkpoint and SAM weights other than those it was trained on; the
checkpoint cache replaces a file of the right size with the wrong bytes."""

import hashlib

import pytest
import torch

from MaskSAMCore.errors import CheckpointError, ModelFolderError
from MaskSAMCore.inference.random_model import synthetic_plan
from MaskSAMCore.model import sam_checkpoints
from MaskSAMCore.model.builder import build_masksam, is_sam_weight, load_sam_weights
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.masksam import MaskSAM
from MaskSAMCore.model.sam_checkpoints import SamCheckpointInfo, download
from MaskSAMCore.model.sam_import import get_rel_pos, sam_model_registry
from MaskSAMCore.model_folder import ModelFolder, save_checkpoint, write_model_json


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_presets_are_segment_anythings_architectures(name):
    """Built on the meta device (no memory): every weight of SAM's own builder fits the preset
    (resized position tables aside), with the same heads and the same global-attention blocks."""
    with torch.device("meta"):
        sam = sam_model_registry[name]()
        model = MaskSAM(preset(name, num_classes=4))
    load_sam_weights(model, sam.state_dict())       # CheckpointError on a missing / misshapen weight
    ours, theirs = model.image_encoder.blocks, sam.image_encoder.blocks
    assert len(ours) == len(theirs)
    for index, (a, b) in enumerate(zip(ours, theirs)):
        assert (a.window_size == 0) == (b.window_size == 0), index
        assert a.attn.num_heads == b.attn.num_heads, index
    assert model.mask_decoder.transformer.layers[0].self_attn.num_heads == \
        sam.mask_decoder.transformer.layers[0].self_attn.num_heads


def _tiny_sam_state(config, scale_tables=2):
    """SAM weights for the tiny preset with relative-position tables made for a larger input."""
    torch.manual_seed(0)
    model = build_masksam(config)
    state = {}
    for name, tensor in model.state_dict().items():
        if not is_sam_weight(name):
            continue
        if name.endswith((".rel_pos_h", ".rel_pos_w")):
            tensor = torch.randn(scale_tables * (tensor.shape[0] + 1) - 1, tensor.shape[1])
        else:
            tensor = torch.randn_like(tensor) if tensor.is_floating_point() else tensor
        state[name] = tensor
    return state


def test_resized_relative_position_tables_give_what_sam_computes_at_run_time():
    """SAM resizes a table made for another input size on every forward (get_rel_pos); loading
    it resized once must give the same per-offset embeddings."""
    config = preset("tiny", num_classes=3)
    state = _tiny_sam_state(config)
    loaded = build_masksam(config, sam_checkpoint=state).state_dict()
    h = config.embedding_hw[0]
    for name in ("image_encoder.blocks.2.attn.rel_pos_h", "image_encoder.blocks.0.attn.rel_pos_w"):
        size = h if "blocks.2." in name else config.backbone.window_size
        assert torch.allclose(get_rel_pos(size, size, loaded[name]), get_rel_pos(size, size, state[name]),
                              atol=1e-6), name


def test_a_sam_state_dict_lacking_a_weight_is_refused():
    config = preset("tiny", num_classes=3)
    state = _tiny_sam_state(config)
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(CheckpointError, match="lacks 1 weights .*mask_decoder.iou_token.weight"):
        build_masksam(config, sam_checkpoint=state)


def test_sam_weights_are_frozen_after_loading_a_checkpoint():
    config = preset("tiny", num_classes=3)
    model = build_masksam(config, sam_checkpoint=_tiny_sam_state(config))
    for name, p in model.named_parameters():
        assert p.requires_grad == (not is_sam_weight(name)), name


def _folder(path, config, weights, labels, scope="all"):
    path.mkdir(parents=True, exist_ok=True)
    write_model_json(path, {"labels": labels, "channel_names": {"0": "CT"}, "network": config.to_dict(),
                            "plan": synthetic_plan(config),
                            "sam": {"model_type": None, "sha256": None, "random_init": True}})
    save_checkpoint(path / "checkpoint_final.pt", {"weights": weights, "weights_scope": scope})
    return path


def test_class_names_follow_label_values_not_the_alphabet(tmp_path):
    config = preset("tiny", num_classes=3)
    labels = {"background": 0, "spleen": 1, "liver": 2}
    folder = ModelFolder.load(_folder(tmp_path / "m", config, {}, labels))
    assert folder.class_names == ["background", "spleen", "liver"]


def test_a_whole_network_checkpoint_missing_a_weight_is_refused(tmp_path):
    config = preset("tiny", num_classes=3)
    weights = build_masksam(config).state_dict()
    del weights["class_head.weight"]
    path = _folder(tmp_path / "m", config, weights, {"background": 0, "a": 1, "b": 2})
    with pytest.raises(CheckpointError, match="does not fit this model folder's network.*class_head.weight"):
        ModelFolder.load(path).build_model()


def test_a_cached_checkpoint_of_the_right_size_but_wrong_bytes_is_downloaded_again(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 64
    source = tmp_path / "source.pth"
    source.write_bytes(payload)
    info = SamCheckpointInfo("vit_b", source.as_uri(), len(payload), hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(sam_checkpoints.REGISTRY, "vit_b", info)
    cache = tmp_path / "cache"
    cache.mkdir()
    damaged = bytearray(payload)
    damaged[100] ^= 0xFF                                  # one flipped byte, same size
    (cache / "source.pth").write_bytes(bytes(damaged))
    path = download("vit_b", cache_dir=cache, progress=False)
    assert path.read_bytes() == payload


def test_a_sam_checkpoint_other_than_the_recorded_one_is_refused(tmp_path, monkeypatch):
    """model.json records the SHA-256 of the SAM weights the adapters were trained on; another file
    of the same type (another release, a fine-tuned SAM) gives silently wrong masks."""
    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    config = preset("tiny", num_classes=3)
    trained_on, other = tmp_path / "trained_on.pth", tmp_path / "other.pth"
    torch.save(_tiny_sam_state(config), trained_on)
    state = _tiny_sam_state(config)
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"] + 1.0
    torch.save(state, other)
    digest = hashlib.sha256(trained_on.read_bytes()).hexdigest()
    path = tmp_path / "m"
    path.mkdir()
    write_model_json(path, {"labels": {"background": 0, "a": 1, "b": 2}, "channel_names": {"0": "CT"},
                            "network": config.to_dict(), "plan": synthetic_plan(config),
                            "sam": {"model_type": "none", "sha256": digest, "random_init": False}})
    save_checkpoint(path / "checkpoint_final.pt",
                    {"weights": build_masksam(config).trainable_state_dict(), "weights_scope": "trainable"})
    folder = ModelFolder.load(path)
    folder.build_model(sam_checkpoint=trained_on)            # the recorded file is accepted
    with pytest.raises(ModelFolderError, match=r"other\.pth is not the SAM checkpoint model .* was trained on "
                                               r"\(SHA-256 [0-9a-f]{12}\.\.\., model\.json records "
                                               rf"{digest[:12]}\.\.\.\)"):
        folder.build_model(sam_checkpoint=other)


def test_trainable_state_dict_holds_exactly_the_trainable_weights_and_loading_checks_them():
    """A model folder stores only MaskSAM's additions (not SAM's ~90 M weights), and loading
    refuses a set that does not match (a weight left at random would give silent garbage)."""
    model = build_masksam(preset("tiny", num_classes=3))
    weights = model.trainable_state_dict()
    expected = {name for name, _ in model.named_parameters() if not is_sam_weight(name)}
    assert set(weights) == expected
    incomplete = dict(weights)
    del incomplete["class_head.weight"]
    with pytest.raises(KeyError, match="missing \\['class_head.weight'\\]"):
        build_masksam(preset("tiny", num_classes=3)).load_trainable_state_dict(incomplete)
    with pytest.raises(KeyError, match="unexpected \\['image_encoder.pos_embed'\\]"):
        build_masksam(preset("tiny", num_classes=3)).load_trainable_state_dict(
            dict(weights, **{"image_encoder.pos_embed": model.image_encoder.pos_embed.detach()}))


def test_a_model_from_a_newer_network_format_is_refused(tmp_path):
    import json

    from MaskSAMCore.model_json import NETWORK_FORMAT

    config = preset("tiny", num_classes=3)
    path = _folder(tmp_path / "m", config, {}, {"background": 0, "a": 1, "b": 2})
    meta = json.loads((path / "model.json").read_text())
    meta["network_format"] = NETWORK_FORMAT + 1
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFolderError, match=f"a newer MaskSAM network \\(format {NETWORK_FORMAT + 1}"):
        ModelFolder.load(path)

