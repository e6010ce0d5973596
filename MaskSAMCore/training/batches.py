"""The training data stream: one `PatchLoader` per epoch, seeded by (seed, epoch, rank).

Batch b of epoch e on rank r depends only on (seed, e, r, b), so a resumed run sees exactly the
batches an uninterrupted run would have seen, and every DDP rank draws different patches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from MaskSAMCore import torchrun
from MaskSAMCore.data.augmentation import AugmentationSettings
from MaskSAMCore.data.loader import PatchLoader
from MaskSAMCore.training.distributed import DistributedContext
from MaskSAMCore.training.settings import TrainSettings
from MaskSAMCore.training.trainer import BatchSource

MAX_DEFAULT_WORKERS = 8


def default_num_workers(device_type: str) -> int:
    """Background loader processes by default.

    On the CPU the training itself keeps every core busy, and starting worker processes each
    epoch costs seconds, so batches are made in-process (a tiny-preset batch takes ~20 ms). On a
    GPU augmentation is the CPU-bound part: use the cores this rank can claim, leaving one for
    the training process.
    """
    if device_type != "cuda":
        return 0
    cores = (os.cpu_count() or 2) // max(torchrun.local_world_size(), 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cores - 1))


def make_batch_source(preprocessed: "os.PathLike[str] | str", case_names: Sequence[str], plan: Dict[str, Any],
                      settings: TrainSettings, context: DistributedContext, device_type: str,
                      num_workers: Optional[int] = None) -> BatchSource:
    """``epoch -> iterable of (image (B, C, T, H, W) float32, seg (B, T, H, W) int64)`` batches."""
    workers = default_num_workers(device_type) if num_workers is None else num_workers
    augmentation = AugmentationSettings(mirror_axes=tuple(settings.mirror_axes))  # nnU-Net's, see `mirroring`

    def for_epoch(epoch: int) -> Any:
        loader = PatchLoader(Path(preprocessed), list(case_names), plan, batch_size=settings.batch_size,
                             num_batches=settings.iters_per_epoch, num_workers=workers, seed=settings.seed,
                             epoch=epoch, rank=context.rank, world_size=context.world_size,
                             settings=augmentation)
        return iter(loader)

    return for_epoch
