"""--sam-checkpoint: a file or a model type found in the cache; its SHA-256 is what model.json records."""

import hashlib

import pytest
import torch

from MaskSAMCore.errors import CheckpointError, MaskSAMError
from MaskSAMCore.model.sam_checkpoints import cached_path
from MaskSAMCore.training.sam_source import resolve_sam_source


def _fake_sam(path, width=768):
    """Just enough of a SAM state dict for the type check (the patch embedding's width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 2, 2)}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_is_read_checked_and_hashed(tmp_path):
    digest = _fake_sam(tmp_path / "my_sam.pth")
    source = resolve_sam_source("vit_b", str(tmp_path / "my_sam.pth"), random_init=False)
    assert (source.model_type, source.sha256, source.random_init) == ("vit_b", digest, False)
    assert "image_encoder.patch_embed.proj.weight" in source.state


def test_a_model_type_is_found_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    with pytest.raises(CheckpointError, match="download-sam vit_b"):
        resolve_sam_source("vit_b", "vit_b", random_init=False)
    digest = _fake_sam(cached_path("vit_b"))
    assert resolve_sam_source("vit_b", "vit_b", random_init=False).sha256 == digest
    assert resolve_sam_source("vit_b", None, random_init=False).sha256 == digest   # the preset's type


def test_wrong_type_random_init_and_tiny(tmp_path):
    _fake_sam(tmp_path / "large.pth", width=1024)
    with pytest.raises(CheckpointError, match="SAM vit_l checkpoint, but this model needs SAM vit_b"):
        resolve_sam_source("vit_b", str(tmp_path / "large.pth"), random_init=False)
    random = resolve_sam_source("vit_h", None, random_init=True)
    assert (random.model_type, random.sha256, random.random_init, random.state) == ("vit_h", None, True, None)
    assert resolve_sam_source("tiny", None, random_init=False).random_init
    with pytest.raises(MaskSAMError, match="tiny preset"):
        resolve_sam_source("tiny", str(tmp_path / "large.pth"), random_init=False)
