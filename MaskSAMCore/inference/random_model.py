"""Random-weight models for benchmarks, tests and demos: no training and no SAM download needed.

`synthetic_plan` writes the preprocessing plan a real dataset would get, for a chosen target
spacing and one CT-like channel per modality; `write_random_model_folder` turns a network
configuration into a complete, loadable model folder (``weights_scope: all``), so the whole
predictor path - model folder loading included - runs exactly as for a trained model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from MaskSAMCore.model.config import MaskSAMConfig


def synthetic_plan(config: MaskSAMConfig, target_spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                   channel_names: Optional[Dict[str, str]] = None, ct_window: Sequence[float] = (-1000.0, 1000.0),
                   crop_to_nonzero: bool = True) -> Dict[str, object]:
    """A plan in `plan_experiment`'s format: slice axis z, CT normalisation for channels named
    "CT" (clip to `ct_window`, mean 0, std 250 HU), per-image z-score for the others."""
    names = channel_names or {str(c): "CT" for c in range(config.in_channels)}
    target = [float(s) for s in target_spacing_zyx]
    spacing_ratio = max(target) / min(target)
    anisotropic = spacing_ratio > 3.0
    normalization = []
    for index in range(config.in_channels):
        name = names.get(str(index), f"channel_{index}")
        if name.strip().lower() == "ct":
            normalization.append({"channel": name, "scheme": "ct", "clip_low": float(ct_window[0]),
                                  "clip_high": float(ct_window[1]), "mean": 0.0, "std": 250.0, "median": 0.0,
                                  "statistics_from": "synthetic"})
        else:
            normalization.append({"channel": name, "scheme": "zscore", "use_nonzero_mask": False})
    height, width = config.image_hw
    return {
        "format": "masksam-plan", "format_version": 1, "dataset_name": "synthetic",
        "num_classes": config.num_classes, "channel_names": names,
        "target_spacing": target, "target_spacing_zyx": target,
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "anisotropic": anisotropic, "crop_to_nonzero": crop_to_nonzero, "reorient_to_lps": True,
        "patch_size": [int(config.num_slices), int(height), int(width)],
        "image_resampling": {"order": 3, "order_z": 1, "separate_z": anisotropic},
        "label_resampling": {"method": "one_hot_linear", "order": 1, "order_z": 0 if anisotropic else 1,
                             "separate_z": anisotropic},
        "normalization": normalization,
    }


def default_labels(num_classes: int) -> Dict[str, int]:
    return {"background": 0, **{f"structure_{k}": k for k in range(1, num_classes)}}


def write_random_model_folder(model_dir: "os.PathLike[str] | str", config: MaskSAMConfig,
                              plan: Dict[str, object], labels: Optional[Dict[str, int]] = None,
                              channel_names: Optional[Dict[str, str]] = None, seed: int = 0,
                              name: str = "random weights") -> Path:
    """A loadable model folder whose network has random weights (SAM's included)."""
    from MaskSAMCore.folder_layout import FINAL_CHECKPOINT
    from MaskSAMCore.model.builder import build_masksam
    from MaskSAMCore.model_folder import save_checkpoint, write_model_json

    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_masksam(config)
    save_checkpoint(folder / FINAL_CHECKPOINT, {"weights": model.state_dict(), "weights_scope": "all"})
    write_model_json(folder, {
        "name": name, "version": "0", "description": "untrained network with random weights",
        "labels": labels or default_labels(config.num_classes),
        "channel_names": channel_names or plan.get("channel_names") or {"0": "CT"},
        "modality": "CT", "network": config.to_dict(), "plan": plan,
        "sam": {"model_type": config.backbone.sam_type, "sha256": None, "random_init": True},
        "training": {"epochs": 0, "finished_epochs": 0},
    })
    return folder
