"""`masksam evaluate` on a region dataset (BraTS-like: overlapping regions made of label values),
scored per region as nnU-Net scores region models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_inference_evaluate import GEOMETRY, _report

from MaskSAMCore.cli import main
from MaskSAMCore.data.image_writing import write_label

BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3, "ignore": 4}


def _write_region_pair(pred: Path, gt: Path, name: str):
    """Nested boxes: whole tumor 4x8x10 = 320 voxels holding the core 4x6x8 = 192 holding the
    enhancing tumor 2x4x6 = 48. The prediction is painted as nnU-Net writes region models
    (regions_class_order [1, 2, 3], each region over the one before): the whole tumor one voxel
    too wide (4x8x11 = 352), the core exact, half the enhancing tumor (24)."""
    truth = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    truth[1:5, 1:9, 1:11] = 1
    truth[1:5, 2:8, 2:10] = 2
    truth[2:4, 3:7, 3:9] = 3
    prediction = np.zeros_like(truth)
    prediction[1:5, 1:9, 1:12] = 1
    prediction[1:5, 2:8, 2:10] = 2
    prediction[2:4, 3:7, 3:6] = 3
    write_label(truth, GEOMETRY, gt / f"{name}.nii.gz")
    write_label(prediction, GEOMETRY, pred / f"{name}.nii.gz")
    return truth, prediction


def _region_dataset(tmp_path: Path, labels=None):
    dataset = tmp_path / "Dataset004"
    pred, gt = tmp_path / "pred", dataset / "labelsTs"
    pred.mkdir(), gt.mkdir(parents=True)
    # regions_class_order says how predictions were painted; scoring needs the regions alone.
    (dataset / "dataset.json").write_text(json.dumps({"labels": labels or BRATS_LABELS}))
    return pred, gt


def test_a_region_dataset_is_scored_per_region_as_nnunet_does(tmp_path, capsys):
    """Overlapping regions: each is scored on the voxels of either map holding any of its values,
    so a core painted 2 under an enhancing tumor painted 3 is still the whole core."""
    pred, gt = _region_dataset(tmp_path)
    _write_region_pair(pred, gt, "case_a")
    assert main(["evaluate", str(pred), str(gt)]) == 0
    captured = capsys.readouterr()
    report = json.loads("\n".join(l for l in captured.out.splitlines() if not l.startswith("@masksam ")))
    expected = {"whole tumor": 2 * 320 / (320 + 352), "tumor core": 1.0, "enhancing tumor": 2 * 24 / (24 + 48)}
    assert list(report["per_class"]) == list(expected)
    for region, value in expected.items():
        assert report["per_class"][region]["dice"] == pytest.approx(value)
        assert report["cases"][0]["dice"][region] == pytest.approx(value)
    whole = report["per_class"]["whole tumor"]
    assert whole["region"] == [1, 2, 3] and "label" not in whole
    assert report["per_class"]["enhancing tumor"]["region"] == [3]
    assert report["cases"][0]["hd95_mm"]["tumor core"] == 0.0
    assert report["mean_dice"] == pytest.approx(sum(expected.values()) / 3)
    assert report["cases"][0]["mean_dice"] == pytest.approx(sum(expected.values()) / 3)
    assert report["undeclared_labels"] == {} and "regions" in report["conventions"]
    table = [line.split("  Dice ")[0].strip() for line in captured.err.splitlines() if "  Dice " in line]
    assert table == ["whole tumor", "tumor core", "enhancing tumor", "mean"]


def test_voxels_of_the_ignore_label_count_for_no_region(tmp_path, capsys):
    pred, gt = _region_dataset(tmp_path)
    truth, prediction = _write_region_pair(pred, gt, "case_a")
    truth[0] = 4                       # a slice left unannotated ...
    prediction[0, 1:9, 1:11] = 2       # ... where the model sees a core (and so a whole tumor)
    write_label(truth, GEOMETRY, gt / "case_a.nii.gz")
    write_label(prediction, GEOMETRY, pred / "case_a.nii.gz")
    assert main(["evaluate", str(pred), str(gt)]) == 0
    report = _report(capsys)
    assert list(report["per_class"]) == ["whole tumor", "tumor core", "enhancing tumor"]
    assert report["per_class"]["whole tumor"]["dice"] == pytest.approx(2 * 320 / (320 + 352))
    assert report["per_class"]["tumor core"]["dice"] == 1.0 and report["undeclared_labels"] == {}


def test_a_value_no_region_declares_is_shown_but_left_out_of_the_region_means(tmp_path, capsys):
    pred, gt = _region_dataset(tmp_path)
    _, prediction = _write_region_pair(pred, gt, "case_a")
    prediction[5, 0, 0] = 7            # a value of no region, on background
    write_label(prediction, GEOMETRY, pred / "case_a.nii.gz")
    assert main(["evaluate", str(pred), str(gt)]) == 0
    captured = capsys.readouterr()
    report = json.loads("\n".join(l for l in captured.out.splitlines() if not l.startswith("@masksam ")))
    assert list(report["per_class"]) == ["whole tumor", "tumor core", "enhancing tumor", "label_7"]
    assert report["per_class"]["label_7"]["label"] == 7 and report["per_class"]["label_7"]["dice"] == 0.0
    assert report["undeclared_labels"] == {"7": ["case_a"]}
    regions = ("whole tumor", "tumor core", "enhancing tumor")
    assert report["mean_dice"] == pytest.approx(np.mean([report["per_class"][r]["dice"] for r in regions]))
    warning = [line for line in captured.err.splitlines() if "label 7" in line]
    assert len(warning) == 1 and "is in 1 case(s) (case_a)" in warning[0] and "left out of the means" in warning[0]


@pytest.mark.parametrize("core, said", [
    ([], "region 'tumor core' must be a non-empty list of label values above 0, not []"),
    ([2, "three"], "region 'tumor core' must be a non-empty list of label values above 0"),
    ([2, 3.0], "region 'tumor core' must be a non-empty list of label values above 0"),
    ([3, 2, 1], "regions 'whole tumor' and 'tumor core' hold the same values"),
])
def test_a_badly_formed_region_is_one_line_naming_the_dataset_json(tmp_path, capsys, core, said):
    pred, gt = _region_dataset(tmp_path, {**BRATS_LABELS, "tumor core": core})
    _write_region_pair(pred, gt, "case_a")
    assert main(["evaluate", str(pred), str(gt)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam:")]
    assert len(err) == 1 and "Dataset004/dataset.json: " in err[0] and said in err[0], err


def test_a_region_prediction_scored_without_dataset_json_gets_a_hint_to_give_it(tmp_path, capsys):
    """Regions of values 1-4, 3-4 and 5, painted 1, 3 and 5: scored by value, the ground truth's 2
    and 4 are in no prediction (Dice 0 everywhere). One warning line names them and --dataset-json;
    with it the regions are scored (Dice 1) and nothing is said."""
    from MaskSAMCore.data.regions import region_scheme

    labels = {"background": 0, "solid organs": [1, 2, 3, 4], "kidneys": [3, 4], "aorta": 5}
    scheme = region_scheme(labels, [1, 3, 5])
    truth = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    for value in range(1, 6):
        truth[value - 1, 2:6, 2:6] = value
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    write_label(truth, GEOMETRY, gt / "case_a.nii.gz")
    write_label(scheme.to_output(scheme.to_classes(truth)), GEOMETRY, pred / "case_a.nii.gz")
    assert main(["evaluate", str(pred), str(gt)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam: warning:")]
    assert len(warnings) == 1 and "label value(s) 2, 4 of the ground truth are in no prediction" in warnings[0]
    assert "--dataset-json" in warnings[0]
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": labels, "regions_class_order": [1, 3, 5]}))
    assert main(["evaluate", str(pred), str(gt), "--dataset-json", str(dataset_json)]) == 0
    captured = capsys.readouterr()
    assert "masksam: warning:" not in captured.err
    report = json.loads("\n".join(l for l in captured.out.splitlines() if not l.startswith("@masksam ")))
    assert [entry["dice"] for entry in report["per_class"].values()] == [1.0, 1.0, 1.0]


def test_a_structure_simply_missed_without_dataset_json_gets_no_region_hint(tmp_path, capsys):
    """A missed spleen (background in the prediction) is no sign of a region model: the warning
    names the value, and says nothing of regions or --dataset-json."""
    truth = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    truth[1:3, 2:6, 2:6] = 1
    truth[3:5, 2:6, 2:6] = 2
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    write_label(truth, GEOMETRY, gt / "case_a.nii.gz")
    write_label(np.where(truth == 2, 0, truth).astype(np.uint8), GEOMETRY, pred / "case_a.nii.gz")
    assert main(["evaluate", str(pred), str(gt)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam: warning:")]
    assert warnings == ["masksam: warning: label value(s) 2 of the ground truth are in no prediction (Dice 0)"]
