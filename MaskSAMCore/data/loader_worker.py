"""What a data-loading worker process runs (no torch here: workers start fast and small).

Batch ``b`` of an epoch is a pure function of ``(seed, epoch, rank, b)``: its random generator is
seeded from exactly those numbers, so the stream does not depend on how many workers there are
or which worker made which batch, and a resumed run re-creates an epoch exactly.

Foreground oversampling: patch number ``g = b * batch_size + i`` of the stream is forced to
contain foreground when ``floor((g + 1) p) > floor(g p)``: exactly a fraction ``p`` of the
patches, spread evenly (with a batch of 3 and p = 1/3, one patch per batch as in nnU-Net; with a
batch of 2 it alternates rather than forcing 50 %).
"""

from __future__ import annotations

import math
import os
import queue
import traceback
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from MaskSAMCore.data.augmentation import AugmentationSettings
from MaskSAMCore.data.processes import ignore_interrupts, process_alive
from MaskSAMCore.data.sampling import PatchSampler
from MaskSAMCore.errors import MaskSAMError

_PUT_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class BatchSpec:
    """Everything that determines the batches of one epoch (picklable, sent to workers)."""

    folder: str
    case_names: Tuple[str, ...]
    patch_size: Tuple[int, int, int]
    batch_size: int
    num_batches: int
    oversample_foreground: float
    settings: Optional[AugmentationSettings]
    planar: bool
    seed: int
    epoch: int
    rank: int


def is_forced(global_index: int, fraction: float) -> bool:
    """Whether patch `global_index` of the stream must contain foreground (see module doc)."""
    return math.floor((global_index + 1) * fraction + 1e-9) > math.floor(global_index * fraction + 1e-9)


def make_batch(spec: BatchSpec, sampler: PatchSampler, batch_index: int) -> Tuple[np.ndarray, np.ndarray, List[bool]]:
    """Batch `batch_index`: (data (B, C, T, H, W) float32, seg (B, T, H, W) int16, forced flags)."""
    rng = np.random.default_rng([spec.seed, spec.epoch, spec.rank, batch_index])
    patches, labels, forced = [], [], []
    for i in range(spec.batch_size):
        force = is_forced(batch_index * spec.batch_size + i, spec.oversample_foreground)
        data, seg = sampler.sample(rng, force)
        patches.append(data)
        labels.append(seg)
        forced.append(force)
    return np.stack(patches), np.stack(labels), forced


def new_sampler(spec: BatchSpec) -> PatchSampler:
    return PatchSampler(spec.folder, spec.case_names, spec.patch_size, spec.settings, spec.planar)


def worker_main(spec: BatchSpec, worker_index: int, num_workers: int, out_queue: Any, stop_event: Any,
                parent_pid: int) -> None:
    """Make batches worker_index, worker_index + num_workers, ... and put ``(b, data, seg)`` (or
    ``(-1, "error", text, is_user_error)``) on `out_queue`, until done, told to stop, or orphaned."""
    ignore_interrupts()
    watch = _ParentWatch(parent_pid, stop_event)
    try:
        sampler = new_sampler(spec)
        for batch_index in range(worker_index, spec.num_batches, num_workers):
            if watch.should_stop():
                break
            data, seg, _ = make_batch(spec, sampler, batch_index)
            if not _put(out_queue, (batch_index, data, seg), watch):
                break
        else:
            return  # all delivered: exiting waits until the queue has flushed them to the consumer
    except Exception as error:  # reported to the consumer, which raises it in the training process
        # A MaskSAMError (a damaged preprocessed case) is the user's one line; anything else a bug,
        # whose traceback the consumer shows.
        report = (str(error), True) if isinstance(error, MaskSAMError) else (traceback.format_exc(), False)
        if _put(out_queue, (-1, "error", *report), watch):
            return  # exiting flushes the report (the consumer stops this process if it never reads)
    # Stopped early: do not wait at exit for a consumer that no longer reads.
    out_queue.cancel_join_thread()


class _ParentWatch:
    """Tells a worker to stop: asked to by the parent, or the parent is gone (killed without
    cleaning up; the worker is then re-parented, or the parent id no longer exists)."""

    def __init__(self, parent_pid: int, stop_event: Any) -> None:
        self.parent_pid = parent_pid
        self.stop_event = stop_event
        self.original_ppid = os.getppid()

    def should_stop(self) -> bool:
        return (self.stop_event.is_set() or os.getppid() != self.original_ppid
                or not process_alive(self.parent_pid))


def _put(out_queue: Any, item: Sequence[Any], watch: _ParentWatch) -> bool:
    """Put with a timeout, giving up when the worker should stop."""
    while True:
        try:
            out_queue.put(item, timeout=_PUT_TIMEOUT_S)
            return True
        except queue.Full:
            if watch.should_stop():
                return False
