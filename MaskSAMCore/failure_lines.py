"""What an exception that ends a ``masksam`` command means, as the one line the command line
prints instead of a traceback (`cli.run_command`): out of memory, or (under torchrun) another
rank gone. None where it means a bug, which the caller raises. No torch: asked by the command
line, which imports torch only for the commands that need it.
"""

from __future__ import annotations

from typing import Optional

from MaskSAMCore import torchrun
from MaskSAMCore.errors import MaskSAMError


# What the user of each command can change when the host runs out of memory: the sizes it was
# given where it has such options; a CT to segment is as large as it is.
_HOST_MEMORY_ADVICE = {
    "predict": "close other programs, leave out --probabilities if given, or use a machine with more memory",
    "make-phantoms": "choose a smaller --size",
    "benchmark": "choose a smaller --shape or fewer --classes",
}
_MORE_MEMORY = "close other programs or use a machine with more memory"
# The same for the GPU: predict falls back to smaller window batches and host accumulation by
# itself (`sliding_window`), so what reaches the command line there is beyond those.
_GPU_MEMORY_ADVICE = {
    "predict": "free the GPU of other work, lower MASKSAM_GPU_MEMORY_GB or --window-batch, or use --device cpu",
    "benchmark": "free the GPU of other work, or lower MASKSAM_GPU_MEMORY_GB, --window-batch or --shape",
    "train": "free the GPU of other work, or lower --batch-size",
    "demo": "free the GPU of other work, or use --device cpu",
}
_FREE_THE_GPU = "free the GPU of other work, or use --device cpu"


def out_of_memory_line(exc: BaseException, command: Optional[str] = None) -> Optional[str]:
    """One line for an allocation that failed on the host or the GPU, else None (a bug: raised);
    `command`: the sub-command that ran, whose options the advice names."""
    text = str(exc)
    if isinstance(exc, MemoryError) or "can't allocate memory" in text:
        advice = _HOST_MEMORY_ADVICE.get(command or "", _MORE_MEMORY)
        return f"out of memory: the machine cannot hold what this asks for; {advice}"
    if "CUDA out of memory" in text or type(exc).__name__ == "OutOfMemoryError":
        return f"out of GPU memory; {_GPU_MEMORY_ADVICE.get(command or '', _FREE_THE_GPU)}"
    return None


# What gloo, NCCL and torch's rendezvous store say when the rank at the other end of a
# collective is gone (it failed or was stopped, and printed why).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
              "failed to recv, got 0 bytes", "NCCL communicator was aborted", "remote process exited")


def peer_failure_line(exc: BaseException) -> Optional[str]:
    """Under torchrun, one line for a collective that broke because another rank ended (its own
    error or cancel line is above), instead of a hundred lines of traceback per rank; else None."""
    rank = _rank_under_torchrun()
    if rank is None:
        return None
    distributed_error = type(exc).__name__ in ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError")
    if not (distributed_error or any(marker in str(exc) for marker in _PEER_GONE)):
        return None
    return f"rank {rank} stopped: another rank of the job failed or was stopped (its message is above)"


def _rank_under_torchrun() -> Optional[int]:
    """This process's rank under torchrun; None in a plain run. Asked while an error is handled,
    so a broken torchrun environment counts as a plain run: the error being handled says so."""
    try:
        return torchrun.rank() if torchrun.launched_by_torchrun() else None
    except MaskSAMError:
        return None


def speaks_for_the_job() -> bool:
    """Whether this process reports a cancel or another rank's error: rank 0, or a plain run."""
    return _rank_under_torchrun() in (None, 0)
