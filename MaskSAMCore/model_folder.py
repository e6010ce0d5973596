"""A self-describing MaskSAM model folder: `model.json` + checkpoints (see docs/INTERNALS.md).

`ModelFolder.load` validates `model.json` (`MaskSAMCore.model_json`, which the Slicer module's
model list shares) and gives typed access to what the predictor and the
Slicer module need; `build_model` rebuilds exactly the trained network (including the number of
slices T its depth layers were built for) and loads its weights — SAM's from the official
checkpoint with the recorded SHA-256 (cache or `sam_checkpoint`), the rest from the folder.
Checkpoints are plain containers of tensors saved atomically and loaded with
``torch.load(weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from MaskSAMCore.atomic import atomic_path, write_json
from MaskSAMCore.data.regions import RegionScheme
from MaskSAMCore.errors import CheckpointError, ModelFolderError, describe_path
from MaskSAMCore.folder_layout import BEST_CHECKPOINT, FINAL_CHECKPOINT, LATEST_CHECKPOINT, MODEL_JSON
from MaskSAMCore.model.config import MaskSAMConfig
from MaskSAMCore.model.weights_only import load_weights_only
from MaskSAMCore.model_json import FORMAT, NETWORK_FORMAT, REGIONS_FORMAT_VERSION, read_model_json
from MaskSAMCore.progress import print_warning

CHECKPOINT_FORMAT = "masksam-checkpoint"
CHECKPOINT_FILES = {
    "final": FINAL_CHECKPOINT,
    "best": BEST_CHECKPOINT,
    "latest": LATEST_CHECKPOINT,
}

PathLike = Union[str, "os.PathLike[str]"]


def save_checkpoint(path: PathLike, payload: Dict[str, Any]) -> None:
    """Atomically `torch.save` a dict of plain values (tensors, numbers, strings, lists, dicts).

    A failed write raises the system's `OSError` naming `path` (a quota, a file-size limit, an
    NFS I/O error, a full disk), not torch's "unexpected pos" `RuntimeError`: given a file name,
    torch writes through a C++ stream that drops the reason. So the file is written by Python,
    which keeps it, and torch streams into it (no second copy of a large checkpoint in memory).
    """
    payload = {"format": CHECKPOINT_FORMAT, "format_version": 1, **payload}
    with atomic_path(path) as temporary:
        file = open(temporary, "wb")
        writer = _FailedWriteKeeper(file)
        try:
            torch.save(payload, writer)
            file.close()   # its last buffered write may be the one that fails
        except (OSError, RuntimeError) as exc:
            error = writer.error or (exc if isinstance(exc, OSError) else None)
            if error is None:
                raise
            raise OSError(error.errno, error.strerror or str(error), os.fspath(path)) from None
        finally:
            with contextlib.suppress(OSError):   # (after a failed write, closing fails again)
                file.close()


class _FailedWriteKeeper:
    """A writable file that keeps the `OSError` of its first failed write (torch's writer
    catches it and raises its own error without the reason)."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._file.flush()


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` without executing any code."""
    path = Path(path)
    shown = describe_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {shown} does not exist")
    payload = load_weights_only(path, shown)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{shown} is not a MaskSAM checkpoint")
    if not isinstance(payload.get("weights"), dict):
        raise CheckpointError(f"{shown} has no weights")
    return payload


def write_model_json(model_dir: PathLike, meta: Dict[str, Any]) -> Path:
    """Atomically write `model.json` (format fields added) and return its path."""
    path = Path(model_dir) / MODEL_JSON
    version = REGIONS_FORMAT_VERSION if meta.get("regions") else 1
    write_json(path, {"format": FORMAT, "format_version": version,
                      "network_format": NETWORK_FORMAT, **meta})
    return path


@dataclass
class ModelFolder:
    path: Path
    meta: Dict[str, Any]

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: PathLike) -> "ModelFolder":
        """The folder of `model_dir`, its model.json checked (`read_model_json`)."""
        return cls(Path(model_dir), read_model_json(model_dir))

    # -- description -------------------------------------------------------------------------
    @property
    def config(self) -> MaskSAMConfig:
        return MaskSAMConfig.from_dict(self.meta["network"])

    @property
    def plan(self) -> Dict[str, Any]:
        return self.meta["plan"]

    @property
    def labels(self) -> Dict[str, int]:
        return {str(name): int(value) for name, value in self.meta["labels"].items()}

    @property
    def regions(self) -> Optional[RegionScheme]:
        """The region labels the model was trained on (BraTS-like datasets), or None."""
        data = self.meta.get("regions")
        return RegionScheme.from_dict(data) if data else None

    @property
    def output_labels(self) -> Dict[str, int]:
        """Name -> value in the label maps the model writes: its labels, or for a region model
        background and each region's value from regions_class_order."""
        regions = self.regions
        return regions.output_labels if regions is not None else self.labels

    @property
    def class_names(self) -> List[str]:
        """Names ordered by label value (index = label value)."""
        return [name for name, _ in sorted(self.labels.items(), key=lambda item: item[1])]

    @property
    def channel_names(self) -> Dict[str, str]:
        return {str(k): str(v) for k, v in self.meta["channel_names"].items()}

    @property
    def modality(self) -> str:
        return str(self.meta.get("modality") or self.channel_names.get("0", "unknown"))

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "1"))

    @property
    def sam_type(self) -> Optional[str]:
        return self.meta["sam"].get("model_type")

    @property
    def sam_sha256(self) -> Optional[str]:
        return self.meta["sam"].get("sha256")

    @property
    def random_init(self) -> bool:
        return bool(self.meta["sam"].get("random_init", self.sam_sha256 is None))

    def checkpoint_path(self, which: str = "final") -> Path:
        if which not in CHECKPOINT_FILES:
            raise ModelFolderError(f"unknown checkpoint {which!r}; choose one of {sorted(CHECKPOINT_FILES)}")
        path = self.path / CHECKPOINT_FILES[which]
        if not path.is_file():
            present = [k for k, f in CHECKPOINT_FILES.items() if (self.path / f).is_file()]
            hint = (f" (present: {', '.join(present)}: its training has not finished; finish it with masksam train "
                    f"... --resume, or predict with --checkpoint {present[0]})" if present
                    else " (is training finished?)")
            raise ModelFolderError(f"{describe_path(self.path)} has no {CHECKPOINT_FILES[which]}{hint}")
        return path

    def outdated_final_note(self) -> Optional[str]:
        """A warning when the final checkpoint is not the end of the training model.json
        describes: a finished run extended with ``--resume --epochs N`` and stopped before N keeps
        the first run's final weights beside newer ones (None otherwise)."""
        training = self.meta.get("training") or {}
        finished, epochs = training.get("finished_epochs"), training.get("epochs")
        final = self.path / CHECKPOINT_FILES["final"]
        if not (isinstance(finished, int) and isinstance(epochs, int) and finished < epochs and final.is_file()):
            return None
        return (f"{describe_path(final)} is the end of an earlier, shorter training: this one was extended to "
                f"{epochs} epochs and stopped after {finished}; finish it with masksam train ... --resume, or "
                "predict with --checkpoint latest for its newest weights")

    # -- building ------------------------------------------------------------------------------
    def resolve_sam_checkpoint(self, sam_checkpoint: Optional[PathLike] = None) -> Optional[Path]:
        """The SAM checkpoint file the model was trained on, or None for random-init models."""
        from MaskSAMCore.model.sam_checkpoints import find_cached_by_hash, official_checkpoint

        if self.random_init:
            return None
        if sam_checkpoint is not None:
            return self._checked_sam_file(Path(sam_checkpoint))
        found = find_cached_by_hash(self.sam_sha256 or "")
        if found is None:
            digest = f"SHA-256 {(self.sam_sha256 or '?')[:12]}..."
            if official_checkpoint(self.sam_sha256) is not None:
                raise ModelFolderError(f"model {self.name} needs the SAM {self.sam_type} checkpoint ({digest}): "
                                       f"run 'masksam download-sam {self.sam_type}' or pass --sam-checkpoint FILE")
            raise ModelFolderError(f"model {self.name} was trained on a SAM checkpoint of its own ({digest}), which "
                                   "is not where it was last used or has changed since: pass it with "
                                   "--sam-checkpoint FILE")
        return found

    def _checked_sam_file(self, path: Path) -> Path:
        """`path` if it holds the SAM weights the model was trained on (its SHA-256 is in
        model.json): adapters trained on other weights of the same shape (another release, a
        fine-tuned SAM) would give wrong masks without a word. A missing file is named later."""
        from MaskSAMCore.model.sam_checkpoints import remembered_sha256

        if not self.sam_sha256 or not path.is_file():
            return path
        digest = remembered_sha256(path)
        if digest != self.sam_sha256:
            raise ModelFolderError(
                f"{describe_path(path)} is not the SAM checkpoint model {self.name} was trained on "
                f"(SHA-256 {digest[:12]}..., model.json records {self.sam_sha256[:12]}...); pass that file "
                f"or, if it was the official one, run 'masksam download-sam {self.sam_type}'")
        return path

    def build_model(self, which: str = "final", device: Union[str, torch.device] = "cpu",
                    sam_checkpoint: Optional[PathLike] = None) -> torch.nn.Module:
        """The trained network in eval mode on `device`."""
        from MaskSAMCore.model.builder import build_masksam

        payload = load_checkpoint(self.checkpoint_path(which))
        scope = payload.get("weights_scope", "trainable")
        if sam_checkpoint is not None and (scope == "all" or self.random_init):
            why = "carries its whole network" if scope == "all" else "was trained on a random SAM backbone"
            print_warning(f"--sam-checkpoint is not used: model {self.name} {why}")
        sam_file = None if scope == "all" else self.resolve_sam_checkpoint(sam_checkpoint)
        model = build_masksam(self.config, sam_checkpoint=sam_file)
        shown = describe_path(self.checkpoint_path(which))
        try:
            if scope == "all":
                model.load_state_dict(payload["weights"], strict=True)
            else:
                model.load_trainable_state_dict(payload["weights"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"{shown} does not fit this model folder's network "
                f"({self.config.num_classes} classes, {self.config.num_queries} queries): "
                f"{_first_state_dict_problem(exc)}"
            ) from None
        return model.to(device).eval()


def _first_state_dict_problem(exc: BaseException) -> str:
    """The first concrete line of a `load_state_dict` error (not its generic header)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for line in lines:
        if not line.startswith("Error(s) in loading state_dict"):
            return line.strip("\"'")[:200]
    return lines[0][:200] if lines else type(exc).__name__

