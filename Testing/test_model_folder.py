"""Model folders: model.json validation, rebuilding the trained network, clear errors."""

import json
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MaskSAMCore.errors import CheckpointError, ModelFolderError, describe_path
from MaskSAMCore.inference.random_model import synthetic_plan
from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.sam_checkpoints import REGISTRY
from MaskSAMCore.model_folder import ModelFolder, save_checkpoint, write_model_json
from slicer_support import subprocess_environment

LABELS = {"background": 0, "liver": 1, "spleen": 2}


def _write_folder(path, config, weights, scope="all", sam=None):
    path.mkdir(parents=True, exist_ok=True)
    write_model_json(path, {
        "name": "Test model", "version": "2", "labels": LABELS, "channel_names": {"0": "CT"},
        "modality": "CT", "network": config.to_dict(), "plan": synthetic_plan(config),
        "sam": sam or {"model_type": None, "sha256": None, "random_init": True},
    })
    save_checkpoint(path / "checkpoint_final.pt", {"weights": weights, "weights_scope": scope})
    return path


def test_rebuilds_the_trained_network(tmp_path):
    torch.manual_seed(1)
    config = preset("tiny", num_classes=3)
    trained = build_masksam(config).eval()
    folder = ModelFolder.load(_write_folder(tmp_path / "m", config, trained.state_dict()))
    assert folder.class_names == ["background", "liver", "spleen"]
    assert (folder.name, folder.version, folder.modality) == ("Test model", "2", "CT")
    assert folder.config == config and folder.random_init
    rebuilt = folder.build_model()
    x = torch.randn(1, 1, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.segment(x), trained.segment(x))


def test_trainable_only_checkpoint_needs_its_sam_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    config = preset("tiny", num_classes=3)
    model = build_masksam(config)
    path = _write_folder(tmp_path / "m", config, model.trainable_state_dict(), scope="trainable",
                         sam={"model_type": "vit_b", "sha256": REGISTRY["vit_b"].sha256, "random_init": False})
    with pytest.raises(ModelFolderError, match="needs the SAM vit_b checkpoint .*masksam download-sam vit_b"):
        ModelFolder.load(path).build_model()


def test_a_model_trained_on_a_fine_tuned_sam_finds_that_file_where_it_was_used(tmp_path, monkeypatch):
    """A model trained with --sam-checkpoint medsam.pth (not an official download) predicts later
    without the option while the file stays where it was, unchanged; then it asks for the file, not
    for a download that would not match."""
    import hashlib
    import os

    from MaskSAMCore.model.sam_checkpoints import remembered_sha256

    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    own = tmp_path / "weights" / "medsam.pth"
    own.parent.mkdir()
    own.write_bytes(b"fine-tuned SAM")
    config = preset("tiny", num_classes=3)
    path = _write_folder(tmp_path / "m", config, build_masksam(config).trainable_state_dict(), scope="trainable",
                         sam={"model_type": "vit_b", "sha256": hashlib.sha256(b"fine-tuned SAM").hexdigest(),
                              "random_init": False})
    folder = ModelFolder.load(path)
    with pytest.raises(ModelFolderError, match="of its own .*pass it with --sam-checkpoint"):
        folder.resolve_sam_checkpoint()
    remembered_sha256(own)                       # what training (or one --sam-checkpoint run) leaves
    assert folder.resolve_sam_checkpoint() == own.resolve()
    info = own.stat()
    os.utime(own, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))   # changed since: not trusted unhashed
    with pytest.raises(ModelFolderError, match="of its own"):
        folder.resolve_sam_checkpoint()


def test_checkpoint_for_another_class_count_is_one_clear_line(tmp_path):
    config = preset("tiny", num_classes=3)
    other = build_masksam(preset("tiny", num_classes=5, num_queries=config.num_queries))
    path = _write_folder(tmp_path / "m", config, other.state_dict())
    with pytest.raises(CheckpointError, match="does not fit this model folder's network \\(3 classes") as info:
        ModelFolder.load(path).build_model()
    assert "\n" not in str(info.value)
    assert "size mismatch for class_head" in str(info.value)  # names the first concrete problem


