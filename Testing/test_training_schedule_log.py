"""Schedule, optimiser settings, RNG capture/restore and the training log files."""

import random
import warnings

import numpy as np
import pytest
import torch

from MaskSAMCore.training.rng_state import capture_rng_state, restore_rng_state
from MaskSAMCore.training.schedule import build_optimizer, poly_lr
from MaskSAMCore.training.training_log import EpochRecord, TrainingLog, read_csv


def test_poly_schedule_follows_nnunet():
    assert poly_lr(0.01, 0, 100) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 99, 100) == pytest.approx(0.01 * 0.01 ** 0.9)
    lrs = [poly_lr(1e-3, e, 10) for e in range(10)]
    assert all(a > b > 0 for a, b in zip(lrs, lrs[1:]))


def test_optimizers_have_the_papers_settings_and_skip_frozen_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    sgd = build_optimizer(model.parameters(), "sgd", 0.01)
    group = sgd.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.99, True, 3e-5)
    assert len(group["params"]) == 3
    assert isinstance(build_optimizer(model.parameters(), "adamw", 1e-3), torch.optim.AdamW)


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    torch.save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(9); np.random.seed(9); torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def _record(epoch, dice):
    return EpochRecord(epoch=epoch, train_loss=1.0 / epoch, val_loss=1.5 / epoch,
                       dice={"liver": dice, "spleen": dice / 2}, mean_dice=0.75 * dice,
                       ema_dice=0.5 * dice, lr=0.01 / epoch, epoch_time_s=2.0)


def test_log_rewrites_csv_without_duplicate_epochs_and_plots(tmp_path):
    log = TrainingLog(tmp_path, ["liver", "spleen"])
    for epoch in (1, 2, 3):
        log.add(_record(epoch, 0.1 * epoch))
    log.add(_record(3, 0.9))           # a redone epoch replaces its stale row
    log.add(_record(2, 0.8))           # ...and any later row too
    log.write_csv()
    log.write_plot()
    rows = read_csv(tmp_path / "training_log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "dice_liver", "dice_spleen",
                             "mean_dice", "ema_dice", "lr", "epoch_time_s"]
    assert float(rows[1]["dice_liver"]) == pytest.approx(0.8)
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    restored = TrainingLog(tmp_path, ["liver", "spleen"])
    restored.restore(torch.load(_saved(tmp_path, log.to_state()), weights_only=True))
    assert [r.to_state() for r in restored.records] == log.to_state()


def test_a_missing_matplotlib_leaves_out_the_picture_not_the_training(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)   # what `import matplotlib` then raises on
    log = TrainingLog(tmp_path, ["liver"])
    log.add(_record(1, 0.5))
    log.write_plot()
    log.write_plot()
    assert not (tmp_path / "progress.png").exists()
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ["masksam: matplotlib is not installed, so progress.png is not drawn "
                    "(training_log.csv has the same numbers)"]


def _saved(folder, obj):
    path = folder / "state.pt"
    torch.save(obj, path)
    return path


def test_a_plot_of_hundreds_of_classes_is_drawn_without_warnings(tmp_path, capfd):
    names = [f"structure_{k}" for k in range(300)]
    log = TrainingLog(tmp_path, names)
    log.add(EpochRecord(epoch=1, train_loss=1.0, val_loss=1.5, dice={n: 0.5 for n in names}, mean_dice=0.5,
                        ema_dice=0.5, lr=0.01, epoch_time_s=2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a warning would be printed under the training's progress
        log.write_plot()
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capfd.readouterr().err == ""
