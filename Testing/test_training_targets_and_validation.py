"""What training computes and a user would notice when wrong (pinned after mutation testing): targets
paired with the right slices, mask losses read where the predictions are, the official optimiser
and loss settings, pooled validation Dice, nnU-Net's folds, resume options and the training log."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from MaskSAMCore.training.losses import MaskSAMLoss
from MaskSAMCore.training.settings import TrainSettings
from MaskSAMCore.training.training_log import EpochRecord, TrainingLog, read_csv
from MaskSAMCore.training.validation import ValidationCase, Validator
from MaskSAMCore.training.weights import LossWeights

NAMES = ["background", "organ", "lesion"]


# -- targets and losses ---------------------------------------------------------------------------

def test_each_slice_target_comes_from_its_own_batch_element_and_slice():
    """Predictions are addressed batch-major (s = b * T + t): a target built time-major would be
    paired with another patch's prediction, which a batch of one never shows."""
    from MaskSAMCore.training.targets import build_targets

    seg = torch.zeros(2, 2, 4, 4, dtype=torch.long)
    seg[0, 1, 1, 1] = 1            # patch 0, slice 1: s = 1
    seg[1, 0, 2, 2] = 2            # patch 1, slice 0: s = 2
    targets = build_targets(seg, num_classes=3)
    assert [c.tolist() for c in targets.classes] == [[0], [0, 1], [0, 2], [0]]


