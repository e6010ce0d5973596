"""Build MaskSAM, load official SAM weights into it, freeze SAM, and count parameters.

SAM's weights live under the same names as in `segment_anything`'s own `Sam` model
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), so an official checkpoint's
state dict loads directly once the position embeddings are resized: the absolute embedding
from 64x64 tokens (1024-pixel input) to h x h, the relative-position tables of the global
attention blocks from 127 to 2h-1 entries, and those of the windowed blocks to 2*window-1.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from MaskSAMCore.errors import CheckpointError
from MaskSAMCore.model.config import MaskSAMConfig
from MaskSAMCore.model.masksam import MaskSAM

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
# Parameters MaskSAM adds inside SAM's modules; everything else under SAM_PREFIXES is SAM's.
ADDED_INSIDE_SAM = ("adapter", "depth_pos_embed")


def is_sam_weight(name: str) -> bool:
    """True for a parameter/buffer that belongs to Segment Anything (and stays frozen)."""
    return name.startswith(SAM_PREFIXES) and not any(tag in name for tag in ADDED_INSIDE_SAM)


def freeze_sam(model: MaskSAM) -> None:
    """Every SAM weight frozen, every MaskSAM addition trainable."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not is_sam_weight(name))


def build_masksam(config: MaskSAMConfig,
                  sam_checkpoint: Optional[Union[str, "os.PathLike[str]", Mapping[str, torch.Tensor]]] = None
                  ) -> MaskSAM:
    """A MaskSAM network with SAM frozen.

    Args:
        config: the architecture.
        sam_checkpoint: an official SAM checkpoint (path or state dict) matching
            ``config.backbone.sam_type``; None keeps SAM's random initialisation (tests, demos).
    """
    model = MaskSAM(config)
    if sam_checkpoint is not None:
        if isinstance(sam_checkpoint, Mapping):
            state = dict(sam_checkpoint)
        else:
            from MaskSAMCore.model.sam_checkpoints import load_sam_state_dict

            state = load_sam_state_dict(sam_checkpoint, expected_type=config.backbone.sam_type)
        load_sam_weights(model, state)
    freeze_sam(model)
    return model


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """``(L, d) -> (length, d)`` by linear interpolation (what SAM does at run time)."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.float().t().unsqueeze(0), size=length, mode="linear",
                            align_corners=False)
    return resized[0].t().to(table.dtype)


def _resize_abs_pos(embedding: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(1, H0, W0, D) -> (1, h, w, D)`` by bicubic interpolation."""
    if tuple(embedding.shape[1:3]) == tuple(size):
        return embedding
    grid = embedding.float().permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=tuple(size), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(embedding.dtype)


def adapt_sam_state_dict(state: Mapping[str, torch.Tensor], model: MaskSAM) -> Dict[str, torch.Tensor]:
    """SAM weights (any input size) resized to this model's input size; non-SAM keys dropped."""
    target = model.state_dict()
    adapted: Dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not is_sam_weight(name) or name not in target:   # never a MaskSAM addition inside SAM
            continue
        if name == "image_encoder.pos_embed":
            tensor = _resize_abs_pos(tensor, model.config.embedding_hw)
        elif name.endswith((".rel_pos_h", ".rel_pos_w")):
            tensor = _resize_rel_pos(tensor, target[name].shape[0])
        adapted[name] = tensor
    return adapted


def load_sam_weights(model: MaskSAM, state: Mapping[str, torch.Tensor]) -> None:
    """Copy an official SAM state dict into `model` (resized); raises CheckpointError on mismatch."""
    adapted = adapt_sam_state_dict(state, model)
    target = model.state_dict()
    expected = {name for name in target if is_sam_weight(name)}
    missing = sorted(expected - set(adapted))
    if missing:
        raise CheckpointError(
            f"the SAM checkpoint lacks {len(missing)} weights the {model.config.backbone.sam_type} "
            f"backbone needs (e.g. {missing[0]}); is it a Segment Anything checkpoint of that type?"
        )
    for name, tensor in adapted.items():
        if tensor.shape != target[name].shape:
            raise CheckpointError(
                f"SAM weight {name} has shape {tuple(tensor.shape)}, the "
                f"{model.config.backbone.sam_type} backbone needs {tuple(target[name].shape)}"
            )
    model.load_state_dict(adapted, strict=False)


# -- parameter report --------------------------------------------------------------------------
_PARTS: Tuple[Tuple[str, str], ...] = (
    ("modality adapter", "modality_adapter."),
    ("image encoder (SAM)", "image_encoder."),
    ("prompt generator", "prompt_generator."),
    ("prompt encoder (SAM)", "prompt_encoder."),
    ("mask decoder (SAM)", "mask_decoder."),
    ("classifier tokens + head", "global_class_tokens."),
    ("classifier tokens + head", "class_head."),
    ("decoder depth embedding", "decoder_depth_pos_embed."),
    ("mask head", "mask_head."),
)


def _part_of(name: str) -> str:
    if name.startswith("image_encoder.") and "adapter" in name:
        return "encoder adapters"
    if name.startswith("image_encoder.") and "depth_pos_embed" in name:
        return "encoder depth embedding"
    if name.startswith("mask_decoder.") and "adapter" in name:
        return "decoder adapters"
    for part, prefix in _PARTS:
        if name.startswith(prefix):
            return part
    return "other"


def parameter_report(model: torch.nn.Module) -> Dict[str, Dict[str, int]]:
    """``{part: {"trainable": n, "total": n}}`` plus a ``"total"`` row; counts, not bytes."""
    report: Dict[str, Dict[str, int]] = {}
    for name, parameter in model.named_parameters():
        row = report.setdefault(_part_of(name), {"trainable": 0, "total": 0})
        row["total"] += parameter.numel()
        if parameter.requires_grad:
            row["trainable"] += parameter.numel()
    report["total"] = {
        "trainable": sum(r["trainable"] for r in report.values()),
        "total": sum(r["total"] for r in report.values()),
    }
    return report


def format_parameter_report(report: Mapping[str, Mapping[str, int]]) -> str:
    """The report as an aligned text table in millions."""
    lines = [f"{'part':<28}{'trainable':>12}{'total':>12}"]
    for part, row in report.items():
        if part == "total":
            continue
        lines.append(f"{part:<28}{row['trainable'] / 1e6:>11.3f}M{row['total'] / 1e6:>11.3f}M")
    total = report["total"]
    lines.append(f"{'total':<28}{total['trainable'] / 1e6:>11.3f}M{total['total'] / 1e6:>11.3f}M")
    return "\n".join(lines)
