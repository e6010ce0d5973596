"""Training batches as torch tensors, made by background worker processes.

>>> loader = PatchLoader(preprocessed_dir, train_cases, plan, batch_size=2, num_batches=250,
...                      num_workers=2, seed=12345, epoch=epoch, rank=rank, world_size=world)
>>> for image, seg in loader:        # image (B, C, T, H, W) float32, seg (B, T, H, W) int64
...     ...

One `PatchLoader` serves one epoch of one rank. Batch ``b`` depends only on ``(seed, epoch,
rank, b)`` (see `loader_worker`), so the stream is the same with 0 or N workers and a resumed
run sees exactly the batches it would have seen. Worker ``w`` makes batches ``w, w + N, ...``
into its own bounded queue and the consumer reads the queues round-robin, which keeps the order
without a reorder buffer.

Stopping: the workers are shut down when the iteration ends, when the consumer breaks out of
the loop or raises (the generator's ``finally``), on `close()` or leaving a ``with`` block, and
on SIGTERM once `MaskSAMCore.progress.install_signal_handlers` turned it into an exception (the
CLI does). Workers killed from outside, or whose parent was killed, exit on their own.
"""

from __future__ import annotations

import contextlib
import os
import queue
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from MaskSAMCore.data.augmentation import AugmentationSettings, in_plane_only
from MaskSAMCore.data.loader_worker import BatchSpec, make_batch, new_sampler, worker_main
from MaskSAMCore.data.processes import signals_deferred, stop_processes, worker_context
from MaskSAMCore.data.store import read_properties
from MaskSAMCore.errors import MaskSAMError

_GET_TIMEOUT_S = 1.0
_PREFETCH_PER_WORKER = 2


