"""A hand-edited or damaged model.json: `masksam predict` refuses it before any work in one line
naming the file and the field (exit status 1, no output written), and the Slicer module's model
list refuses the folder with that same line, so the Segment tab never offers it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_support import MODULE_DIR   # (importing it puts the Slicer module's logic on sys.path)

from MaskSAMCore.cli import main
from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.config import preset
from MaskSAMSegmentLib import models as model_list

Edit = Callable[[Dict[str, Any]], None]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = preset("tiny", num_classes=3)
    return write_random_model_folder(tmp_path_factory.mktemp("models") / "tiny", config,
                                     synthetic_plan(config, (2.5, 1.2, 1.2)))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "ct.nii.gz"
    array = np.random.default_rng(0).uniform(-1000, 1000, (6, 16, 16)).astype(np.float32)   # HU
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _set(path: str, value: Any) -> Edit:
    """An edit that sets the field at `path` ("network.backbone.window_size", "plan.x.0.y")."""
    *parents, last = path.split(".")

    def edit(meta: Dict[str, Any]) -> None:
        node: Any = meta
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


# id: (edit, what the one line must name besides model.json)
BROKEN: Dict[str, tuple] = {
    "fractional embedding width": (_set("network.backbone.encoder_embed_dim", 48.5),
                                   "network.backbone.encoder_embed_dim must be a positive whole number"),
    "class count as text": (_set("network.num_classes", "3"), "network.num_classes must be a positive whole number"),
    "class count as true": (_set("network.num_classes", True), "network.num_classes must be a positive whole number"),
    "no heads": (_set("network.backbone.encoder_num_heads", 0), "network.backbone.encoder_num_heads"),
    "heads that do not divide the width": (_set("network.backbone.encoder_embed_dim", 49),
                                           "encoder_embed_dim (49) must be a multiple of encoder_num_heads"),
    "backbone not a mapping": (_set("network.backbone", [1, 2]), "network.backbone must be a mapping"),
    "patch of text": (_set("plan.patch_size", ["4", "x", 64]), "plan.patch_size must be three positive whole"),
    "NaN CT mean": (_set("plan.normalization.0.mean", float("nan")),
                    "plan.normalization[0].mean must be a finite number, not NaN"),
    "infinite spacing": (_set("plan.target_spacing.0", float("inf")),
                         "plan.target_spacing[0] must be a finite number, not Infinity"),
    "axis order of floats": (_set("plan.transpose_forward", [0, 1, 2.0]), "plan.transpose_forward must be an order"),
    "resampling order as text": (_set("plan.image_resampling.order", "cubic"), "plan.image_resampling must give"),
    "no CT mean": (lambda meta: meta["plan"]["normalization"][0].pop("mean"),
                   "plan.normalization[0].mean must be a number"),
    "unknown scheme": (_set("plan.normalization.0.scheme", "bogus"),
                       'plan.normalization[0].scheme must be "ct" or "zscore", not "bogus"'),
    "clip bound as text": (_set("plan.normalization.0.clip_low", "low"), "plan.normalization[0].clip_low must be"),
    "zero CT std": (_set("plan.normalization.0.std", 0), "plan.normalization[0].std must be positive, not 0"),
    "clip bounds crossed": (_set("plan.normalization.0.clip_low", 2000.0), "clip_low (2000.0) must be below"),
    "z-score mask as text": (lambda meta: meta["plan"]["normalization"][0].update(scheme="zscore",
                                                                                 use_nonzero_mask="yes"),
                             "plan.normalization[0].use_nonzero_mask must be true or false"),
    "plan patch not the network's": (_set("plan.patch_size", [8, 64, 64]),
                                     "the plan's patch_size [8, 64, 64] differs from the network's"),
    "plan patch of two sides": (_set("plan.patch_size", [64, 64]), "plan.patch_size must be three positive whole"),
}


def _broken_copy(model_dir: Path, root: Path, edit: Edit) -> Path:
    folder = root / "models" / "broken"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "model.json").read_text())
    edit(meta)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("edit, field", BROKEN.values(), ids=list(BROKEN))
def test_a_broken_model_json_is_refused_in_one_line_by_predict_and_the_model_list(model_dir, image, tmp_path,
                                                                                  capsys, edit, field):
    folder = _broken_copy(model_dir, tmp_path, edit)
    output = tmp_path / "out" / "labels.nii.gz"
    assert main(["predict", str(folder), str(image), str(output), "--fast", "--device", "cpu"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("masksam: error: "), lines
    assert str(folder / "model.json") in lines[0] and field in lines[0], lines[0]
    assert not output.exists() and not (tmp_path / "out").exists()
    assert Path(model_list.__file__).is_relative_to(MODULE_DIR)   # this checkout's list, not an installed one
    models, problems = model_list.find_models(folder.parent)
    assert models == [] and problems == [lines[0][len("masksam: error: "):]]


def test_a_network_torch_cannot_build_is_still_blamed_on_model_json(model_dir, image, tmp_path, capsys,
                                                                    monkeypatch):
    """Should the check of model.json let through a network torch refuses to build, predict
    still names the file in one line instead of a traceback from inside a layer."""
    import MaskSAMCore.model.config as config_module
    import MaskSAMCore.model_json as model_json

    for module in (config_module, model_json):
        monkeypatch.setattr(module, "network_problems", lambda data: [])
    folder = _broken_copy(model_dir, tmp_path, _set("network.modality_hidden_channels", 8.5))
    output = tmp_path / "labels.nii.gz"
    assert main(["predict", str(folder), str(image), str(output), "--fast", "--device", "cpu"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"masksam: error: {folder / 'model.json'} has an invalid "
                                                   "network: "), lines
    assert not output.exists()


def test_preprocessing_refuses_an_unknown_scheme_as_a_user_error():
    """A plan not read from a model.json (so not checked) still fails as an error the command
    line reports in one line, not as a ValueError traceback from a worker thread."""
    from MaskSAMCore.data.normalization import image_statistics
    from MaskSAMCore.errors import MaskSAMError

    with pytest.raises(MaskSAMError, match="unknown normalisation scheme 'bogus'"):
        image_statistics(np.zeros((2, 2, 2), np.float32), {"scheme": "bogus"})
