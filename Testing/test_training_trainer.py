"""The trainer: non-finite steps are skipped, divergence is one clear error, every epoch leaves
its checkpoints, log row and machine-readable line."""

import numpy as np
import pytest
import torch

from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import preset
from MaskSAMCore.model_folder import load_checkpoint
from MaskSAMCore.progress import enable_machine_lines, parse_machine_line
from MaskSAMCore.training.losses import MaskSAMLoss
from MaskSAMCore.training.settings import TrainSettings
from MaskSAMCore.training.trainer import Trainer, TrainingDiverged
from MaskSAMCore.training.training_log import read_csv
from MaskSAMCore.training.validation import ValidationCase, Validator

NAMES = ["background", "organ", "lesion"]


def _batch(poison: bool = False):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 1, 4, 64, 64, generator=g)
    seg = (image[:, 0] > 0.8).long() + (image[:, 0] > 1.6).long()
    if poison:
        image[0, 0, 0, 0, 0] = float("nan")
    return image, seg


def _trainer(tmp_path, batches, epochs=2, lr=1e-3):
    torch.manual_seed(0)
    model = build_masksam(preset("tiny", num_classes=3))
    image = np.random.default_rng(1).normal(size=(1, 5, 70, 66)).astype(np.float32)
    validator = Validator([ValidationCase("v", image, (image[0] > 0.8).astype(np.int16))], (4, 64, 64),
                          NAMES, MaskSAMLoss(3, across_ranks=False), torch.device("cpu"))
    settings = TrainSettings(epochs=epochs, iters_per_epoch=2, optimizer="adamw", lr=lr, weights_scope="all")
    return Trainer(model, settings, batches, validator, str(tmp_path), NAMES, torch.device("cpu"))


def test_a_non_finite_step_is_skipped_and_leaves_the_weights_alone(tmp_path):
    trainer = _trainer(tmp_path, batches=None)
    before = {k: v.clone() for k, v in trainer.model.trainable_state_dict().items()}
    assert trainer.train_step(*_batch(poison=True)) is None
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.trainable_state_dict().items())
    assert trainer.train_step(*_batch()) is not None
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.trainable_state_dict().items())


def test_an_epoch_without_a_finite_step_is_one_clear_error(tmp_path):
    trainer = _trainer(tmp_path, batches=lambda epoch: iter([_batch(poison=True)] * 2))
    with pytest.raises(TrainingDiverged, match=r"epoch 1 .*non-finite.*--lr"):
        trainer.fit()


@pytest.mark.parametrize("value, what", [(float("inf"), "weights"), (3e38, "outputs in validation")])
def test_a_network_left_non_finite_by_finite_steps_stops_before_any_checkpoint(tmp_path, value, what):
    """A learning rate far too high: the steps' losses were finite, the weights they left are
    infinite, or finite but so large that every output overflows. Saving that as checkpoint_best
    would give a model that only predicts NaN."""
    def batches(epoch):
        yield _batch()
        next(p for p in trainer.model.parameters() if p.requires_grad).data.fill_(value)
        yield _batch()

    trainer = _trainer(tmp_path, batches=batches)
    with pytest.raises(TrainingDiverged) as raised:
        trainer.fit()
    assert str(raised.value) == (f"training diverged: after epoch 1 the network's {what} are not finite; train again "
                                 "in a new model folder with a lower learning rate (--lr, now 0.001; --resume would "
                                 "keep it)")
    assert list(tmp_path.iterdir()) == []