@pytest.mark.parametrize("breakage,message", [
    ("missing", "does not exist"),
    ("no_json", "not a MaskSAM model folder"),
    ("bad_json", "not valid JSON"),
    ("not_masksam", "does not describe a MaskSAM model"),
    ("label_count", "the network has 3 classes but 2 labels"),
    ("no_checkpoint", "has no checkpoint_best.pt"),
    ("old_network", "trained with an older MaskSAM network \\(format 1"),
    # hand-edited or damaged fields: one line naming the field, never a traceback
    ({"format_version": "abc"}, "model.json: format_version must be a whole number"),
    ({"network_format": [2]}, "model.json: network_format must be a whole number"),
    ({"labels": ["background", "liver"]}, "model.json: labels must be a mapping"),
    ({"labels": {"background": 0, "liver": "x", "spleen": 2}}, "labels must map names to the whole numbers 0, 1, 2"),
    # the class index is the label value: a gap would name class 2 'spleen' and write it as 2
    ({"labels": {"background": 0, "liver": 1, "spleen": 3}}, r"labels must map names to the whole numbers "
                                                             r"0, 1, 2, \.\.\. without gaps"),
    ({"plan": None}, "model.json: lacks plan|the plan is not a mapping"),
    ({"plan": {}}, "model.json: plan.transpose_forward must be an order of the axes"),
    ({"plan": dict(synthetic_plan(preset("tiny", num_classes=3)), reorient_to_lps="no")},
     "model.json: plan.reorient_to_lps must be true or false"),     # "no" would be taken as true
])
def test_broken_model_folders(tmp_path, breakage, message):
    config = preset("tiny", num_classes=3)
    path = _write_folder(tmp_path / "m", config, {"x": torch.zeros(1)})
    meta = json.loads((path / "model.json").read_text())
    if breakage == "missing":
        path = tmp_path / "nowhere"
    elif breakage == "no_json":
        (path / "model.json").unlink()
    elif breakage == "bad_json":
        (path / "model.json").write_text("{not json")
    elif breakage == "not_masksam":
        (path / "model.json").write_text(json.dumps({"labels": {}}))
    elif breakage == "old_network":
        meta["network_format"] = 1
        (path / "model.json").write_text(json.dumps(meta))
    elif isinstance(breakage, dict):
        meta.update(breakage)
        (path / "model.json").write_text(json.dumps(meta))
    elif breakage == "label_count":
        meta["labels"] = {"background": 0, "liver": 1}
        (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFolderError, match=message):
        ModelFolder.load(path).checkpoint_path("best" if breakage == "no_checkpoint" else "final")


def test_a_file_given_as_the_model_folder_is_named_as_a_file(tmp_path):
    model_file = tmp_path / "checkpoint_final.pt"
    model_file.write_bytes(b"weights")
    with pytest.raises(ModelFolderError, match="checkpoint_final.pt is a file; give the model folder"):
        ModelFolder.load(model_file)


def test_a_checkpoint_save_that_dies_half_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Training killed while writing checkpoint_latest.pt: --resume must still find the previous one."""
    from MaskSAMCore.model_folder import load_checkpoint

    path = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(path, {"weights": {"w": torch.ones(3)}, "epoch": 4})

    def dies_half_way(payload, file):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"weights": {"w": torch.zeros(3)}, "epoch": 5})
    monkeypatch.undo()
    payload = load_checkpoint(path)
    assert payload["epoch"] == 4 and torch.equal(payload["weights"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pt"]


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """torch.save on a full disk raises "RuntimeError: ... unexpected pos ...", NumPy an OSError
    without a reason: both become one line naming the file, and no partial file stays."""
    import errno
    import shutil
    from collections import namedtuple

    from MaskSAMCore.atomic import write_with
    from MaskSAMCore.cli import main

    path = tmp_path / "checkpoint_latest.pt"
    usage = namedtuple("usage", "total used free")

    def fills_the_disk(payload, file):
        file.write(b"PK\x03\x04 part")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4030")

    monkeypatch.setattr(torch, "save", fills_the_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10 << 20, (10 << 20) - 100, 100))
    with pytest.raises(OSError) as raised:
        save_checkpoint(path, {"weights": {"w": torch.zeros(3)}, "epoch": 5})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []

    def short_write(tmp):
        raise OSError("19200 requested and 5088 written")

    monkeypatch.setattr("MaskSAMCore.cli.resolve_handler",
                        lambda command: lambda args: write_with(tmp_path / "case.npy", short_write))
    assert main(["info"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.endswith("case.npy: no space left on the device to write it; free some space and run again")
    assert error.startswith("masksam: error: ") and "\n" not in error

    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos"):   # plenty of space: not called a full disk
        save_checkpoint(path, {"weights": {"w": torch.zeros(3)}, "epoch": 5})


def test_a_model_whose_training_has_not_finished_says_what_to_do(tmp_path):
    config = preset("tiny", num_classes=3)
    folder = _write_folder(tmp_path / "m", config, build_masksam(config).state_dict())
    (folder / "checkpoint_final.pt").rename(folder / "checkpoint_best.pt")
    with pytest.raises(ModelFolderError, match=r"no checkpoint_final.pt \(present: best: its training has not "
                                               r"finished; finish it with masksam train \.\.\. --resume, or "
                                               r"predict with --checkpoint best\)"):
        ModelFolder.load(folder).checkpoint_path("final")


class _TouchesMarker:
    """Unpickling this creates a file: what a malicious pickle saved as a checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_plain_pickle_checkpoint_is_one_line_and_is_never_unpickled(tmp_path):
    """`pickle.dump` of protocol 4 (not what torch.save writes): torch warns on stderr before it
    refuses it; the command line says only what the file is, in one line."""
    config = preset("tiny", num_classes=3)
    folder = _write_folder(tmp_path / "m", config, build_masksam(config).state_dict())
    marker = tmp_path / "code_ran"
    with open(folder / "checkpoint_final.pt", "wb") as file:
        pickle.dump({"weights": _TouchesMarker(marker)}, file, protocol=4)
    image = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 16, 16), np.float32)), str(image))
    result = subprocess.run([sys.executable, "-m", "MaskSAMCore", "predict", str(folder), str(image),
                             str(tmp_path / "out.nii.gz"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=120, env=subprocess_environment())
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"masksam: error: {describe_path(folder / 'checkpoint_final.pt')} is a plain Python pickle (protocol 4), "
        "not a weights-only PyTorch checkpoint; refused without unpickling it (unpickling can run code; only "
        "plain tensor checkpoints are accepted)"]
    assert not marker.exists() and not (tmp_path / "out.nii.gz").exists()
