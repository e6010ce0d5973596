"""The `masksam evaluate` command: pairing files, class names, conventions, refusals (the metrics
themselves: test_inference_metrics.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from MaskSAMCore.cli import main
from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.image_writing import write_label
from MaskSAMCore.inference.metrics import dice, image_diagonal_mm

GEOMETRY = ImageGeometry((12, 10, 6), (0.5, 0.8, 3.0), (10.0, -5.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _write_pair(folder_pred, folder_gt, name, shift):
    truth = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    truth[1:4, 2:7, 3:9] = 1
    truth[4:6, 0:3, 0:4] = 2
    prediction = np.roll(truth, shift, axis=2)
    prediction[prediction == 2] = 0  # class 2 missed
    write_label(truth, GEOMETRY, folder_gt / f"{name}.nii.gz")
    write_label(prediction, GEOMETRY, folder_pred / f"{name}.nrrd")
    return truth, prediction


def test_evaluate_command_pairs_folders_by_name_and_writes_json(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    t1, p1 = _write_pair(pred, gt, "case_a", 0)
    t2, p2 = _write_pair(pred, gt, "case_b", 1)
    write_label(t1, GEOMETRY, gt / "case_c.nii.gz")  # no prediction: listed, not scored
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}}))
    out = tmp_path / "report.json"
    assert main(["evaluate", str(pred), str(gt), "--dataset-json", str(tmp_path / "dataset.json"),
                 "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("@masksam ")]
    assert json.loads("\n".join(printed)) == report
    assert [c["case"] for c in report["cases"]] == ["case_a", "case_b"]
    assert report["unmatched_ground_truth"] == ["case_c"]
    liver_b = dice(p2 == 1, t2 == 1)
    assert report["cases"][0]["dice"] == {"liver": 1.0, "spleen": 0.0, "kidney": None}
    assert report["per_class"]["liver"]["dice"] == pytest.approx((1.0 + liver_b) / 2)
    assert report["per_class"]["spleen"]["dice"] == 0.0
    assert report["per_class"]["kidney"]["dice"] is None and report["per_class"]["kidney"]["cases_defined"] == 0
    assert report["mean_dice"] == pytest.approx(((1.0 + liver_b) / 2 + 0.0) / 2)
    # A shift of one voxel along x (0.5 mm) in case_b; the missed spleen costs the image diagonal.
    assert report["cases"][1]["hd95_mm"]["liver"] == pytest.approx(0.5)
    diagonal = image_diagonal_mm(GEOMETRY.shape_zyx, GEOMETRY.spacing_zyx)
    assert report["cases"][0]["hd95_mm"]["spleen"] == pytest.approx(diagonal)


def test_evaluate_rejects_a_prediction_without_ground_truth_or_on_another_grid(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _write_pair(pred, gt, "case_a", 0)
    write_label(np.zeros(GEOMETRY.shape_zyx, np.uint8), GEOMETRY, pred / "orphan.nii.gz")
    assert main(["evaluate", str(pred), str(gt)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "orphan.nii.gz" in err[0] and "no ground truth" in err[0]
    (pred / "orphan.nii.gz").unlink()
    moved = ImageGeometry(GEOMETRY.size, GEOMETRY.spacing, (11.0, -5.0, 2.0), GEOMETRY.direction)
    write_label(np.zeros(GEOMETRY.shape_zyx, np.uint8), moved, pred / "case_a.nrrd")
    out = tmp_path / "report.json"
    assert main(["evaluate", str(pred), str(gt), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case_a.nrrd" in err[0] and "(origin off by (1, 0, 0) mm = (2, 0, 0) voxels)" in err[0]
    assert not out.exists()
    write_label(np.zeros(GEOMETRY.shape_zyx, np.uint8), GEOMETRY, pred / "case_a.nii.gz")
    assert main(["evaluate", str(pred), str(gt), "--output", str(out)]) == 1  # case_a twice: which one?
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case case_a is there twice (case_a.nii.gz and case_a.nrrd)" in err[0]
    assert not out.exists()


def test_an_origin_shift_far_from_the_world_s_origin_is_told_as_the_shift(tmp_path, capsys):
    """Origins 1.2 m from the world's origin, 0.2 mm apart: to 4 digits both print as -1210."""
    truth = ImageGeometry((12, 10, 6), (0.5, 0.8, 2.5), (-200.3, -180.7, -1210.25), (0, 1, 0, 1, 0, 0, 0, 0, -1))
    moved = ImageGeometry(truth.size, truth.spacing, (-200.3, -180.7, -1210.05), truth.direction)
    write_label(np.zeros(truth.shape_zyx, np.uint8), truth, tmp_path / "gt.nrrd")
    write_label(np.zeros(truth.shape_zyx, np.uint8), moved, tmp_path / "pred.nrrd")
    assert main(["evaluate", str(tmp_path / "pred.nrrd"), str(tmp_path / "gt.nrrd")]) == 1
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.endswith("(origin off by (0, 0, 0.2) mm = (0, 0, -0.08) voxels)"), said


