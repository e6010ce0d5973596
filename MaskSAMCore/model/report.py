"""`masksam info`: build a preset and print its parameter table (the smoke test of an install)."""

from __future__ import annotations

import time

import torch

from MaskSAMCore.model.builder import build_masksam, format_parameter_report, parameter_report
from MaskSAMCore.model.config import preset


def run_info(args) -> int:
    started = time.monotonic()
    config = preset(args.preset, num_classes=args.classes, in_channels=args.channels)
    model = build_masksam(config)
    print(f"MaskSAM preset {args.preset}: {config.num_classes} classes, {config.in_channels} channel(s), "
          f"{config.num_queries} queries, patch {config.num_slices} x {config.image_hw[0]} x "
          f"{config.image_hw[1]}, SAM backbone {config.backbone.sam_type} (random weights: none loaded)")
    print(format_parameter_report(parameter_report(model)))
    if args.forward:
        x = torch.randn(1, config.in_channels, config.num_slices, *config.image_hw)
        with torch.no_grad():
            scores = model.segment(x)
        print(f"forward: input {tuple(x.shape)} -> class scores {tuple(scores.shape)}")
    print(f"built in {time.monotonic() - started:.1f} s; torch {torch.__version__}, "
          f"CUDA {'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
    return 0
