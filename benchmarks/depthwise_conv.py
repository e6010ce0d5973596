"""Time the three implementations of the DConvAdapter's depthwise 3x3x3 convolution.

    python benchmarks/depthwise_conv.py --device cuda --patches 8 --bf16
    python benchmarks/depthwise_conv.py --device cpu --patches 1

`MaskSAMCore.model.depthwise_conv.depthwise_conv3d` picks one implementation per device; this
script checks that pick. It runs each implementation on the two shapes a `vit_b` network feeds
its DConvAdapters: the image encoder's ``(B, T, 32, 32, 192)`` and the mask decoder's
``(B*N, T, 32, 32, 64)``. For each, it prints the largest difference from `F.conv3d` and the
timing line of `decoder_stages.timed` (milliseconds per call, FLOPs).
"""

from __future__ import annotations

import json

import torch

from decoder_stages import stage_arguments, timed
from MaskSAMCore.model.adapters import bottleneck_width
from MaskSAMCore.model.config import preset
from MaskSAMCore.model.depthwise_conv import (
    depthwise_conv3d_by_slices,
    depthwise_conv3d_direct,
    depthwise_conv3d_shifted,
)

IMPLEMENTATIONS = {
    "direct": depthwise_conv3d_direct,
    "by_slices": depthwise_conv3d_by_slices,
    "shifted": depthwise_conv3d_shifted,
}


def adapter_shapes(preset_name: str, classes: int, patches: int) -> dict:
    """The ``(G, T, h, w, C)`` inputs of the encoder's and the decoder's depthwise convolutions."""
    config = preset(preset_name, num_classes=classes)
    t, (h, w) = config.num_slices, config.embedding_hw
    ratio = config.adapter_ratio
    return {
        "encoder": (patches, t, h, w, bottleneck_width(config.backbone.encoder_embed_dim, ratio)),
        "decoder": (patches * config.num_queries, t, h, w, bottleneck_width(config.backbone.prompt_embed_dim, ratio)),
    }


def main() -> None:
    args = stage_arguments(__doc__.splitlines()[0], repeats=10).parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    torch.manual_seed(0)
    print(json.dumps({"device": str(device), "dtype": str(dtype), "torch": torch.__version__}), flush=True)
    with torch.no_grad():
        for where, shape in adapter_shapes(args.preset, args.classes, args.patches).items():
            x = torch.randn(shape, device=device, dtype=dtype)
            weight = torch.randn(shape[-1], 1, 3, 3, 3, device=device) * 0.1
            bias = torch.randn(shape[-1], device=device)
            reference = depthwise_conv3d_direct(x.float(), weight, bias)
            for name, implementation in IMPLEMENTATIONS.items():
                error = (implementation(x, weight, bias).float() - reference).abs().max().item()
                print(json.dumps({"shape": list(shape), "implementation": name, "max_abs_error": error}))
                timed(f"{where}_{name}", lambda: implementation(x, weight, bias), device, args.repeats)


if __name__ == "__main__":
    main()