@pytest.mark.parametrize("axes", ["slice axis reversed", "x and y swapped"])
def test_a_label_map_holding_the_same_voxels_in_another_axis_order_scores_as_the_original(tmp_path, capsys, axes):
    """Some converters store a scan's slices last first (the slice axis reversed, the origin on
    the last slice): the same points in space, so the same scores, not a refusal."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _, prediction = _write_pair(pred, gt, "case", 1)
    assert main(["evaluate", str(pred), str(gt)]) == 0
    expected = _report(capsys)["per_class"]
    steps = GEOMETRY.direction_matrix * np.asarray(GEOMETRY.spacing)
    if axes == "slice axis reversed":
        stored, spacing = prediction[::-1], GEOMETRY.spacing
        origin, direction = np.add(GEOMETRY.origin, steps[:, 2] * (prediction.shape[0] - 1)), np.diag([1, 1, -1])
    else:
        stored, spacing = prediction.transpose(0, 2, 1), np.asarray(GEOMETRY.spacing)[[1, 0, 2]]
        origin, direction = GEOMETRY.origin, np.eye(3)[:, [1, 0, 2]]
    moved = ImageGeometry(stored.shape[::-1], spacing, origin, tuple(np.ravel(direction)))
    (pred / "case.nrrd").unlink()
    write_label(np.ascontiguousarray(stored), moved, pred / "case.nrrd")
    assert main(["evaluate", str(pred), str(gt)]) == 0
    assert _report(capsys)["per_class"] == expected


def test_evaluate_names_classes_from_the_dataset_the_ground_truth_lies_in(tmp_path, capsys):
    dataset = tmp_path / "Dataset001"
    pred, gt = tmp_path / "pred", dataset / "labelsTs"
    pred.mkdir(), gt.mkdir(parents=True)
    _write_pair(pred, gt, "case_a", 0)
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    assert main(["evaluate", str(pred / "case_a.nrrd"), str(gt / "case_a.nii.gz")]) == 0
    captured = capsys.readouterr()
    report = json.loads("\n".join(l for l in captured.out.splitlines() if not l.startswith("@masksam ")))
    assert list(report["per_class"]) == ["liver", "spleen"]
    assert "dataset.json" in captured.err
    (dataset / "dataset.json").write_text("{not json")  # unreadable: numbered names, no error
    assert main(["evaluate", str(pred), str(gt)]) == 0
    report = json.loads("\n".join(l for l in capsys.readouterr().out.splitlines() if not l.startswith("@masksam ")))
    assert list(report["per_class"]) == ["label_1", "label_2"]


def test_a_label_value_the_dataset_does_not_declare_is_shown_but_left_out_of_the_means(tmp_path, capsys):
    """A prediction in another label convention (spleen written as 9) must not silently pull the
    dataset's mean Dice down: it is scored as label_9, named in a warning, and not averaged."""
    dataset = tmp_path / "Dataset001"
    pred, gt = tmp_path / "pred", dataset / "labelsTs"
    pred.mkdir(), gt.mkdir(parents=True)
    truth, prediction = _write_pair(pred, gt, "case_a", 0)
    prediction[truth == 2] = 9   # the missed spleen, in another label convention
    write_label(prediction, GEOMETRY, pred / "case_a.nrrd")
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    assert main(["evaluate", str(pred), str(gt)]) == 0
    captured = capsys.readouterr()
    report = json.loads("\n".join(l for l in captured.out.splitlines() if not l.startswith("@masksam ")))
    assert list(report["per_class"]) == ["liver", "spleen", "label_9"]
    assert report["per_class"]["liver"]["dice"] == 1.0 and report["per_class"]["label_9"]["dice"] == 0.0
    assert report["undeclared_labels"] == {"9": ["case_a"]}
    assert report["mean_dice"] == 0.5 and report["cases"][0]["mean_dice"] == 0.5   # liver and spleen only
    assert report["mean_hd95_mm"] == np.mean([report["per_class"][c]["hd95_mm"] for c in ("liver", "spleen")])
    warning = [line for line in captured.err.splitlines() if "label 9" in line]
    assert len(warning) == 1 and "is in 1 case(s) (case_a)" in warning[0] and "left out of the means" in warning[0]


