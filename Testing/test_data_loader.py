"""PatchLoader: batch shapes and types, foreground oversampling, a stream reproducible from
(seed, epoch, rank) whatever the number of workers, and no worker left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from MaskSAMCore.data.loader import PatchLoader
from MaskSAMCore.data.loader_worker import is_forced
from MaskSAMCore.data.preprocess_runner import class_locations
from MaskSAMCore.data.processes import process_alive, signals_deferred
from MaskSAMCore.data.store import save_case
from MaskSAMCore.errors import Cancelled, InputError, MaskSAMError

PLAN = {"patch_size": [4, 32, 32], "anisotropic": False}
REPO = Path(__file__).resolve().parents[1]


def write_case(folder: Path, name: str, seg: np.ndarray, channels: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(channels,) + seg.shape).astype(np.float32) + seg[None]
    save_case(folder, name, data, seg, class_locations(seg, seed=seed), {"case": name})


@pytest.fixture
def small_cases(tmp_path) -> Path:
    """Three cases: one larger than the patch, one smaller (padded), one without foreground."""
    big = np.zeros((9, 60, 70), np.int16)
    big[2:6, 10:30, 20:40] = 1
    big[4:8, 40:55, 45:60] = 2
    small = np.zeros((3, 20, 24), np.int16)
    small[1:3, 5:15, 5:15] = 1
    write_case(tmp_path, "big", big, seed=1)
    write_case(tmp_path, "small", small, seed=2)
    write_case(tmp_path, "empty", np.zeros((6, 40, 40), np.int16), seed=3)
    return tmp_path


def collect(loader: PatchLoader):
    return [(image.clone(), seg.clone()) for image, seg in loader]


def test_batches_have_the_promised_shapes_and_types(small_cases):
    loader = PatchLoader(small_cases, ["big", "small", "empty"], PLAN, batch_size=3, num_batches=12,
                         num_workers=0, seed=1)
    batches = collect(loader)
    assert len(batches) == len(loader) == 12
    for image, seg in batches:
        assert image.shape == (3, 2, 4, 32, 32) and image.dtype == torch.float32
        assert seg.shape == (3, 4, 32, 32) and seg.dtype == torch.int64
        assert set(torch.unique(seg).tolist()) <= {0, 1, 2}
        assert torch.isfinite(image).all()


def test_a_third_of_the_patches_is_forced_onto_foreground(tmp_path):
    seg = np.zeros((4, 400, 400), np.int16)
    seg[:, 300:304, 60:64] = 1            # a random 32 x 32 patch hits this about 1 % of the time
    write_case(tmp_path, "sparse", seg, channels=1)

    def foreground_fraction(oversample: float) -> float:
        loader = PatchLoader(tmp_path, ["sparse"], PLAN, batch_size=3, num_batches=100, augment=False,
                             oversample_foreground=oversample, num_workers=0, seed=4)
        return float(np.mean([(s > 0).any().item() for _, seg_batch in loader for s in seg_batch]))

    assert 0.30 <= foreground_fraction(0.33) <= 0.40
    assert foreground_fraction(0.0) <= 0.05
    assert sum(is_forced(g, 0.33) for g in range(300)) == 99
    assert [is_forced(g, 1 / 3) for g in range(6)] == [False, False, True, False, False, True]


def test_the_stream_depends_only_on_seed_epoch_and_rank(small_cases):
    names = ["big", "small", "empty"]

    def stream(workers=0, seed=7, epoch=2, rank=0):
        return collect(PatchLoader(small_cases, names, PLAN, batch_size=2, num_batches=8, num_workers=workers,
                                   seed=seed, epoch=epoch, rank=rank, world_size=2))

    def same(a, b):
        return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))

    reference = stream()
    assert same(reference, stream())
    assert same(reference, stream(workers=2))  # worker processes do not change the stream
    assert not same(reference, stream(epoch=3))
    assert not same(reference, stream(rank=1))
    assert not same(reference, stream(seed=8))


def wait_until_gone(pids, timeout_s=10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(process_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def test_workers_stop_when_the_consumer_breaks_or_raises(small_cases):
    loader = PatchLoader(small_cases, ["big", "small"], PLAN, batch_size=2, num_batches=10_000, num_workers=2)
    for index, _ in enumerate(loader):
        if index == 0:
            pids = loader.worker_pids
            assert len(pids) == 2 and all(process_alive(pid) for pid in pids)
        if index == 3:
            break
    assert wait_until_gone(pids)

    loader = PatchLoader(small_cases, ["big"], PLAN, batch_size=2, num_batches=10_000, num_workers=2)
    with pytest.raises(KeyError):
        for _ in loader:
            pids = loader.worker_pids
            raise KeyError("the training step failed")
    assert wait_until_gone(pids)


def test_a_failing_worker_is_reported_in_the_consumer(small_cases):
    loader = PatchLoader(small_cases, ["big"], PLAN, batch_size=1, num_batches=4, num_workers=2)
    (small_cases / "big.npy").unlink()
    # A damaged case is the user's problem: its one line, not a worker's traceback.
    with pytest.raises(MaskSAMError, match=r"^\S*big.npy: cannot read preprocessed case 'big' \([^\n]*\); "
                                           "train again with --resume"):
        collect(loader)
    assert not loader.worker_pids


def test_a_worker_killed_from_outside_is_one_line_suggesting_fewer_workers(small_cases):
    loader = PatchLoader(small_cases, ["big"], PLAN, batch_size=1, num_batches=10_000, num_workers=2)
    pids = []
    with pytest.raises(MaskSAMError) as caught:
        for index, _ in enumerate(loader):
            if index == 0:
                pids = loader.worker_pids
                os.kill(pids[1], signal.SIGKILL)   # the out-of-memory killer
    message = str(caught.value)
    assert message.startswith("data-loading worker 1 was killed by signal 9 before batch ")
    assert "(out of memory?); free memory or use fewer workers (--num-workers 1)" in message
    assert "\n" not in message
    assert not loader.worker_pids and wait_until_gone(pids)


KILLED_MID_BATCH = textwrap.dedent("""
    import fcntl, os, signal, struct, sys, termios, time
    from MaskSAMCore.data.loader import PatchLoader
    from MaskSAMCore.errors import MaskSAMError

    def pipe_full(connection):
        # More bytes wait in the pipe (FIONREAD) than all its pages but one hold, so every page is
        # in use: a writer with more to write (a batch far larger than the pipe) blocks in the write.
        fd = connection.fileno()
        waiting = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0]
        return waiting > fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) - os.sysconf("SC_PAGE_SIZE")

    def main():
        # 2 MB batches: far more than a pipe holds, so a worker's next batch is half written
        loader = PatchLoader(sys.argv[1], ["big"], {"patch_size": [4, 256, 256]}, batch_size=1,
                             num_batches=10_000, num_workers=2)
        try:
            for index, _ in enumerate(loader):
                if index == 0:
                    # Wait until worker 1 has made its batch and blocks writing it (a busy machine
                    # may take long): killed before, the test would not kill it mid-batch.
                    deadline = time.monotonic() + 30.0
                    while not pipe_full(loader._queues[1]._reader):
                        if time.monotonic() > deadline:
                            print("worker 1 never filled its pipe")
                            return
                        time.sleep(0.01)
                    os.kill(loader.worker_pids[1], signal.SIGKILL)
        except MaskSAMError as error:
            print(error)

    if __name__ == "__main__":
        main()
