"""DDP on 2 CPU processes (gloo): every rank ends with the same weights after real training steps,
and a failure in work one rank does for all reaches the others at once."""

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset
from MaskSAMCore.errors import InputError
from MaskSAMCore.training.distributed import init_distributed, run_and_agree, shutdown_distributed
from MaskSAMCore.training.settings import TrainSettings
from MaskSAMCore.training.trainer import Trainer

NAMES = ["background", "liver", "kidney"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _batch(rank: int, step: int):
    """Different data on each rank (as the loader's rank-dependent seed gives)."""
    g = torch.Generator().manual_seed(100 * rank + step)
    image = torch.randn(1, 1, 4, 64, 64, generator=g)
    seg = torch.zeros(1, 4, 64, 64, dtype=torch.long)
    y, x = torch.randint(8, 40, (2,), generator=g).tolist()
    seg[:, :, y:y + 16, x:x + 20] = 1
    seg[:, 1:3, 44:60, 10:30] = 2
    image[:, 0][seg > 0] += seg[seg > 0].float()
    return image, seg


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    context = init_distributed(use_cuda=False)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        model = build_masksam(preset("tiny", num_classes=len(NAMES)))
        initial = {k: v.clone() for k, v in model.trainable_state_dict().items()}
        settings = TrainSettings(batch_size=1, optimizer="adamw", lr=1e-3)
        trainer = Trainer(model, settings, batches=lambda epoch: iter(()), validator=None,
                          model_dir=out_dir, class_names=NAMES, device=torch.device("cpu"),
                          context=context)
        losses = [trainer.train_step(*_batch(rank, step)) for step in range(3)]
        torch.save({"weights": model.trainable_state_dict(), "initial": initial, "losses": losses,
                    "backend": context.backend}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        shutdown_distributed()


@pytest.mark.slow
def test_two_gloo_ranks_keep_identical_weights(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["backend"] == r1["backend"] == "gloo"
    assert all(loss is not None for loss in r0["losses"] + r1["losses"])
    assert r0["losses"] != r1["losses"]                       # the ranks saw different data
    for name, weight in r0["weights"].items():
        assert torch.equal(weight, r1["weights"][name]), name   # ...yet hold the same weights
    changed = [n for n, w in r0["weights"].items() if not torch.equal(w, r0["initial"][n])]
    assert len(changed) > 0.9 * len(r0["weights"])              # and they did train


@pytest.mark.slow
def test_torchrun_trains_with_two_cpu_ranks_and_only_rank_0_writes(tmp_path):
    """The whole `masksam train` under torchrun: planning, preprocessing, splits, validation and
    checkpoints happen once, and no rank waits forever for another (a hang fails within 2 min)."""
    import subprocess
    import sys

    from MaskSAMCore.data.phantoms import make_phantoms
    from MaskSAMCore.model_folder import ModelFolder
    from MaskSAMCore.progress import parse_machine_line
    from MaskSAMCore.training.training_log import read_csv

    dataset = make_phantoms(tmp_path / "ds", cases=5, seed=2, size=(32, 32, 10), progress=False)
    model_dir = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKSAM_DDP_TIMEOUT_S": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
         "-m", "MaskSAMCore", "--machine-progress", "train", str(dataset), str(model_dir), "--preset", "tiny", "--epochs", "2",
         "--iters-per-epoch", "3", "--fold", "0", "--optimizer", "adamw"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [parse_machine_line(line) for line in done.stdout.splitlines()]
    assert [e["epoch"] for e in events if e and e["event"] == "epoch"] == [1, 2]   # printed by rank 0 only
    assert [line[:10] for line in done.stdout.splitlines() if line.startswith("epoch ")] == ["epoch 1/2:", "epoch 2/2:"]
    assert [r["epoch"] for r in read_csv(model_dir / "training_log.csv")] == ["1", "2"]
    assert ModelFolder.load(model_dir).build_model("final").config.num_classes == 6
    assert not [p for p in model_dir.iterdir() if ".partial-" in p.name]
    assert "Grad strides do not match" not in done.stderr   # DDP's 4-line stride warning, once per rank


def _fail_on_rank_0(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    context = init_distributed(use_cuda=False)

    def plan():
        raise InputError("case_007_0000.nii.gz: cannot read it as an image")

    try:
        run_and_agree(plan, here=context.is_main)
        outcome = "no error"
    except Exception as error:
        outcome = f"{type(error).__name__}: {error}"
    finally:
        shutdown_distributed()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as file:
        file.write(outcome)


def test_a_failure_on_rank_0_reaches_every_rank_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKSAM_DDP_TIMEOUT_S", "600")   # far longer than the test may take
    started = time.monotonic()
    mp.spawn(_fail_on_rank_0, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert time.monotonic() - started < 60
    assert (tmp_path / "rank0.txt").read_text() == "InputError: case_007_0000.nii.gz: cannot read it as an image"
    assert (tmp_path / "rank1.txt").read_text() == (
        "RankFailed: rank 0 failed: case_007_0000.nii.gz: cannot read it as an image")


def _diverge_on_ranks(rank: int, world_size: int, port: int, out_dir: str, diverging: tuple) -> None:
    """train_epoch where the ranks in `diverging` get a non-finite loss at every step."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    context = init_distributed(use_cuda=False)
    try:
        model = build_masksam(preset("tiny", num_classes=len(NAMES)))
        settings = TrainSettings(batch_size=1, iters_per_epoch=3)
        trainer = Trainer(model, settings, batches=lambda epoch: iter([(None, None)] * 3), validator=None,
                          model_dir=out_dir, class_names=NAMES, device=torch.device("cpu"), context=context)
        trainer.train_step = lambda image, seg: None if rank in diverging else 1.5 + rank
        outcome = f"loss {trainer.train_epoch(0, None):g}"
    except Exception as error:
        outcome = type(error).__name__
    finally:
        shutdown_distributed()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as file:
        file.write(outcome)


@pytest.mark.parametrize("diverging, expected", [((1,), ["loss 1.5", "loss 1.5"]),
                                                 ((0, 1), ["TrainingDiverged", "TrainingDiverged"])])
def test_ranks_agree_on_a_diverged_epoch(tmp_path, monkeypatch, diverging, expected):
    """One rank with no finite step must neither raise alone (the others would wait for it at the
    next all-reduce forever) nor stop the training the other ranks still make."""
    monkeypatch.setenv("MASKSAM_DDP_TIMEOUT_S", "600")
    started = time.monotonic()
    mp.spawn(_diverge_on_ranks, args=(2, _free_port(), str(tmp_path), diverging), nprocs=2, join=True)
    assert time.monotonic() - started < 120
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == expected


def _check_folder(rank: int, world_size: int, port: int, out_dir: str, per_rank: bool) -> None:
    from MaskSAMCore.training.distributed import require_shared_folder

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    context = init_distributed(use_cuda=False)
    folder = Path(out_dir) / (f"node{rank}" if per_rank else "shared") / "model"   # node-local disks: one each
    folder.mkdir(parents=True, exist_ok=True)
    try:
        require_shared_folder(folder, context)
        outcome = "shared"
    except Exception as error:
        outcome = str(error)
    finally:
        shutdown_distributed()
    (Path(out_dir) / f"rank{rank}.txt").write_text(outcome)


@pytest.mark.parametrize("per_rank", [False, True])
def test_several_machines_must_share_the_model_folder(tmp_path, per_rank):
    mp.spawn(_check_folder, args=(2, _free_port(), str(tmp_path), per_rank), nprocs=2, join=True)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    if per_rank:   # every rank fails the same way, so they all stop together
        for outcome in outcomes:
            assert "model is not the same folder for rank(s) 1" in outcome and "filesystem they share" in outcome
    else:
        assert outcomes == ["shared", "shared"]
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]   # the marker is gone


@pytest.mark.parametrize("environment, expected", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE='2' asks for distributed training, but RANK is not set: start it with torchrun"),
    ({"WORLD_SIZE": "two"}, "but WORLD_SIZE is 'two', not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASKSAM_DDP_TIMEOUT_S": "4h"},
     "MASKSAM_DDP_TIMEOUT_S='4h' is not a timeout in seconds: give a number above 0"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASKSAM_DDP_TIMEOUT_S": "1e15"},
     "MASKSAM_DDP_TIMEOUT_S='1e15' is not a timeout in seconds: give a number above 0 and at most 2.592e+06"),
])
def test_a_broken_distributed_environment_is_one_line_before_any_work(tmp_path, monkeypatch, capsys,
                                                                      environment, expected):
    from MaskSAMCore.cli import main

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASKSAM_DDP_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    model_dir = tmp_path / "model"
    assert main(["train", str(tmp_path / "no_dataset"), str(model_dir), "--preset", "tiny", "--device", "cpu"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam: error:")]
    assert len(errors) == 1 and expected in errors[0], errors
    assert not model_dir.exists()


def _rank_0_fails_while_rank_1_waits(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """`masksam` on 2 ranks where rank 0 fails alone (a bug or a disk error that no rank agreed
    on) while rank 1 waits for it in a collective; each rank's stderr goes to a file."""
    import contextlib
    import io

    import torch.distributed as dist

    import MaskSAMCore.cli as cli

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))

    def work(args):
        init_distributed(use_cuda=False)
        try:
            if rank == 0:
                raise OSError(28, "No space left on device", "/data/model/checkpoint_latest.pt")
            dist.all_reduce(torch.ones(1))   # waits for rank 0, which is gone
        finally:
            shutdown_distributed()   # as `run_train` does
        return 0

    cli.resolve_handler = lambda command: work
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli.main(["info"])
    Path(out_dir, f"rank{rank}.txt").write_text(f"{status}\n{err.getvalue()}")


def test_a_rank_whose_peer_failed_says_so_in_one_line(tmp_path, monkeypatch):
    """Rank 0's error line, then one line from rank 1: not gloo's 'Connection closed by peer'
    with a hundred lines of traceback."""
    monkeypatch.setenv("MASKSAM_DDP_TIMEOUT_S", "60")
    mp.spawn(_rank_0_fails_while_rank_1_waits, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in range(2)]
    assert outcomes[0] == ["1", "masksam: error: /data/model/checkpoint_latest.pt: No space left on device"]
    assert outcomes[1] == ["1", "masksam: error: rank 1 stopped: another rank of the job failed or was stopped "
                                "(its message is above)"]