def test_values_declared_inside_regions_count_in_the_means(tmp_path, capsys):
    """BraTS-like dataset.json files name regions (lists of values), not each value: the regions
    are scored, and their values are no undeclared labels."""
    dataset = tmp_path / "Dataset002"
    pred, gt = tmp_path / "pred", dataset / "labelsTs"
    pred.mkdir(), gt.mkdir(parents=True)
    _write_pair(pred, gt, "case_a", 0)
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "core": [2]}}))
    assert main(["evaluate", str(pred), str(gt)]) == 0
    captured = capsys.readouterr()
    report = json.loads("\n".join(l for l in captured.out.splitlines() if not l.startswith("@masksam ")))
    assert report["undeclared_labels"] == {} and "warning" not in captured.err
    # whole: the liver (90 voxels) found, the spleen (24) missed; core: the spleen, missed.
    assert report["mean_dice"] == pytest.approx((2 * 90 / (90 + 90 + 24) + 0.0) / 2)


def test_voxels_of_the_ignore_label_count_for_no_class(tmp_path, capsys):
    """nnU-Net's 'ignore' label marks unannotated voxels: whatever is predicted there is neither
    right nor wrong, and 'ignore' is no class of the report."""
    dataset = tmp_path / "Dataset003"
    pred, gt = tmp_path / "pred", dataset / "labelsTs"
    pred.mkdir(), gt.mkdir(parents=True)
    truth, _ = _write_pair(pred, gt, "case_a", 0)
    truth[1, 2:7, 3:9] = 3            # a slice of the liver left unannotated; predicted as liver
    write_label(truth, GEOMETRY, gt / "case_a.nii.gz")
    (dataset / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "liver": 1, "spleen": 2, "ignore": 3}}))
    assert main(["evaluate", str(pred), str(gt)]) == 0
    report = json.loads("\n".join(l for l in capsys.readouterr().out.splitlines() if not l.startswith("@masksam ")))
    assert list(report["per_class"]) == ["liver", "spleen"]
    assert report["per_class"]["liver"]["dice"] == 1.0 and report["undeclared_labels"] == {}