""")


def test_a_worker_killed_while_writing_a_batch_is_reported_not_waited_for(small_cases, tmp_path):
    """The out-of-memory killer may strike while a worker writes a batch into its pipe: the
    reader got half a batch and waited for the rest for ever (the training hung)."""
    script = tmp_path / "killed_mid_batch.py"
    script.write_text(KILLED_MID_BATCH)
    result = subprocess.run([sys.executable, str(script), str(small_cases)], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.startswith("data-loading worker 1 was killed by signal 9 before batch 1 "), result


def test_a_missing_case_fails_before_any_worker_starts(small_cases):
    with pytest.raises(InputError, match="preprocessed case 'nope' not found"):
        PatchLoader(small_cases, ["big", "nope"], PLAN, batch_size=1, num_batches=1)


CONSUMER = textwrap.dedent("""
    import sys, time
    from MaskSAMCore.data.loader import PatchLoader
    from MaskSAMCore.progress import install_signal_handlers

    def main():
        if sys.argv[2] == "handlers":
            install_signal_handlers()  # as the masksam command line does
        loader = PatchLoader(sys.argv[1], ["big", "small"], {"patch_size": [4, 32, 32]}, batch_size=2,
                             num_batches=1_000_000, num_workers=2)
        for index, _ in enumerate(loader):
            if index == 2:
                print(" ".join(map(str, loader.worker_pids)), flush=True)
            time.sleep(0.01)

    if __name__ == "__main__":
        main()
