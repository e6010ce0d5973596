"""Training speed and memory of MaskSAM at the real patch size, on random data.

    python benchmarks/bench_training.py                      # vit_b, 8x512x512, batch 2, 20 steps
    python benchmarks/bench_training.py --preset vit_h --iterations 10 --batch-size 1

Builds the network with random weights (no SAM checkpoint, no dataset needed), then times full
training steps exactly as `masksam train` runs them (`Trainer.train_step`: forward, Hungarian
matching, loss, backward, gradient clipping, optimiser step) with mixed precision on CUDA.
Labels are random blobs with several classes per slice so matching and losses do real work.
Prints one JSON object: iterations/s, seconds per iteration, peak GPU memory
(``torch.cuda.max_memory_allocated``), device name and the settings used.

Needs only torch, numpy, scipy and segment-anything (run from the repository root, or with
MaskSAMCore installed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaskSAMCore.model.builder import build_masksam  # noqa: E402
from MaskSAMCore.model.config import preset  # noqa: E402
from MaskSAMCore.training.settings import TrainSettings  # noqa: E402
from MaskSAMCore.training.trainer import Trainer  # noqa: E402


def random_batch(batch: int, channels: int, slices: int, height: int, width: int, classes: int,
                 device: torch.device) -> "tuple[torch.Tensor, torch.Tensor]":
    """Random image (B, C, T, H, W) and blob labels (B, T, H, W) with up to `classes` labels."""
    image = torch.randn(batch, channels, slices, height, width, device=device)
    coarse = torch.randint(0, classes, (batch, 1, slices, 8, 8), device=device).float()
    labels = F.interpolate(coarse, size=(slices, height, width), mode="nearest")[:, 0].long()
    return image, labels


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="vit_b", choices=("tiny", "vit_b", "vit_l", "vit_h"))
    parser.add_argument("--classes", type=int, default=16, help="classes incl. background")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    parser.add_argument("--no-amp", action="store_true", help="float32 even on CUDA")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)

    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    torch.manual_seed(0)
    config = preset(args.preset, num_classes=args.classes)
    model = build_masksam(config)
    settings = TrainSettings(batch_size=args.batch_size, optimizer=args.optimizer,
                             lr=1e-2 if args.optimizer == "sgd" else 1e-3, amp=not args.no_amp)
    names = ["background"] + [f"class{k}" for k in range(1, args.classes)]
    trainer = Trainer(model, settings, batches=lambda epoch: iter(()), validator=None,
                      model_dir=".", class_names=names, device=device)
    height, width = config.image_hw
    batches = [random_batch(args.batch_size, config.in_channels, config.num_slices, height, width,
                            args.classes, device) for _ in range(2)]

    for step in range(args.warmup):
        trainer.train_step(*batches[step % 2])
    if use_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    losses = [trainer.train_step(*batches[step % 2]) for step in range(args.iterations)]
    if use_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started

    result = {
        "benchmark": "training",
        "preset": args.preset,
        "patch": [config.num_slices, height, width],
        "batch_size": args.batch_size,
        "classes": args.classes,
        "queries": config.num_queries,
        "optimizer": args.optimizer,
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "float32",
        "iterations": args.iterations,
        "iterations_per_s": round(args.iterations / elapsed, 4),
        "seconds_per_iteration": round(elapsed / args.iterations, 4),
        "skipped_steps": sum(loss is None for loss in losses),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if use_cuda else None,
        "device": torch.cuda.get_device_name(device) if use_cuda else "cpu",
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