def test_a_missing_dataset_json_is_named_before_any_scoring(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _write_pair(pred, gt, "case_a", 0)
    assert main(["evaluate", str(pred), str(gt), "--dataset-json", str(tmp_path / "nonex.json")]) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam:")]
    assert said == [f"masksam: error: {tmp_path / 'nonex.json'}: --dataset-json file not found"]
    (tmp_path / "model" / "dataset.json").parent.mkdir()
    (tmp_path / "model" / "dataset.json").write_text("{}")
    assert main(["evaluate", str(pred), str(gt), "--dataset-json", str(tmp_path / "model")]) == 1   # its folder
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam:")]
    assert said == [f"masksam: error: {tmp_path / 'model'}: --dataset-json is a folder, not a dataset.json; "
                    f"give {tmp_path / 'model' / 'dataset.json'}"]


def test_evaluate_refuses_a_report_that_would_overwrite_the_ground_truth(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _write_pair(pred, gt, "case_a", 0)
    truth = next(gt.iterdir())
    before = truth.read_bytes()
    assert main(["evaluate", str(pred), str(gt), "--output", str(truth)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and truth.name in err[0] and "would overwrite an input file" in err[0]
    assert truth.read_bytes() == before
    assert main(["evaluate", str(pred), str(gt), "--output", str(pred)]) == 1
    assert "is a folder; the report needs a file name" in capsys.readouterr().err


def test_evaluate_says_on_screen_which_ground_truths_were_not_scored(tmp_path, capsys):
    """A folder of predictions missing some cases (e.g. `masksam predict` skipped a bad scan)
    is scored over fewer cases: the summary must say so, not only the JSON."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    truth, _ = _write_pair(pred, gt, "case_a", 0)
    for name in ("case_b", "case_c"):
        write_label(truth, GEOMETRY, gt / f"{name}.nii.gz")
    assert main(["evaluate", str(pred), str(gt)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "over 1 case(s)" in err[-2]
    assert "2 ground-truth case(s) have no prediction and were not scored: case_b, case_c" in err[-1]


def test_a_class_absent_from_both_maps_of_a_case_is_left_out_of_its_mean(tmp_path):
    """Without a dataset.json the classes are the values seen in any case; a case where a class is
    in neither map is "both empty" (null), not a Dice of 0 that drags the class mean down."""
    from MaskSAMCore.inference.evaluate import evaluate

    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _write_pair(pred, gt, "case_a", 0)                       # classes 1 and 2 (2 missed)
    only_liver = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    only_liver[1:4, 2:7, 3:9] = 1
    write_label(only_liver, GEOMETRY, gt / "case_b.nii.gz")
    write_label(only_liver, GEOMETRY, pred / "case_b.nii.gz")
    report = evaluate(pred, gt, show_progress=False)
    assert report["cases"][1]["dice"] == {"label_1": 1.0, "label_2": None}
    assert report["cases"][1]["hd95_mm"]["label_2"] is None
    assert report["per_class"]["label_2"]["cases_defined"] == 1
    assert report["per_class"]["label_2"]["dice"] == 0.0    # case_a alone: missed there
    assert report["cases"][1]["mean_dice"] == 1.0


def _pair(pred: Path, gt: Path, name: str, spleen_as=0):
    geometry = ImageGeometry((12, 10, 6), (0.5, 0.8, 3.0), (10.0, -5.0, 2.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    truth = np.zeros(geometry.shape_zyx, np.uint8)
    truth[1:4, 2:7, 3:9] = 1
    truth[4:6, 0:3, 0:4] = 2
    prediction = truth.copy()
    prediction[truth == 2] = spleen_as
    write_label(truth, geometry, gt / f"{name}.nii.gz")
    write_label(prediction, geometry, pred / f"{name}.nii.gz")
    return geometry, truth, prediction


def _report(capsys):
    return json.loads("\n".join(l for l in capsys.readouterr().out.splitlines() if not l.startswith("@masksam ")))


def test_a_case_mean_hd95_leaves_out_undeclared_labels(tmp_path, capsys):
    dataset = tmp_path / "Dataset001"
    pred, gt = tmp_path / "pred", dataset / "labelsTs"
    pred.mkdir(), gt.mkdir(parents=True)
    _pair(pred, gt, "case_a", spleen_as=9)
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    assert main(["evaluate", str(pred), str(gt)]) == 0
    case = _report(capsys)["cases"][0]
    assert case["mean_hd95_mm"] == pytest.approx(np.mean([case["hd95_mm"]["liver"], case["hd95_mm"]["spleen"]]))


def test_an_undeclared_value_does_not_take_the_name_of_a_declared_class(tmp_path, capsys):
    """dataset.json names class 2 "label_9" and the prediction holds an undeclared 9: two
    structures, two names, and the means are over the dataset's classes (1 and 2) alone."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    geometry, truth, prediction = _pair(pred, gt, "case")
    prediction[truth == 2] = 2
    prediction[0, 9, 11] = 9
    write_label(prediction, geometry, pred / "case.nii.gz")
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "label_9": 2}}))
    assert main(["evaluate", str(pred), str(gt), "--dataset-json", str(labels)]) == 0
    report = _report(capsys)
    assert report["per_class"]["label_9"] == {"label": 2, "dice": 1.0, "hd95_mm": 0.0, "cases_defined": 1}
    assert report["per_class"]["label_9 (undeclared)"]["label"] == 9
    assert report["mean_dice"] == 1.0 and report["cases"][0]["mean_dice"] == 1.0
    assert report["undeclared_labels"] == {"9": ["case"]}
    assert main(["evaluate", str(pred), str(gt), "--dataset-json", str(labels)]) == 0
    assert "it is shown as label_9 (undeclared) and left out of the means" in capsys.readouterr().err