""")


@pytest.mark.parametrize("how", ["sigterm-with-handlers", "sigkill"])
def test_no_orphan_workers_when_the_training_process_is_stopped(small_cases, tmp_path, how):
    """SIGTERM as the CLI handles it (the loader closes its workers), and SIGKILL, where nothing
    runs in the parent and the workers notice on their own (as with an unhandled SIGTERM)."""
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    mode = "handlers" if how == "sigterm-with-handlers" else "plain"
    process = subprocess.Popen([sys.executable, str(script), str(small_cases), mode], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, process.stderr.read()
        process.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        process.wait(timeout=30)
        assert wait_until_gone(pids), f"workers {pids} outlived their parent ({how})"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@contextlib.contextmanager
def signal_arrivals():
    """Yields `arrived(signum)`: waits (up to `timeout_s`) until the process has received `signum`,
    seen through `signal.set_wakeup_fd`, to which Python's C-level handler writes the number of
    every signal after flagging it. Python runs the signal's handler at the next bytecode
    instruction of the main thread, so once `arrived` returns True a signal that was not held back
    has raised already (inside `arrived`)."""
    reader, writer = socket.socketpair()
    for end in (reader, writer):
        end.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    seen = bytearray()

    def arrived(signum: int, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while signum not in seen:
            if time.monotonic() > deadline:
                return False
            try:
                seen.extend(reader.recv(64))
            except BlockingIOError:
                time.sleep(0.01)
        return True

    try:
        yield arrived
    finally:
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()


def test_ctrl_c_while_workers_start_is_acted_on_once_they_have_started():
    """A Ctrl-C inside Process.start() used to leave a worker the parent could not stop, which
    printed a traceback after "masksam: cancelled" (about 1 run in 2 for a Ctrl-C in the second
    after planning); held back, it arrives when every started worker is known."""
    from MaskSAMCore.progress import install_signal_handlers

    finished = []
    with signal_arrivals() as arrived:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                assert arrived(signal.SIGINT), "SIGINT never arrived"   # not held back, it raised here
                finished.append("started")
        assert finished == ["started"]
        previous = signal.getsignal(signal.SIGTERM)
        install_signal_handlers()
        try:
            with pytest.raises(Cancelled, match="SIGTERM"):
                with signals_deferred():
                    os.kill(os.getpid(), signal.SIGTERM)
                    assert arrived(signal.SIGTERM), "SIGTERM never arrived"
                    finished.append("again")
        finally:
            signal.signal(signal.SIGTERM, previous)
    assert finished == ["started", "again"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_validation_cases_are_whole_arrays_left_on_disk(small_cases):
    """A CT fold's validation cases are gigabytes: memory-mapped, not held by rank 0 all training."""
    from MaskSAMCore.training.run import load_validation_cases

    cases = load_validation_cases(small_cases, ["small", "big"])
    assert [c.name for c in cases] == ["small", "big"]
    assert cases[0].image.shape == (2, 3, 20, 24) and cases[0].labels.shape == (3, 20, 24)
    assert all(isinstance(c.image, np.memmap) and isinstance(c.labels, np.memmap) for c in cases)
