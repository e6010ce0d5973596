"""Resuming: SIGKILL in the middle of an epoch, then --resume finishes the run with a clean log,
and an interrupted-then-resumed run ends with exactly the weights of an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from MaskSAMCore.atomic import TEMP_MARKER
from MaskSAMCore.data.phantoms import make_phantoms
from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset
from MaskSAMCore.model_folder import ModelFolder, load_checkpoint
from MaskSAMCore.progress import parse_machine_line
from MaskSAMCore.training import checkpoint_io
from MaskSAMCore.training.losses import MaskSAMLoss
from MaskSAMCore.training.settings import TrainSettings
from MaskSAMCore.training.trainer import Trainer
from MaskSAMCore.training.training_log import read_csv
from MaskSAMCore.training.validation import ValidationCase, Validator

EPOCHS = 3


def _train_command(dataset: Path, model_dir: Path, *extra: str) -> list:
    return [sys.executable, "-m", "MaskSAMCore", "--machine-progress", "train", str(dataset), str(model_dir),
            "--preset", "tiny", "--epochs", str(EPOCHS), "--iters-per-epoch", "4", "--fold", "all",
            "--num-workers", "0", *extra]


@pytest.mark.slow
def test_sigkill_during_an_epoch_then_resume(tmp_path):
    dataset = make_phantoms(tmp_path / "ds", cases=3, seed=5, size=(32, 32, 10), progress=False)
    model_dir = tmp_path / "model"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(_train_command(dataset, model_dir), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)
    finished_epochs = 0
    killed = False
    try:
        for line in process.stdout:
            event = parse_machine_line(line) or {}
            if event.get("event") == "epoch":
                finished_epochs = event["epoch"]
            # a training step of epoch 2 has been taken: kill in the middle of the epoch
            elif finished_epochs == 1 and event.get("event") == "progress" and event.get("stage") == "train":
                process.send_signal(signal.SIGKILL)
                killed = True
                break
    finally:
        process.wait(timeout=120)
    assert killed and process.returncode == -signal.SIGKILL
    assert not (model_dir / "checkpoint_final.pt").exists()
    assert [r["epoch"] for r in read_csv(model_dir / "training_log.csv")] == ["1"]

    resumed = subprocess.run(_train_command(dataset, model_dir, "--resume"), capture_output=True, text=True,
                             timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "after epoch 1 of 3" in resumed.stdout
    epochs = [parse_machine_line(l)["epoch"] for l in resumed.stdout.splitlines()
              if (parse_machine_line(l) or {}).get("event") == "epoch"]
    assert epochs == [2, 3]
    train_bar = [e for e in map(parse_machine_line, resumed.stdout.splitlines())
                 if e and e.get("stage") == "train" and e["event"] in ("stage", "progress")]
    assert (train_bar[0]["done"], train_bar[0]["total"]) == (4, 12)   # starts after epoch 1's 4 steps

    rows = read_csv(model_dir / "training_log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]           # every epoch exactly once
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(0.01)
    for which in ("latest", "best", "final"):                        # nothing corrupt: all load
        payload = load_checkpoint(model_dir / f"checkpoint_{which}.pt")
        assert payload["weights"]
    assert load_checkpoint(model_dir / "checkpoint_latest.pt")["epoch"] == EPOCHS
    folder = ModelFolder.load(model_dir)
    assert folder.meta["training"]["finished_epochs"] == EPOCHS
    model = folder.build_model("final")
    assert model.config.num_slices == 4
    assert not [p for p in model_dir.iterdir() if TEMP_MARKER in p.name]
    assert json.loads((model_dir / "plans.json").read_text())["patch_size"] == [4, 64, 64]


def _signal_during_epoch(dataset: Path, model_dir: Path, signum: int, finished: int,
                         cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """`masksam train`, sent `signum` at its first training step after `finished` epochs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(_train_command(dataset, model_dir), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    epochs, sent = 0, False
    try:
        for line in process.stdout:
            event = parse_machine_line(line) or {}
            if event.get("event") == "epoch":
                epochs = event["epoch"]
            elif epochs == finished and event.get("event") == "progress" and event.get("stage") == "train":
                process.send_signal(signum)
                sent = True
                break
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert sent
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_first_epoch_keeps_the_preprocessing(tmp_path, signum):
    dataset = make_phantoms(tmp_path / "ds", cases=3, seed=5, size=(32, 32, 10), progress=False)
    model_dir = tmp_path / "model"
    stopped = _signal_during_epoch(dataset, model_dir, signum, finished=0)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("masksam: cancelled") and "kept the plan and 3 preprocessed case(s)" in last, last
    assert {p.name for p in model_dir.iterdir()} == {"model.json", "plans.json", "dataset.json", "preprocessed"}
    assert len(list((model_dir / "preprocessed").glob("*.npy"))) == 9


def test_a_signal_after_a_checkpoint_says_where_the_training_stands_and_how_to_resume(tmp_path):
    make_phantoms(tmp_path / "ds", cases=3, seed=5, size=(32, 32, 10), progress=False)
    stopped = _signal_during_epoch(Path("ds"), Path("my model"), signal.SIGTERM, finished=1, cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    cancel_lines = [line for line in stopped.stderr.splitlines() if line.startswith("masksam:")]
    assert cancel_lines == ["masksam: cancelled by signal SIGTERM; checkpoint_latest.pt holds epoch 1 of 3; "
                            "continue with masksam train ds 'my model' --resume"]


def _synthetic_batches(epoch):
    g = torch.Generator().manual_seed(1000 + epoch)
    while True:
        image = torch.randn(2, 1, 4, 64, 64, generator=g)
        seg = (image[:, 0] > 0.8).long() + (image[:, 0] > 1.6).long()
        yield image, seg


def _trainer(model_dir, epochs=2):
    torch.manual_seed(0)
    model = build_masksam(preset("tiny", num_classes=3))
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 6, 40, 40)).astype(np.float32)
    cases = [ValidationCase("v", image, (image[0] > 0.8).astype(np.int16))]
    names = ["background", "a", "b"]
    settings = TrainSettings(epochs=epochs, iters_per_epoch=2, weights_scope="all", optimizer="sgd")
    validator = Validator(cases, (4, 64, 64), names, MaskSAMLoss(3), torch.device("cpu"))
    return Trainer(model, settings, _synthetic_batches, validator, str(model_dir), names, torch.device("cpu"))