def test_every_epoch_writes_checkpoints_a_log_row_and_an_epoch_line(tmp_path, capsys):
    trainer = _trainer(tmp_path, batches=lambda epoch: iter([_batch()] * 2), epochs=3)
    enable_machine_lines(True)
    try:
        summary = trainer.fit()
    finally:
        enable_machine_lines(False)
    out = capsys.readouterr().out.splitlines()
    people = [line for line in out if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in people] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "mean Dice" in people[0] and "ETA" in people[0]
    assert any(line.startswith("  Dice: organ ") and ", lesion " in line for line in out)
    lines = [parse_machine_line(l) for l in out]
    epochs = [e for e in lines if e and e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert set(epochs[0]) >= {"epochs", "train_loss", "val_loss", "mean_dice", "dice", "lr", "eta_s", "ema_dice"}
    assert set(epochs[0]["dice"]) == {"organ", "lesion"} and epochs[-1]["eta_s"] == 0
    rows = read_csv(tmp_path / "training_log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "dice_organ", "dice_lesion", "mean_dice",
                             "ema_dice", "lr", "epoch_time_s"]
    # EMA pseudo-Dice: 0.9 old + 0.1 new, and the best checkpoint follows it
    means = [float(r["mean_dice"]) for r in rows]
    assert float(rows[1]["ema_dice"]) == pytest.approx(0.9 * means[0] + 0.1 * means[1], abs=1e-5)
    assert load_checkpoint(tmp_path / "checkpoint_best.pt")["epoch"] == summary["best_epoch"]
    assert load_checkpoint(tmp_path / "checkpoint_latest.pt")["epoch"] == 3
    assert load_checkpoint(tmp_path / "checkpoint_final.pt")["weights_scope"] == "all"
    assert (tmp_path / "progress.png").stat().st_size > 1000


def test_without_machine_progress_a_person_sees_plain_lines_only(tmp_path, capsys):
    _trainer(tmp_path, batches=lambda epoch: iter([_batch()] * 2), epochs=1).fit()
    out = capsys.readouterr().out
    assert "@masksam" not in out and out.startswith("epoch 1/1: train loss ")


def test_validation_cases_are_not_held_in_memory_for_the_whole_training(tmp_path):
    """A validation fold of a CT dataset holds gigabytes: loading it into rank 0's memory for the
    whole run invites the out-of-memory killer. The cases are memory-mapped, and validate alike."""
    import tracemalloc

    from MaskSAMCore.data.store import save_case
    from MaskSAMCore.training.run import load_validation_cases

    rng = np.random.default_rng(2)
    names = [f"case{i}" for i in range(3)]
    for name in names:
        image = rng.normal(size=(1, 24, 128, 128)).astype(np.float32)   # 1.5 MiB each
        labels = ((image[0] > 0.8).astype(np.int16) + (image[0] > 1.6)).astype(np.int16)
        save_case(tmp_path, name, image, labels, np.zeros((0, 4), np.int32), {"case": name})
    tracemalloc.start()
    try:
        cases = load_validation_cases(tmp_path, names)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert sum(c.image.nbytes + c.labels.nbytes for c in cases) > 5 * 2**20
    assert held < 2**20

    image = rng.normal(size=(1, 6, 64, 64)).astype(np.float32)
    save_case(tmp_path, "small", image, (image[0] > 0.8).astype(np.int16), np.zeros((0, 4), np.int32), {})
    mapped = load_validation_cases(tmp_path, ["small"])
    in_memory = [ValidationCase("small", np.array(mapped[0].image), np.array(mapped[0].labels))]
    torch.manual_seed(0)
    model = build_masksam(preset("tiny", num_classes=3))

    def validate(validation_cases):
        torch.manual_seed(0)
        return Validator(validation_cases, (4, 64, 64), NAMES, MaskSAMLoss(3, across_ranks=False),
                         torch.device("cpu")).run(model)

    assert repr(validate(mapped)) == repr(validate(in_memory))   # (repr: NaN equals NaN)


def test_validation_reports_its_progress_case_by_case(capsys):
    """Validating a fold of CTs takes minutes after the train bar reached its epoch's end: the
    Slicer module (machine lines) sees a "validate" stage advance one case at a time."""
    torch.manual_seed(0)
    model = build_masksam(preset("tiny", num_classes=3))
    image = np.random.default_rng(1).normal(size=(1, 5, 70, 66)).astype(np.float32)
    cases = [ValidationCase(name, image, (image[0] > 0.8).astype(np.int16)) for name in ("a", "b", "c")]
    validator = Validator(cases, (4, 64, 64), NAMES, MaskSAMLoss(3, across_ranks=False), torch.device("cpu"))
    enable_machine_lines(True)
    try:
        validator.run(model)
    finally:
        enable_machine_lines(False)
    events = [parse_machine_line(line) for line in capsys.readouterr().out.splitlines()]
    events = [e for e in events if e and e.get("stage") == "validate"]
    assert events[0]["event"] == "stage" and events[0]["total"] == 3
    assert [e["done"] for e in events if e["event"] == "progress"][-1] == 3
