"""Data-parallel training across processes (DDP), set up from the variables torchrun exports.

One machine, G GPUs::

    torchrun --nproc_per_node=G -m MaskSAMCore train DATASET MODEL_DIR --preset vit_b ...

Several machines (run the same command on each, with its own ``--node_rank``)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 \\
             --rdzv_backend=c10d --rdzv_endpoint=HOST_OF_NODE_0:29500 --rdzv_id=masksam1 \\
             -m MaskSAMCore train DATASET MODEL_DIR ...

On several machines MODEL_DIR must be one folder on a shared filesystem (NFS, Lustre, ...): rank
0 writes the plan, the preprocessed cases and the checkpoints that every rank reads, and
`--resume` reads them back on every rank. `require_shared_folder` checks this before any work.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; `init_distributed` reads them (through
`MaskSAMCore.torchrun`) and joins the process group with NCCL when the run uses CUDA, else gloo
(CPU). Without these variables (a plain ``masksam train``) everything here is a no-op for a single
process. Each rank draws its own patches (the rank is part of the data loader's seed); gradients
are averaged by DDP, so the weights stay identical on every rank; only rank 0 writes files and
prints.
"""

from __future__ import annotations

import gc
import secrets
from dataclasses import dataclass
from pathlib import Path
from datetime import timedelta
from typing import Any, Callable, List, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from MaskSAMCore.atomic import TEMP_MARKER
from MaskSAMCore import torchrun
from MaskSAMCore.errors import MaskSAMError, RankFailed, describe_path, first_line
from MaskSAMCore.paths import environment_number

TIMEOUT_ENV = "MASKSAM_DDP_TIMEOUT_S"
DEFAULT_COLLECTIVE_TIMEOUT_S = 4 * 3600.0
MAXIMUM_COLLECTIVE_TIMEOUT_S = 30 * 24 * 3600.0   # a month; far beyond it timedelta overflows


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


def init_distributed(use_cuda: bool) -> DistributedContext:
    """Join the process group if torchrun started this process; otherwise a single-process context.

    Args:
        use_cuda: the run trains on CUDA (NCCL, one GPU per local rank) rather than the CPU (gloo).
    """
    if not torchrun.launched_by_torchrun():
        return DistributedContext()
    rank, world_size, local_rank = torchrun.rank(), torchrun.world_size(), torchrun.local_rank()
    timeout_s = environment_number(TIMEOUT_ENV, DEFAULT_COLLECTIVE_TIMEOUT_S, "a timeout in seconds",
                                   maximum=MAXIMUM_COLLECTIVE_TIMEOUT_S)
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # generous: the other ranks wait while rank 0 plans, preprocesses and validates (a
        # failure there reaches them at once, see run_and_agree); a rank that never arrives
        # still ends the job with an error, not a hang
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def shutdown_distributed() -> None:
    """Leave the process group. A DistributedDataParallel model still alive holds a reducer bound
    to the group; freed after the group (its module's reference cycles wait for the garbage
    collector) it made a gloo rank abort at exit ("terminate called without an active
    exception", SIGABRT) in about one run in five, even after a finished training. Collecting
    first frees it while the group still exists."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_across_ranks(value: Tensor) -> Tensor:
    """The mean of `value` over all ranks (returned as a new tensor; identity in one process)."""
    if not is_active():
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / dist.get_world_size()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (any picklable Python object)."""
    if not is_active():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not is_active():
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


T = TypeVar("T")


def run_and_agree(work: Callable[[], T], here: bool) -> Optional[T]:
    """Run `work` on the ranks where `here` is true (rank 0, or one rank per machine), then let
    every rank learn whether it failed anywhere. The failing rank raises its own error and every
    other rank a `RankFailed` naming it, at once: without this, they would wait at their next
    collective until a dead peer is noticed or the collective timeout (hours) passes. Doubles as
    a barrier. Returns `work`'s result where it ran, None elsewhere."""
    result: Optional[T] = None
    error: Optional[Exception] = None
    if here:
        try:
            result = work()
        except Exception as exc:  # (Ctrl-C or SIGTERM ends the process; torchrun stops the rest)
            error = exc
    if not is_active():
        if error is not None:
            raise error
        return result
    failures = gather_objects(None if error is None else first_line(error))
    if error is not None:
        raise error
    for rank, message in enumerate(failures):
        if message is not None:
            raise RankFailed(f"rank {rank} failed: {message}")
    return result


def require_shared_folder(folder: Path, context: DistributedContext) -> None:
    """Raise the same `MaskSAMError` on every rank unless every rank sees `folder` as one folder
    (rank 0 leaves a marker in it that every rank must find). A no-op in a single process."""
    if not context.is_distributed:
        return
    name = None
    if context.is_main:
        name = f".shared-check{TEMP_MARKER}{secrets.token_hex(8)}"  # removed like any stale temporary
        (folder / name).touch()
    # Each rank looks in its own `folder` (the same path may be another disk on another machine),
    # for the name rank 0 sends after the touch.
    marker = Path(folder) / broadcast_from_main(name)
    seen = gather_objects(marker.exists())
    if context.is_main:
        marker.unlink()
    blind = [rank for rank, found in enumerate(seen) if not found]
    if blind:
        raise MaskSAMError(
            f"{describe_path(folder)} is not the same folder for rank(s) {', '.join(map(str, blind))}: training on "
            "several machines needs the model folder on a filesystem they share")