class _Stop(Exception):
    pass


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path):
    straight = tmp_path / "straight"
    interrupted = tmp_path / "interrupted"
    straight.mkdir()
    interrupted.mkdir()
    _trainer(straight).fit()

    first = _trainer(interrupted)

    def stop_after_first_epoch(trainer):
        raise _Stop()

    first.on_epoch_end = stop_after_first_epoch
    with pytest.raises(_Stop):
        first.fit()
    torch.manual_seed(999)                                   # the resumed process starts elsewhere
    second = _trainer(interrupted)
    second.restore(checkpoint_io.read_for_resume(interrupted))
    assert second.start_epoch == 1
    second.fit()

    a = load_checkpoint(straight / "checkpoint_final.pt")["weights"]
    b = load_checkpoint(interrupted / "checkpoint_final.pt")["weights"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_csv(straight / "training_log.csv")[-1]["train_loss"] == \
        read_csv(interrupted / "training_log.csv")[-1]["train_loss"]


def test_resume_after_a_death_between_last_checkpoint_and_log_restores_the_log(tmp_path):
    """Killed after checkpoint_latest of the last epoch but before training_log.csv: --resume has
    no epoch left to run, and must still leave every epoch in the CSV (and write the final weights)."""
    _trainer(tmp_path).fit()
    csv_path = tmp_path / "training_log.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:-1]))                 # the last epoch's row never written
    (tmp_path / "checkpoint_final.pt").unlink()
    assert [r["epoch"] for r in read_csv(csv_path)] == ["1"]

    resumed = _trainer(tmp_path)
    resumed.restore(checkpoint_io.read_for_resume(tmp_path))
    resumed.fit()
    assert [r["epoch"] for r in read_csv(csv_path)] == ["1", "2"]
    assert load_checkpoint(tmp_path / "checkpoint_final.pt")["weights"]


def test_a_run_resumed_after_its_best_epoch_still_reports_that_epoch(tmp_path):
    """model.json's best_epoch / best_mean_dice (and the "done:" line) come from the checkpoint
    when no later epoch beats the best: they must not turn into null on --resume."""
    before = _trainer(tmp_path, epochs=1).fit()
    assert before["best_epoch"] == 1
    resumed = _trainer(tmp_path, epochs=1)
    resumed.restore(checkpoint_io.read_for_resume(tmp_path))
    after = resumed.fit()
    assert (after["best_epoch"], after["best_mean_dice"]) == (before["best_epoch"], before["best_mean_dice"])


def test_the_resume_checkpoint_carries_the_mixed_precision_loss_scale():
    """A float16 run resumed with the initial scale (65536) would skip steps on overflow until it
    has found its scale again, and would no longer equal an uninterrupted run."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    payload = checkpoint_io.resume_payload(model, "all", 3, optimizer, scaler, [], None, None, None, {}, [])
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(payload["grad_scaler"])
    assert restored.get_scale() == 512.0
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert checkpoint_io.resume_payload(model, "all", 3, optimizer, disabled, [], None, None, None, {},
                                        [])["grad_scaler"] is None


def test_a_death_between_the_epochs_checkpoints_leaves_no_best_of_an_unlogged_epoch(tmp_path, monkeypatch):
    """Killed between the epoch's two checkpoint writes: checkpoint_best.pt must never hold an
    epoch that checkpoint_latest.pt and the log do not have, and --resume gives it the best one."""
    written = []
    save = checkpoint_io.write

    def killed_after_the_first_write(model_dir, which, payload):
        if written:
            raise _Stop()
        save(model_dir, which, payload)
        written.append(which)

    monkeypatch.setattr(checkpoint_io, "write", killed_after_the_first_write)
    with pytest.raises(_Stop):
        _trainer(tmp_path).fit()
    monkeypatch.undo()
    latest = tmp_path / "checkpoint_latest.pt"
    best = tmp_path / "checkpoint_best.pt"
    assert latest.is_file(), "checkpoint_best.pt of an epoch that --resume would train again"
    assert load_checkpoint(latest)["best_epoch"] == 1 and not best.exists()

    resumed = _trainer(tmp_path)
    resumed.restore(checkpoint_io.read_for_resume(tmp_path))
    assert load_checkpoint(best)["epoch"] == 1
    weights = load_checkpoint(latest)["weights"]
    assert all(torch.equal(tensor, weights[name]) for name, tensor in load_checkpoint(best)["weights"].items())