@pytest.mark.parametrize("value", [3, -1])
def test_a_label_just_outside_the_classes_is_refused(value):
    """A label equal to K (or negative) would silently have no target at all."""
    from MaskSAMCore.training.targets import build_targets

    seg = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    seg[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        build_targets(seg, num_classes=3)


def test_perfect_predictions_from_any_queries_cost_almost_nothing():
    """Which query predicts which class is the matcher's business: masks and boxes of matched
    queries must be compared with the ground truth of their *class*, not of the query's index."""
    from MaskSAMCore.training.targets import build_targets

    k, n, h, w = 3, 6, 24, 24
    seg = torch.zeros(1, 2, h, w, dtype=torch.long)
    seg[0, 0, 3:12, 4:15] = 1
    seg[0, 0, 14:20, 2:22] = 2
    seg[0, 1, 5:18, 5:18] = 2
    targets = build_targets(seg, k)
    query_of = {0: 5, 1: 3, 2: 1}                                      # class -> query
    mask_logits = torch.full((1, n, 2, h, w), -30.0)
    class_logits = torch.full((1, 2, n, k + 1), -30.0)
    class_logits[..., k] = 30.0
    boxes = torch.zeros(1, 2, n, 4)
    for t in range(2):
        for c in targets.classes[t].tolist():
            q = query_of[c]
            mask_logits[0, q, t][seg[0, t] == c] = 30.0
            class_logits[0, t, q] = -30.0
            class_logits[0, t, q, c] = 30.0
            boxes[0, t, q] = targets.boxes[t, c]
    out = SimpleNamespace(class_logits=class_logits, mask_logits=mask_logits,
                          aux_mask_logits=mask_logits.clone(), aux_boxes=boxes)
    result = MaskSAMLoss(num_classes=k, num_points=4096)(out, seg)
    assert result.num_targets == 5
    assert float(result.total) < 1e-3, result.terms


def test_importance_sampled_targets_are_read_where_the_predictions_are_read():
    """On patches larger than the point budget (every real patch), the mask loss compares the
    prediction and the target at the *same* points: a prediction that is an affine function of
    the target must stay that function at the sampled points."""
    from MaskSAMCore.training.point_sampling import mask_points

    target = torch.zeros(2, 96, 80)
    target[0, 10:40, 50:78] = 1.0                                      # not symmetric in x and y
    target[1, 60:90, 5:30] = 1.0
    pred = 20.0 * target - 10.0
    p, t, _ = mask_points(pred, target, num_points=500, oversample=2.0, importance=0.75)
    assert p.shape == t.shape == (2, 500)
    torch.testing.assert_close(p, 20.0 * t - 10.0, atol=1e-4, rtol=0)
    assert 0 < float(t.mean()) < 1                                     # both sides of the edges seen


# -- optimiser, schedule and loss settings --------------------------------------------------------

def test_adamw_has_the_official_release_settings():
    """--optimizer adamw: lr 1e-3 and decoupled weight decay 0.01 (schedule.py's docstring)."""
    from MaskSAMCore.cli import build_parser, train_arguments
    from MaskSAMCore.training.run import settings_from_arguments
    from MaskSAMCore.training.schedule import build_optimizer

    model = nn.Linear(3, 2)
    group = build_optimizer(model.parameters(), "adamw", 1e-3).param_groups[0]
    assert group["weight_decay"] == pytest.approx(0.01)
    settings = settings_from_arguments(train_arguments(build_parser().parse_args(["train", "d", "m", "--optimizer",
                                                                                "adamw"])))
    assert (settings.optimizer, settings.lr) == ("adamw", pytest.approx(1e-3))


def test_default_loss_weights_are_the_documented_ones_and_survive_a_checkpoint():
    """The defaults were chosen by experiment (weights.py); a resumed run reads its weights back
    from the settings stored in checkpoint_latest."""
    assert LossWeights().to_dict() == {"cls": 2.0, "no_object": 0.1, "mask_bce": 5.0, "mask_dice": 5.0,
                                       "aux_mask_bce": 2.0, "aux_mask_dice": 2.0, "box_l1": 0.5,
                                       "box_giou": 0.2}
    custom = TrainSettings(loss_weights=LossWeights(cls=1.5, no_object=0.3, mask_dice=7.0))
    assert TrainSettings.from_dict(custom.to_dict()).loss_weights == custom.loss_weights


# -- validation -----------------------------------------------------------------------------------

class _LabelEcho(nn.Module):
    """Predicts, for every voxel, the label written in image channel 0."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, t, h, w = x.shape
        return SimpleNamespace(class_logits=torch.zeros(b, t, 2, 4), mask_logits=x[:, :1].expand(b, 2, t, h, w),
                               aux_mask_logits=None, aux_boxes=None, labels=x[:, 0].round().long())

    @staticmethod
    def semantic(output):
        return F.one_hot(output.labels, 3).permute(0, 4, 1, 2, 3).float()


def test_validation_dice_is_pooled_over_cases_and_leaves_out_undefined_classes():
    """nnU-Net's pseudo-Dice: TP/FP/FN summed over all cases, then 2TP / (2TP + FP + FN); a class
    in no case and never predicted is NaN and not part of the mean; the loss is the mean over windows."""
    truth_a = np.zeros((2, 4, 4), np.int16)
    truth_a[0, :2, :] = 1                                      # 8 organ voxels
    pred_a = np.zeros((2, 4, 4), np.float32)
    pred_a[0, :2, :3] = 1                                      # 6 of them found...
    pred_a[1, 0, :2] = 1                                       # ...and 2 false positives
    truth_b = np.zeros((2, 4, 4), np.int16)
    truth_b[1, 3, 2:] = 1                                      # 2 organ voxels, all missed
    pred_b = np.zeros((2, 4, 4), np.float32)
    cases = [ValidationCase("a", pred_a[None], truth_a), ValidationCase("b", pred_b[None], truth_b)]
    criterion = MaskSAMLoss(3, across_ranks=False)
    model = _LabelEcho()
    result = Validator(cases, (2, 4, 4), NAMES, criterion, torch.device("cpu")).run(model)
    assert result.dice["organ"] == pytest.approx(2 * 6 / (2 * 6 + 2 + 4))    # 0.667; per-case mean: 0.375
    assert math.isnan(result.dice["lesion"])
    assert result.mean_dice == pytest.approx(result.dice["organ"])
    losses = [float(criterion(model(torch.from_numpy(c.image[None])), torch.from_numpy(c.labels[None].astype(np.int64))
                              ).total) for c in cases]
    assert result.loss == pytest.approx(np.mean(losses), rel=1e-5)


def test_windows_without_any_annotated_voxel_leave_the_validation_loss_alone():
    """Sparse annotations: a validation case nobody labelled says nothing about the loss (a 0 in
    the mean would make the loss look better the more of the data is unannotated)."""
    truth = np.zeros((2, 4, 4), np.int16)
    truth[0, :2, :] = 1
    unannotated = np.full((2, 4, 4), 3, np.int16)              # 3 = the ignore label of 3 classes
    cases = [ValidationCase("a", truth[None].astype(np.float32), truth),
             ValidationCase("b", np.zeros((1, 2, 4, 4), np.float32), unannotated)]
    criterion = MaskSAMLoss(3, across_ranks=False, ignore_label=3)
    model = _LabelEcho()
    result = Validator(cases, (2, 4, 4), NAMES, criterion, torch.device("cpu")).run(model)
    alone = float(criterion(model(torch.from_numpy(cases[0].image[None])),
                            torch.from_numpy(truth[None].astype(np.int64))).total)
    assert alone > 0.1 and result.loss == pytest.approx(alone, rel=1e-5)
    assert result.dice["organ"] == 1.0
    assert math.isnan(Validator(cases[1:], (2, 4, 4), NAMES, criterion, torch.device("cpu")).run(model).loss)


def test_a_window_with_some_annotated_voxels_keeps_its_validation_loss():
    """A case drawn on one of its slices: its window holds unannotated voxels beside the drawn
    ones, and still counts in the loss (over the drawn voxels alone)."""
    truth = np.full((2, 4, 4), 3, np.int16)                    # slice 1 unannotated (3 = ignore)
    truth[0] = 0
    truth[0, :2, :] = 1
    image = np.where(truth == 3, 0, truth).astype(np.float32)[None]
    criterion = MaskSAMLoss(3, across_ranks=False, ignore_label=3)
    model = _LabelEcho()
    result = Validator([ValidationCase("a", image, truth)], (2, 4, 4), NAMES, criterion, torch.device("cpu")).run(model)
    seg = torch.from_numpy(truth[None].astype(np.int64))
    expected = float(criterion(model(torch.from_numpy(image[None])), seg).total)
    assert math.isfinite(result.loss) and result.loss == pytest.approx(expected, rel=1e-5)


def test_a_case_smaller_than_the_patch_is_padded_with_background_for_the_validation_loss():
    image = np.zeros((1, 1, 3, 3), np.float32)
    image[0, 0, 1, 1] = 1
    labels = image[0].astype(np.int16)
    criterion = MaskSAMLoss(3, across_ranks=False)
    model = _LabelEcho()
    result = Validator([ValidationCase("small", image, labels)], (2, 4, 4), NAMES, criterion,
                       torch.device("cpu")).run(model)
    padded_image = np.zeros((1, 1, 2, 4, 4), np.float32)
    padded_image[0, :, :1, :3, :3] = image
    padded_labels = torch.from_numpy(padded_image[:, 0].astype(np.int64))
    assert result.loss == pytest.approx(float(criterion(model(torch.from_numpy(padded_image)), padded_labels).total),
                                        rel=1e-5)
    assert result.dice["organ"] == 1.0


def test_validating_a_few_cases_per_epoch_reaches_every_case():
    cases = [ValidationCase(name, np.zeros((1, 2, 4, 4), np.float32), np.zeros((2, 4, 4), np.int16))
             for name in "abcde"]
    validator = Validator(cases, (2, 4, 4), NAMES, MaskSAMLoss(3, across_ranks=False), torch.device("cpu"))
    seen = [c.name for epoch in range(3) for c in validator.select(epoch, 2)]
    assert set(seen) == set("abcde")


# -- folds ----------------------------------------------------------------------------------------

def test_folds_are_nnunets_for_the_same_case_names():
    """splits.json equals nnU-Net v2's default split (KFold(5, shuffle=True, random_state=12345)
    over the sorted names), so results can be compared fold by fold with nnU-Net baselines."""
    from MaskSAMCore.training.splits import make_splits

    names = [f"case_{i:02d}" for i in range(12)]
    assert [f["val"] for f in make_splits(names)] == [
        ["case_00", "case_03", "case_08"], ["case_07", "case_10", "case_11"], ["case_06", "case_09"],
        ["case_01", "case_04"], ["case_02", "case_05"]]


def test_fold_k_trains_and_validates_on_the_cases_of_fold_k():
    from MaskSAMCore.training.splits import make_splits, select_fold

    names = [f"case_{i:02d}" for i in range(12)]
    folds = make_splits(names)
    for k in range(5):
        train, val = select_fold(folds, str(k), names)
        assert (train, val) == (folds[k]["train"], folds[k]["val"])


# -- resume options and the log -------------------------------------------------------------------

# a tiny run's own values, as `run._run_values` gives them
RUN_VALUES = {"preset": "tiny", "iters_per_epoch": 5, "batch_size": 2, "optimizer": "sgd", "lr": 0.01,
              "seed": 12345, "fold": "0", "no_amp": False, "random_init": True, "val_cases_per_epoch": "all"}


@pytest.mark.parametrize("option, value, said", [("--fold", "1", "--fold 1 (the run's 0)"),
                                                 ("--optimizer", "adamw", "--optimizer adamw (the run's sgd)"),
                                                 ("--lr", "0.1", "--lr 0.1 (the run's 0.01)"),
                                                 ("--seed", "3", "--seed 3 (the run's 12345)"),
                                                 ("--batch-size", "4", "--batch-size 4 (the run's 2)"),
                                                 ("--val-cases-per-epoch", "2",
                                                  "--val-cases-per-epoch 2 (the run's all)"),
                                                 ("--iters-per-epoch", "10", "--iters-per-epoch 10 (the run's 5)"),
                                                 ("--preset", "vit_l", "--preset vit_l (the run's tiny)"),
                                                 ("--no-amp", None, "--no-amp")])
def test_every_run_option_given_with_resume_is_said_to_be_ignored(option, value, said):
    from MaskSAMCore.cli import build_parser, train_arguments
    from MaskSAMCore.training.resume_checks import ignored_options

    args = build_parser().parse_args(["train", "d", "m", "--resume", option] + ([value] if value else []))
    assert ignored_options(train_arguments(args), RUN_VALUES) == [said]
    # --epochs is the one run option a resumed run takes (its new length)
    epochs = build_parser().parse_args(["train", "d", "m", "--resume", "--epochs", "7"])
    assert ignored_options(train_arguments(epochs), RUN_VALUES) == []


def test_a_resume_option_is_judged_against_the_run_not_the_default():
    """`--preset vit_b` (the default) on a tiny run is ignored and said to be; an option repeating
    the run's own value is no conflict; an option not given is no request."""
    from MaskSAMCore.cli import build_parser, train_arguments
    from MaskSAMCore.training.resume_checks import ignored_options

    def ignored(*options: str) -> list:
        return ignored_options(train_arguments(build_parser().parse_args(["train", "d", "m", "--resume", *options])),
                               RUN_VALUES)

    assert ignored("--preset", "vit_b", "--seed", "12345") == ["--preset vit_b (the run's tiny)"]
    assert ignored("--preset", "tiny", "--random-init", "--iters-per-epoch", "5") == []
    assert ignored() == []   # the run's tiny preset and 5 iterations differ from the defaults: not asked


