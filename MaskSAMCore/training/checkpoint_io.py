"""What the trainer puts in its checkpoints, and how a run is restored from one.

Files are written and read through `MaskSAMCore.model_folder` (atomic `torch.save` of plain
containers, `torch.load(weights_only=True)`). Every checkpoint carries the network weights in the
format the predictor reads; ``checkpoint_latest.pt`` additionally carries everything `--resume`
needs to continue exactly: optimiser and GradScaler state, every RNG, the log history, the EMA
pseudo-Dice and the settings the run was started with.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from MaskSAMCore.errors import CheckpointError, describe_path
from MaskSAMCore.model.weights_only import load_weights_only
from MaskSAMCore.model_folder import CHECKPOINT_FILES, load_checkpoint, save_checkpoint

RESUME_KEYS = ("epoch", "optimizer", "rng", "history", "ema_dice", "best_ema_dice", "settings")


def checkpoint_file(model_dir: "os.PathLike[str] | str", which: str) -> str:
    """Where checkpoint `which` ("latest", "best", "final") of `model_dir` is written or read,
    whether or not it exists (`ModelFolder.checkpoint_path` is the checked one, for a trained model)."""
    return os.path.join(os.fspath(model_dir), CHECKPOINT_FILES[which])


def network_weights(model: nn.Module, scope: str) -> Dict[str, torch.Tensor]:
    """The weights to store: ``"all"`` (random-init runs: the random frozen backbone must travel
    with the model) or ``"trainable"`` (SAM's weights come from the official checkpoint)."""
    if scope == "all":
        state = model.state_dict()
    elif scope == "trainable":
        state = model.trainable_state_dict()
    else:
        raise ValueError(f"unknown weights scope {scope!r}")
    return {name: tensor.detach().cpu().clone() for name, tensor in state.items()}


def weights_payload(model: nn.Module, scope: str, epoch: int, extra: Optional[Dict[str, Any]] = None
                    ) -> Dict[str, Any]:
    """A checkpoint with the network only (best / final)."""
    payload: Dict[str, Any] = {"weights": network_weights(model, scope), "weights_scope": scope,
                               "epoch": epoch}
    payload.update(extra or {})
    return payload


def resume_payload(model: nn.Module, scope: str, epoch: int, optimizer: torch.optim.Optimizer,
                   scaler: Optional["torch.amp.GradScaler"], history: list, ema_dice: Optional[float],
                   best_ema_dice: Optional[float], best_epoch: Optional[int],
                   settings: Dict[str, Any], rng_states: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A checkpoint from which training continues exactly after `epoch` finished epochs.

    `rng_states` holds `rng_state.capture_rng_state()` of every rank, in rank order; their number
    is stored as "world_size" (a resume with another number of processes changes the batch).
    """
    payload = weights_payload(model, scope, epoch)
    payload.update(
        optimizer=optimizer.state_dict(),
        grad_scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        rng=rng_states,
        history=history,
        ema_dice=ema_dice,
        best_ema_dice=best_ema_dice,
        best_epoch=best_epoch,
        settings=settings,
        world_size=len(rng_states),
    )
    return payload


def write(model_dir: "os.PathLike[str] | str", which: str, payload: Dict[str, Any]) -> None:
    """`save_checkpoint` for the trainer. A write the system refused (a full disk, a quota, a
    file-size limit, an I/O error) is an `OSError` that names the file, its cause and what is
    left to continue from: checkpoints are replaced atomically, so the previous checkpoint_latest
    still holds the last epoch it saved."""
    path = checkpoint_file(model_dir, which)
    try:
        save_checkpoint(path, payload)
    except OSError as exc:
        cause = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
        raise OSError(exc.errno, f"{cause}; {_what_is_left(model_dir)}", path) from None


def _what_is_left(model_dir: "os.PathLike[str] | str") -> str:
    """After a failed checkpoint write: where the training can go on from once there is room."""
    room = "make room (free space, or raise the disk quota or file-size limit)"
    if os.path.isfile(checkpoint_file(model_dir, "latest")):
        return f"the previous {CHECKPOINT_FILES['latest']} is intact: {room} and continue with --resume"
    return f"no epoch was saved yet: {room} and start the training again"


def peek(model_dir: "os.PathLike[str] | str", which: str) -> Optional[Dict[str, Any]]:
    """A checkpoint's content, memory-mapped: reading its small entries ("epoch", "settings")
    does not read the weights. None when it is missing or unreadable."""
    try:
        path = checkpoint_file(model_dir, which)
        payload = load_weights_only(path, describe_path(path), mmap=True)
    except Exception:   # (missing, cut short, not a checkpoint: the caller rewrites or ignores it)
        return None
    return payload if isinstance(payload, dict) else None


def stored_epoch(model_dir: "os.PathLike[str] | str", which: str) -> Optional[int]:
    """The epoch a checkpoint was written after; None when it is missing or unreadable."""
    payload = peek(model_dir, which)
    try:
        return int(payload["epoch"]) if payload is not None else None
    except (KeyError, TypeError, ValueError):
        return None


def read_for_resume(model_dir: "os.PathLike[str] | str") -> Dict[str, Any]:
    """checkpoint_latest's content; CheckpointError (one line) when absent or not resumable."""
    path = checkpoint_file(model_dir, "latest")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{describe_path(model_dir)}: nothing to resume, checkpoint_latest.pt does not exist "
            "(start a new training without --resume)")
    payload = load_checkpoint(path)
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{describe_path(path)}: not a resumable training checkpoint "
                              f"(it lacks {', '.join(missing)})")
    return payload


def load_network_weights(model: nn.Module, payload: Dict[str, Any]) -> None:
    """Put a checkpoint's weights into `model` (either scope)."""
    weights = payload["weights"]
    if payload.get("weights_scope") == "all":
        model.load_state_dict(weights)
    else:
        model.load_trainable_state_dict(weights)
