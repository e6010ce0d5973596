"""The trainer's contract on fast runs of a stand-in network (a few parameters, MaskSAM-shaped
outputs) and a scripted validator: the best checkpoint really the best, skipped steps and
clipping, a resumed run identical to an uninterrupted one also in its log and EMA, and
checkpoints written atomically."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from MaskSAMCore.training import checkpoint_io
from MaskSAMCore.training.settings import TrainSettings
from MaskSAMCore.training.trainer import Trainer
from MaskSAMCore.training.training_log import TrainingLog, read_csv
from MaskSAMCore.training.validation import ValidationResult
from MaskSAMCore.training.weights import LossWeights

NAMES = ["background", "organ", "lesion"]


# -- a stand-in network and a scripted validation for fast trainer runs --------------------------

class _TinyNet(nn.Module):
    """MaskSAM-shaped outputs from a few parameters: per-query class logits, masks linear in the image."""

    def __init__(self, k: int = 3, n: int = 4, nan_gradient: bool = False) -> None:
        super().__init__()
        self.cls = nn.Parameter(0.1 * torch.randn(n, k + 1))
        self.mask_w = nn.Parameter(torch.randn(n))
        self.mask_b = nn.Parameter(0.1 * torch.randn(n))
        self.nan_gradient = nan_gradient
        if nan_gradient:
            self.zero = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, t, h, w = x.shape
        masks = x[:, :1] * self.mask_w.view(1, -1, 1, 1, 1) + self.mask_b.view(1, -1, 1, 1, 1)
        if self.nan_gradient:   # a finite output (0 * sqrt(0)) whose gradient is NaN (0 * inf)
            masks = masks + 0 * torch.sqrt(self.zero)
        return SimpleNamespace(class_logits=self.cls.expand(b, t, -1, -1), mask_logits=masks,
                               aux_mask_logits=None, aux_boxes=None)


class _ScriptedValidator:
    """Validation whose mean Dice per epoch is given (NaN: no class defined)."""

    structures = {"organ": [1], "lesion": [2]}

    def __init__(self, dice):
        self.dice = list(dice)
        self.calls = []

    def run(self, model, epoch=0, max_cases=None, autocast_dtype=None):
        self.calls.append((epoch, max_cases))
        d = self.dice[epoch]
        return ValidationResult(dice={"organ": d, "lesion": math.nan}, mean_dice=d, loss=1.0)


def _batch(epoch, index, poison=False):
    g = torch.Generator().manual_seed(100 * epoch + index)
    image = torch.randn(1, 1, 2, 8, 8, generator=g)
    seg = (image[:, 0] > 0.3).long() + (image[:, 0] > 1.2).long()
    if poison:
        image[0, 0, 0, 0, 0] = float("nan")
    return image, seg


def _batches(epoch):
    index = 0
    while True:
        yield _batch(epoch, index)
        index += 1


def _fast_trainer(model_dir, dice, epochs=None, batches=_batches, model=None, **settings):
    torch.manual_seed(0)
    options = dict(epochs=len(dice) if epochs is None else epochs, iters_per_epoch=2, optimizer="sgd", lr=0.01,
                   weights_scope="all", num_points=16)   # 16 < 8 * 8 pixels: sampled points use the RNG
    options.update(settings)
    trainer = Trainer(model or _TinyNet(), TrainSettings(**options), batches, _ScriptedValidator(dice), str(model_dir),
                      NAMES, torch.device("cpu"))
    return trainer


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr(TrainingLog, "write_plot", lambda self: None)   # seconds each, beside the point here


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- the trainer ----------------------------------------------------------------------------------

def test_the_best_checkpoint_holds_the_weights_of_the_epoch_with_the_highest_ema_dice(tmp_path):
    """Raw Dice peaks at epoch 2, its EMA (nnU-Net's selection) at epoch 4; checkpoint_best must
    hold the weights of epoch 4, and the log the poly learning rate of each epoch."""
    from MaskSAMCore.model_folder import load_checkpoint
    from MaskSAMCore.training.schedule import poly_lr

    trainer = _fast_trainer(tmp_path, [0.5, 0.9, 0.6, 0.6])
    snapshots = {}
    trainer.on_epoch_end = lambda t: snapshots.__setitem__(t.log.records[-1].epoch, _weights(t.model))
    summary = trainer.fit()
    rows = read_csv(tmp_path / "training_log.csv")
    ema = [float(r["ema_dice"]) for r in rows]
    assert ema == pytest.approx([0.5, 0.54, 0.546, 0.5514], abs=1e-6)
    assert summary["best_epoch"] == 4 and summary["best_mean_dice"] == pytest.approx(0.6)
    best = load_checkpoint(tmp_path / "checkpoint_best.pt")
    assert best["epoch"] == 4
    assert all(torch.equal(best["weights"][k], snapshots[4][k]) for k in snapshots[4])
    assert any(not torch.equal(best["weights"][k], snapshots[2][k]) for k in snapshots[2])
    assert [float(r["lr"]) for r in rows] == pytest.approx([poly_lr(0.01, e, 4) for e in range(4)], rel=1e-5)


def test_an_epoch_without_any_defined_dice_counts_as_zero_not_as_nan(tmp_path):
    """A NaN mean Dice (no class in the validated cases) must not poison the EMA for the rest of
    the run, which would keep the first epoch as "best" forever."""
    summary = _fast_trainer(tmp_path, [math.nan, 0.5, 0.6]).fit()
    ema = [float(r["ema_dice"]) for r in read_csv(tmp_path / "training_log.csv")]
    assert ema == pytest.approx([0.0, 0.05, 0.105], abs=1e-6)
    assert summary["best_epoch"] == 3


def test_the_last_epoch_validates_every_case(tmp_path):
    trainer = _fast_trainer(tmp_path, [0.1, 0.2, 0.3], val_cases_per_epoch=1)
    trainer.fit()
    assert trainer.validator.calls == [(0, 1), (1, 1), (2, None)]


def test_a_skipped_step_does_not_dilute_the_logged_training_loss(tmp_path):
    """The epoch's train loss is the mean over the steps that were taken."""
    def poisoned_first(epoch):
        yield _batch(epoch, 0, poison=True)
        yield _batch(epoch, 0)

    # every pixel (no random points): the skipped step leaves nothing behind that the next one sees
    skipped = _fast_trainer(tmp_path / "a", [0.5], batches=poisoned_first, num_points=4096)
    skipped.fit()
    clean = _fast_trainer(tmp_path / "b", [0.5], iters_per_epoch=1, num_points=4096)
    clean.fit()
    a = float(read_csv(tmp_path / "a" / "training_log.csv")[0]["train_loss"])
    b = float(read_csv(tmp_path / "b" / "training_log.csv")[0]["train_loss"])
    assert math.isfinite(a) and a == pytest.approx(b, rel=1e-5)


def test_steps_with_a_finite_loss_but_a_non_finite_gradient_are_skipped_and_reported(tmp_path):
    """Such steps change nothing; an epoch of nothing but them is the "diverged" error, not an
    epoch that silently trained nothing."""
    from MaskSAMCore.training.trainer import TrainingDiverged

    trainer = _fast_trainer(tmp_path, [0.5], model=_TinyNet(nan_gradient=True))
    before = _weights(trainer.model)
    assert trainer.train_step(*_batch(0, 0)) is None
    assert all(torch.equal(v, before[k]) for k, v in _weights(trainer.model).items())
    with pytest.raises(TrainingDiverged):
        trainer.fit()


def test_a_step_applies_gradients_clipped_to_norm_12(tmp_path):
    """nnU-Net's clipping: a huge loss moves the weights no further than a gradient of norm 12."""
    big = LossWeights(**{k: 1000.0 * v for k, v in LossWeights().to_dict().items()})
    trainer = _fast_trainer(tmp_path, [0.5], loss_weights=big)
    assert trainer.train_step(*_batch(0, 0)) is not None
    norm = torch.norm(torch.stack([p.grad.norm() for p in trainer.trainable]))
    assert float(norm) == pytest.approx(12.0, rel=1e-4)


class _Stop(Exception):
    pass


def test_a_resumed_run_logs_and_selects_exactly_as_an_uninterrupted_one(tmp_path):
    """Besides the weights: the EMA, the best epoch, checkpoint_best and every log row (only the
    times may differ). The network draws random points every step, so every RNG must be restored."""
    from MaskSAMCore.model_folder import load_checkpoint

    dice = [0.9, 0.1, 0.6, 0.6]                              # the best EMA is the one before the stop
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    summary = _fast_trainer(straight, dice).fit()

    first = _fast_trainer(interrupted, dice)

    def stop(trainer):
        if trainer.log.records[-1].epoch == 1:
            raise _Stop()

    first.on_epoch_end = stop
    with pytest.raises(_Stop):
        first.fit()
    torch.manual_seed(999)                                   # the resumed process starts elsewhere
    np.random.seed(999)
    second = _fast_trainer(interrupted, dice)
    second.restore(checkpoint_io.read_for_resume(interrupted))
    resumed = second.fit()

    def rows(folder):
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in read_csv(folder / "training_log.csv")]

    assert rows(interrupted) == rows(straight)
    assert (resumed["best_epoch"], resumed["best_ema_dice"]) == (summary["best_epoch"], summary["best_ema_dice"])
    for which in ("best", "final"):
        a = load_checkpoint(straight / f"checkpoint_{which}.pt")
        b = load_checkpoint(interrupted / f"checkpoint_{which}.pt")
        assert a["epoch"] == b["epoch"]
        assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """A run killed (or out of disk) while writing checkpoint_latest must still be resumable from
    the previous one: the file is replaced only once complete."""
    from MaskSAMCore.atomic import TEMP_MARKER
    from MaskSAMCore.model_folder import load_checkpoint

    model = nn.Linear(2, 2)
    checkpoint_io.write(tmp_path, "latest", checkpoint_io.weights_payload(model, "all", 1))

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(RuntimeError, match="killed while writing"):
        checkpoint_io.write(tmp_path, "latest", checkpoint_io.weights_payload(model, "all", 2))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint_latest.pt")["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if TEMP_MARKER in p.name]


def test_a_checkpoint_without_the_training_state_is_not_resumed(tmp_path):
    """checkpoint_final copied over checkpoint_latest must be one clear error, not a KeyError later."""
    from MaskSAMCore.errors import CheckpointError

    checkpoint_io.write(tmp_path, "latest", checkpoint_io.weights_payload(nn.Linear(2, 2), "all", 3))
    with pytest.raises(CheckpointError, match="not a resumable training checkpoint"):
        checkpoint_io.read_for_resume(tmp_path)