def test_hidden_files_in_a_prediction_folder_are_not_cases(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _pair(pred, gt, "case_a")
    shutil.copy(pred / "case_a.nii.gz", pred / "._case_a.nii.gz")        # macOS AppleDouble file
    assert main(["evaluate", str(pred), str(gt)]) == 0
    assert [c["case"] for c in _report(capsys)["cases"]] == ["case_a"]


def test_a_dataset_json_label_that_is_no_number_is_one_line(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _pair(pred, gt, "case_a")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": "one"}}))
    assert main(["evaluate", str(pred), str(gt), "--dataset-json", str(tmp_path / "dataset.json")]) == 1
    assert "dataset.json: cannot read its 'labels'" in capsys.readouterr().err


def test_a_dataset_json_without_labels_says_so(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _pair(pred, gt, "case_a")
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}}))
    assert main(["evaluate", str(pred), str(gt), "--dataset-json", str(tmp_path / "dataset.json")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"masksam: error: {tmp_path / 'dataset.json'}: has no 'labels' (the label names and values, as nnU-Net's "
        "dataset.json gives them)"]


def test_a_dataset_json_with_a_byte_order_mark_names_the_classes(tmp_path, capsys):
    # Windows editors write one; training reads such a dataset.json, so evaluate must too.
    dataset = tmp_path / "Dataset001"
    pred, gt = tmp_path / "pred", dataset / "labelsTs"
    pred.mkdir(), gt.mkdir(parents=True)
    _write_pair(pred, gt, "case_a", 0)
    labels = json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}})
    (dataset / "dataset.json").write_text(labels, encoding="utf-8-sig")
    for given in (["--dataset-json", str(dataset / "dataset.json")], []):   # named, or found beside labelsTs
        assert main(["evaluate", str(pred), str(gt), *given]) == 0
        report = json.loads("\n".join(l for l in capsys.readouterr().out.splitlines() if not l.startswith("@masksam ")))
        assert list(report["per_class"]) == ["liver", "spleen"]


def test_many_unscored_ground_truths_are_counted_not_all_listed(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    geometry, truth, _ = _pair(pred, gt, "case_a")
    for index in range(12):
        write_label(truth, geometry, gt / f"other_{index:02d}.nii.gz")
    assert main(["evaluate", str(pred), str(gt)]) == 0
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith("other_00, other_01, other_02, other_03, other_04, other_05, other_06, other_07, "
                         "other_08, other_09 and 2 more"), last


def test_a_value_predicted_only_where_the_truth_is_ignore_is_not_reported(tmp_path, capsys):
    dataset = tmp_path / "Dataset003"
    pred, gt = tmp_path / "pred", dataset / "labelsTs"
    pred.mkdir(), gt.mkdir(parents=True)
    geometry, truth, prediction = _pair(pred, gt, "case_a")
    truth[0] = 3                      # the first slice left unannotated ...
    prediction[0, 0, 0] = 7           # ... where the prediction holds a value no class has
    write_label(truth, geometry, gt / "case_a.nii.gz")
    write_label(prediction, geometry, pred / "case_a.nii.gz")
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2,
                                                                 "ignore": 3}}))
    assert main(["evaluate", str(pred), str(gt)]) == 0
    report = _report(capsys)
    assert list(report["per_class"]) == ["liver", "spleen"] and report["undeclared_labels"] == {}


def test_a_predicted_ignore_value_is_no_class_of_the_report(tmp_path, capsys):
    """A model may still predict the value dataset.json gives 'ignore': those voxels count for no
    class (a miss where the truth has one), never as a class 'label_3' dragging the mean down."""
    dataset = tmp_path / "Dataset003"
    pred, gt = tmp_path / "pred", dataset / "labelsTs"
    pred.mkdir(), gt.mkdir(parents=True)
    geometry, truth, prediction = _pair(pred, gt, "case_a", spleen_as=2)
    prediction[0, 0, 0] = 3                      # the ignore label's value, on annotated background
    write_label(prediction, geometry, pred / "case_a.nii.gz")
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2,
                                                                 "ignore": 3}}))
    assert main(["evaluate", str(pred), str(gt)]) == 0
    report = _report(capsys)
    assert list(report["per_class"]) == ["liver", "spleen"] and report["mean_dice"] == 1.0


def test_evaluate_pairs_trees_of_label_maps_by_their_path(tmp_path):
    """The tree `predict --all-series` writes (OUTPUT/<series folder>/series_<n>.nii.gz) is scored
    against a ground truth laid out alike; cases are named by their path, hidden folders skipped."""
    truth = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    truth[1:3, 2:6, 2:6] = 1
    for root in ("pred", "gt"):
        write_label(truth, GEOMETRY, tmp_path / root / "PAT1" / "ST1" / "series_3.nii.gz")
        write_label(truth, GEOMETRY, tmp_path / root / "PAT2" / "series_4.nii.gz")
    write_label(np.zeros_like(truth), GEOMETRY, tmp_path / "pred" / ".partial-x" / "series_9.nii.gz")
    out = tmp_path / "report.json"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [c["case"] for c in report["cases"]] == ["PAT1/ST1/series_3", "PAT2/series_4"]
    assert report["mean_dice"] == 1.0
