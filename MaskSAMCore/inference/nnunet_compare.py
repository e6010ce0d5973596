"""nnU-Net v2's own sliding-window predictor on the same volume, for `masksam benchmark --compare-nnunet`.

The reference is what nnU-Net users run: `nnUNetPredictor` (step 0.5, Gaussian, mirroring over
the three axes one flip after another, fp16 accumulation on the GPU) with the standard
"3d_fullres" network - `PlainConvUNet`, 6 stages, 32 -> 320 features, 3x3x3 convolutions,
instance norm, leaky ReLU - with patch 128^3 and random weights (speed does not depend on them).
Only the network stage (`predict_sliding_window_return_logits` on the preprocessed volume) is
timed, the counterpart of MaskSAM's "network" seconds.

nnU-Net is not a dependency of MaskSAM: this runs only when ``nnunetv2`` is importable.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from contextlib import nullcontext
from typing import Any, Dict, Optional

import numpy as np
import torch

from MaskSAMCore.inference.flops import count_flops

PATCH = (128, 128, 128)
FEATURES = (32, 64, 128, 256, 320, 320)


# What the comparison imports: an installation missing one of nnU-Net's own dependencies is found
# before any timing, not after MaskSAM's part of the benchmark has run.
_NNUNET_MODULES = ("dynamic_network_architectures.architectures.unet",
                   "nnunetv2.inference.predict_from_raw_data",
                   "nnunetv2.utilities.plans_handling.plans_handler")


def nnunet_available() -> bool:
    """Whether nnU-Net v2 is installed (importable or not: see `nnunet_problem`)."""
    return importlib.util.find_spec("nnunetv2") is not None and \
        importlib.util.find_spec("dynamic_network_architectures") is not None


def nnunet_problem() -> Optional[str]:
    """Why the comparison cannot run in this Python, or None when it can."""
    if not nnunet_available():
        return "needs nnU-Net v2 in this Python (pip install nnunetv2)"
    for module in _NNUNET_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:   # an installation broken in any way, not only a missing module
            return f"nnU-Net v2 is installed but {module} cannot be imported ({type(exc).__name__}: {exc})"
    return None


def build_network(in_channels: int, num_classes: int) -> torch.nn.Module:
    """nnU-Net's default 3d_fullres PlainConvUNet for a 128^3 patch."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(
        input_channels=in_channels, n_stages=len(FEATURES), features_per_stage=list(FEATURES),
        conv_op=torch.nn.Conv3d, kernel_sizes=[[3, 3, 3]] * len(FEATURES),
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (len(FEATURES) - 1), n_conv_per_stage=[2] * len(FEATURES),
        num_classes=num_classes, n_conv_per_stage_decoder=[2] * (len(FEATURES) - 1), conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def _predictor(network: torch.nn.Module, num_classes: int, device: torch.device, mirror: bool, step: float):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = {
        "dataset_name": "Dataset999_Benchmark", "plans_name": "nnUNetPlans",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {"patch_size": list(PATCH), "spacing": [1.0, 1.0, 1.0],
                                          "architecture": {"network_class_name": "PlainConvUNet",
                                                           "arch_kwargs": {}, "_kw_requires_import": []}}},
    }
    dataset_json = {"labels": {"background": 0, **{f"class_{k}": k for k in range(1, num_classes)}},
                    "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}
    plans_manager = PlansManager(plans)
    predictor = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration("3d_fullres"),
                                    None, dataset_json, "nnUNetTrainer", (0, 1, 2))
    return predictor


def run_nnunet(volume: np.ndarray, num_classes: int, device: torch.device, mirror: bool = True,
               step: float = 0.5) -> Dict[str, Any]:
    """Time nnU-Net's sliding window on volume (C, Z, Y, X) float32; returns a JSON-able dict."""
    network = build_network(volume.shape[0], num_classes).to(device).eval()
    predictor = _predictor(network, num_classes, device, mirror, step)
    data = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    slicers = predictor._internal_get_sliding_window_slicers(tuple(max(s, p) for s, p in zip(data.shape[1:], PATCH)))
    flips = 8 if mirror else 1
    with torch.inference_mode(), (torch.autocast(device.type) if device.type == "cuda" else nullcontext()):
        flops_per_forward = count_flops(network, torch.zeros((1, volume.shape[0], *PATCH), device=device))
    # Warm-up on one patch (cuDNN autotuning), as for MaskSAM.
    predictor.predict_sliding_window_return_logits(torch.zeros((volume.shape[0], *PATCH)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    logits = predictor.predict_sliding_window_return_logits(data)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    total_flops = flops_per_forward * flips * len(slicers)
    del logits
    return {
        "predictor": "nnunetv2.inference.predict_from_raw_data.nnUNetPredictor",
        "network": "PlainConvUNet 6 stages 32-320, patch 128^3",
        "windows": len(slicers), "flips": flips, "network_s": round(seconds, 3),
        "windows_per_s": round(len(slicers) / seconds, 3),
        "model_tflop": round(total_flops / 1e12, 3),
        "tflops_per_s": round(total_flops / seconds / 1e12, 2),
        "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
                                if device.type == "cuda" else None),
    }