class PatchLoader:
    """An iterable of `num_batches` batches ``(image (B, C, T, H, W) float32, seg (B, T, H, W)
    int64)`` of patches of ``plan["patch_size"]`` from a folder of preprocessed cases."""

    def __init__(self, preprocessed_dir: "os.PathLike[str] | str", case_names: Sequence[str], plan: Dict[str, Any],
                 batch_size: int, num_batches: int, oversample_foreground: float = 0.33, augment: bool = True,
                 num_workers: int = 2, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 settings: Optional[AugmentationSettings] = None) -> None:
        if batch_size < 1 or num_batches < 0:
            raise ValueError(f"batch_size must be >= 1 and num_batches >= 0, got {batch_size}, {num_batches}")
        if not 0.0 <= oversample_foreground <= 1.0:
            raise ValueError(f"oversample_foreground must be in [0, 1], got {oversample_foreground}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if not case_names:
            raise ValueError("PatchLoader needs at least one case")
        for name in case_names:
            read_properties(preprocessed_dir, name)  # a missing case fails here, with its name, not in a worker
        patch = tuple(int(p) for p in plan["patch_size"])
        self.spec = BatchSpec(
            folder=str(Path(preprocessed_dir)), case_names=tuple(case_names),
            patch_size=patch,  # type: ignore[arg-type]
            batch_size=batch_size, num_batches=num_batches, oversample_foreground=float(oversample_foreground),
            settings=(settings or AugmentationSettings()) if augment else None,
            planar=in_plane_only(patch, bool(plan.get("anisotropic", False))),
            seed=int(seed), epoch=int(epoch), rank=int(rank),
        )
        self.num_workers = max(0, int(num_workers))
        self._processes: List[Any] = []
        self._queues: List[Any] = []
        self._stop_event: Any = None

    def __len__(self) -> int:
        return self.spec.num_batches

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.spec.num_batches == 0:
            return
        if self.num_workers == 0:
            sampler = new_sampler(self.spec)
            for batch_index in range(self.spec.num_batches):
                data, seg, _ = make_batch(self.spec, sampler, batch_index)
                yield _to_torch(data, seg)
            return
        self._start()
        try:
            for batch_index in range(self.spec.num_batches):
                data, seg = self._receive(batch_index)
                yield _to_torch(data, seg)
        finally:
            self.close()

    @property
    def worker_pids(self) -> List[int]:
        """Process ids of the running workers (empty when none are running)."""
        return [p.pid for p in self._processes if p.pid is not None]

    def close(self) -> None:
        """Stop and reap the workers (safe to call more than once)."""
        if self._stop_event is not None:
            self._stop_event.set()
        # The queues are not read again: a worker stopped while its queue's feeder thread was
        # writing leaves half a batch in the pipe (reading it would end in EOFError at best).
        stop_processes(self._processes, timeout_s=2.0)
        for q in self._queues:
            q.close()
            q.cancel_join_thread()
        self._processes, self._queues, self._stop_event = [], [], None

    def __enter__(self) -> "PatchLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_processes", None):
            with contextlib.suppress(Exception):  # interpreter shutdown: do what still can be done
                self.close()

    # -- workers ------------------------------------------------------------------------------
    def _start(self) -> None:
        self.close()  # a second iteration starts afresh
        context = worker_context()
        workers = min(self.num_workers, max(1, self.spec.num_batches))
        self._stop_event = context.Event()
        self._queues = [context.Queue(maxsize=_PREFETCH_PER_WORKER) for _ in range(workers)]
        with signals_deferred():
            for index in range(workers):
                process = context.Process(
                    target=worker_main, name=f"masksam-loader-{index}", daemon=True,
                    args=(self.spec, index, workers, self._queues[index], self._stop_event, os.getpid()),
                )
                process.start()
                self._processes.append(process)
                _keep_only_the_read_end(self._queues[index])

    def _receive(self, batch_index: int) -> Tuple[np.ndarray, np.ndarray]:
        worker = batch_index % len(self._processes)
        process = self._processes[worker]
        while True:
            try:
                item = self._queues[worker].get(timeout=_GET_TIMEOUT_S)
            except queue.Empty:
                if process.is_alive():
                    continue
                # A worker that reported an error exits right after flushing it: that report may
                # have arrived between the timeout above and the liveness check, so look once more.
                try:
                    item = self._queues[worker].get(timeout=_GET_TIMEOUT_S)
                except (queue.Empty, EOFError, OSError):
                    raise _died(worker, process.exitcode, batch_index, len(self._processes)) from None
            except (EOFError, OSError):   # killed while writing a batch: the pipe ends inside it
                process.join(timeout=5.0)
                raise _died(worker, process.exitcode, batch_index, len(self._processes)) from None
            if isinstance(item[1], str):  # (-1, "error", text, is_user_error)
                if item[3]:
                    raise MaskSAMError(item[2])
                raise RuntimeError(f"data-loading worker {worker} failed:\n{item[2]}")
            index, data, seg = item
            if index != batch_index:  # cannot happen with one queue per worker; guard the invariant
                raise RuntimeError(f"data-loading worker {worker} sent batch {index}, expected {batch_index}")
            return data, seg


def _keep_only_the_read_end(batches: Any) -> None:
    """Close this process's copy of a worker queue's write end (the worker has its own once
    started). A worker killed while writing a batch then ends the pipe, and reading it raises
    EOFError; with a write end left open here the read would wait for the rest for ever."""
    batches._writer.close()   # multiprocessing.Queue keeps both ends; this process only reads


def _died(worker: int, exit_code: Optional[int], batch_index: int, workers: int) -> MaskSAMError:
    """A worker gone without a report: killed from outside, most likely by the out-of-memory
    killer (each worker holds a few augmented batches)."""
    how = f"was killed by signal {-exit_code}" if exit_code is not None and exit_code < 0 else \
        f"exited with status {exit_code}"
    fewer = f" or use fewer workers (--num-workers {workers - 1})" if workers > 1 else ""
    return MaskSAMError(f"data-loading worker {worker} {how} before batch {batch_index} "
                        f"(out of memory?); free memory{fewer} and train again (--resume continues from the last "
                        "checkpoint)")


def _to_torch(data: np.ndarray, seg: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), torch.from_numpy(seg.astype(np.int64))
