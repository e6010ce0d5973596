"""Starting and stopping worker processes safely next to torch.

Workers are started with 'forkserver' where the platform has it (Linux, macOS) and 'spawn'
otherwise: both give a fresh interpreter that does not inherit torch's threads or CUDA state,
which a plain fork would. Workers are daemonic, ignore Ctrl-C (the parent decides when to stop)
and watch their parent, so none outlives a parent that was killed without cleaning up.
Workers are started with Ctrl-C and SIGTERM held back (`signals_deferred`): see there why.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterable, Iterator, List

WORKER_MODULES = ("MaskSAMCore.data.preprocess_runner", "MaskSAMCore.data.loader_worker")


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context for data workers (see module docstring)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # The server imports these once; each worker then starts as a cheap fork of it.
        context.set_forkserver_preload(list(WORKER_MODULES))
        return context
    return multiprocessing.get_context("spawn")


def ignore_interrupts() -> None:
    """In a worker: leave Ctrl-C to the parent, which stops the workers itself."""
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while worker processes start, then act on them as usual.

    `Process.start()` hands the new process to the fork server and then waits for its process
    id; the first time, that wait lasts while the server imports torch. Interrupted there, the
    parent has no id to stop the worker with: the server starts it after the parent has gone
    and it prints a traceback (its pool's semaphores no longer exist) below "cancelled". Only
    the main thread can hold signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: List[int] = []

    def remember(signum: int, _frame: Any) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, remember) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signum = received[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)     # KeyboardInterrupt, or MaskSAM's Cancelled for SIGTERM
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_processes(processes: Iterable[multiprocessing.process.BaseProcess], timeout_s: float = 5.0) -> None:
    """Terminate (then kill) processes that are still running and reap them."""
    processes = list(processes)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
            process.join(timeout_s)


def abort_pool(executor: ProcessPoolExecutor) -> None:
    """Stop a process pool now: cancel queued work and terminate the running workers.

    `ProcessPoolExecutor.shutdown` would wait for running tasks (minutes for a large case);
    its worker processes are only reachable through the private `_processes` mapping."""
    processes = list(getattr(executor, "_processes", {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    stop_processes(processes)