def test_the_cases_of_a_fold_all_run_survive_a_preprocessing_killed_midway(tmp_path):
    """--fold all has no splits.json: the run's cases come from preprocessed/. A temporary left
    there by a killed write is not a case, and a case whose properties were being rewritten (its
    .json removed first) still is; else every later --resume is refused."""
    from MaskSAMCore.training.resume_checks import started_cases

    pre = tmp_path / "preprocessed"
    pre.mkdir()
    for name in ("phantom_000", "phantom_001"):
        (pre / f"{name}.json").write_text("{}")
        (pre / f"{name}_seg.npy").write_bytes(b"")
    (pre / ".phantom_001.partial-k1ll3d.json").write_text("{")
    assert started_cases(tmp_path) == {"phantom_000", "phantom_001"}
    (pre / "phantom_001.json").unlink()
    assert started_cases(tmp_path) == {"phantom_000", "phantom_001"}


def test_the_epoch_line_and_the_csv_show_the_ema_and_keep_nan_and_precision(tmp_path):
    record = EpochRecord(epoch=2, train_loss=0.8123456, val_loss=0.7, dice={"organ": 0.9, "lesion": math.nan},
                         mean_dice=0.9, ema_dice=0.512, lr=0.00123456, epoch_time_s=1.0)
    assert "mean Dice 0.900 (EMA 0.512)" in record.describe(10, 8.0)
    log = TrainingLog(tmp_path, ["organ", "lesion"])
    log.add(record)
    log.write_csv()
    row = read_csv(tmp_path / "training_log.csv")[0]
    assert row["dice_lesion"] == "nan"
    assert float(row["lr"]) == pytest.approx(0.00123456, rel=1e-5)
    assert float(row["train_loss"]) == pytest.approx(0.8123456, rel=1e-5)
