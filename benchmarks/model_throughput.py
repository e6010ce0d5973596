"""Throughput of the MaskSAM network alone on a GPU (no sliding window, no I/O).

    python benchmarks/model_throughput.py --preset vit_b --batches 8 16 --decoder-chunks 2 4
    python benchmarks/model_throughput.py --depthwise shifted   # the adapters' eager-CUDA alternative

Prints one JSON line per setting: patches/s, slices/s, model TFLOP/s (FLOPs counted with
torch.utils.flop_counter on one batch), peak GPU memory; and checks the tiny model gives the same
scores on the GPU as on the CPU (float32) and close scores in bf16.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from MaskSAMCore.inference.flops import flop_counter
from MaskSAMCore.model import adapters, depthwise_conv
from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset

DEPTHWISE_CHOICES = ("auto", "by_slices", "shifted", "direct")


def use_depthwise(choice: str) -> None:
    """Make the DConvAdapters use one implementation of `depthwise_conv` instead of the
    per-device pick, so the whole network can be timed with each (section (e))."""
    if choice != "auto":
        adapters.depthwise_conv3d = getattr(depthwise_conv, f"depthwise_conv3d_{choice}")


def check_cuda_matches_cpu() -> dict:
    torch.manual_seed(0)
    model = build_masksam(preset("tiny", num_classes=6)).eval()
    x = torch.randn(2, 1, 4, 64, 64)
    with torch.no_grad():
        cpu = model.segment(x)
        model_gpu = model.cuda()
        gpu = model_gpu.segment(x.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model_gpu.segment(x.cuda()).float().cpu()
    return {"fp32_max_abs_diff": float((cpu - gpu).abs().max()),
            "bf16_max_abs_diff": float((cpu - bf16).abs().max()),
            "argmax_agreement_bf16": float((cpu.argmax(1) == bf16.argmax(1)).float().mean())}


def time_setting(model, batch: int, chunk: int, repeats: int) -> dict:
    config = model.config
    x = torch.randn(batch, config.in_channels, config.num_slices, *config.image_hw, device="cuda")
    model.decoder_patches_per_call = chunk
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        flops = flop_counter()
        with flops:
            model.segment(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        model.segment(x)  # warm-up at this size
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model.segment(x)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
    total = flops.get_total_flops()
    return {"batch_patches": batch, "decoder_patches_per_call": chunk, "seconds_per_batch": round(seconds, 4),
            "patches_per_s": round(batch / seconds, 2), "slices_per_s": round(batch * config.num_slices / seconds, 1),
            "tflop_per_batch": round(total / 1e12, 3), "tflop_per_s": round(total / seconds / 1e12, 1),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="vit_b")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--decoder-chunks", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--depthwise", choices=DEPTHWISE_CHOICES, default="auto",
                        help="the adapters' depthwise 3D convolution (default: depthwise_conv3d's pick)")
    args = parser.parse_args()
    use_depthwise(args.depthwise)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                      "cuda_vs_cpu": check_cuda_matches_cpu()}), flush=True)
    model = build_masksam(preset(args.preset, num_classes=args.classes)).cuda().eval()
    if args.compile:
        model.image_encoder = torch.compile(model.image_encoder)
    for batch in args.batches:
        for chunk in args.decoder_chunks:
            if chunk > batch:
                continue
            try:
                row = time_setting(model, batch, chunk, args.repeats)
            except torch.cuda.OutOfMemoryError:
                row = {"batch_patches": batch, "decoder_patches_per_call": chunk, "error": "out of memory"}
                torch.cuda.empty_cache()
            row["compile"] = args.compile
            row["depthwise"] = args.depthwise
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
