"""Time the stages of MaskSAM's decoder side (SAM's prompt encoder, mask decoder, mask head).

    python benchmarks/decoder_stages.py --device cpu --patches 1
    python benchmarks/decoder_stages.py --device cuda --patches 8 --bf16 [--compile]

The decoder runs once per (slice, query): B*T*N rows of h*w image tokens, the largest
activations of the network. Inputs are random tensors of the shapes the encoder and the prompt
generator produce, so this isolates the decoder from the encoder. Prints one JSON line per stage:
milliseconds per call and the FLOPs counted by PyTorch's FlopCounterMode.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch

from MaskSAMCore.inference.flops import flop_counter
from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.sam_fast_paths import embed_masks


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(name: str, fn: Callable[[], object], device: torch.device, repeats: int) -> None:
    with flop_counter() as counter:   # attention counted on a CPU too
        fn()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _synchronize(device)
    ms = (time.perf_counter() - start) / repeats * 1e3
    tflop = counter.get_total_flops() / 1e12
    print(json.dumps({"stage": name, "ms": round(ms, 2), "tflop": round(tflop, 4),
                      "tflop_per_s": round(tflop / ms * 1e3, 2)}), flush=True)


def stage_arguments(description: str, repeats: int) -> argparse.ArgumentParser:
    """The options every stage benchmark here shares: network, batch, device, precision, repeats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default="vit_b")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--patches", type=int, default=1, help="patches per call (8 = 2 windows x 4 flips)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16, as under the predictor's autocast on CUDA")
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser


def main() -> None:
    parser = stage_arguments(__doc__.splitlines()[0], repeats=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder blocks")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_masksam(preset(args.preset, num_classes=args.classes)).to(device).eval()
    if args.compile:
        model.compile_blocks()
    config = model.config
    b, t, n = args.patches, config.num_slices, config.num_queries
    c = config.backbone.prompt_embed_dim
    h, w = config.embedding_hw
    rows = b * t * n
    neck = torch.randn(b * t, c, h, w, device=device)
    image_pe = torch.randn(t, c, h, w, device=device)
    boxes = torch.rand(rows, 4, device=device) * config.image_hw[0]
    mask_prompts = torch.randn(rows, 1, *config.low_res_mask_hw, device=device)
    class_tokens = torch.randn(rows, c, device=device)
    low_res = torch.randn(b, n, t, *config.low_res_mask_hw, device=device)
    aux_low = torch.randn(b, t, n, *config.low_res_mask_hw, device=device)
    print(json.dumps({"device": str(device), "preset": args.preset, "rows": rows, "bf16": args.bf16,
                      "compile": args.compile, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}), flush=True)

    decoder = model.mask_decoder
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.no_grad(), autocast:
        sparse = model.prompt_encoder._embed_boxes(boxes)
        dense = embed_masks(model.prompt_encoder, mask_prompts)
        timed("prompt_encoder", lambda: embed_masks(model.prompt_encoder, mask_prompts), device, args.repeats)
        timed("mask_decoder", lambda: decoder(neck, image_pe, sparse, dense, class_tokens),
              device, args.repeats)
        timed("mask_head", lambda: model.mask_head(low_res, aux_low, config.image_hw), device, args.repeats)


if __name__ == "__main__":
    main()
