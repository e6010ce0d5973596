"""Sparse annotations: nnU-Net's ``ignore`` label marks voxels nobody labelled.

A dataset.json may declare ``"ignore": K`` (one above the last class). Such voxels are no class:
the model keeps K outputs, planning and foreground sampling leave them out, and training judges
nothing there - no mask loss at an unannotated pixel, no "no object" claim for a slice that is not
fully annotated, no box learnt from a slice whose structures may reach into unannotated pixels,
no validation count. These tests change the predictions only where the rules say they must not
matter, and check that the loss does not move (and, as a control, that it does elsewhere).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from MaskSAMCore.data.dataset import load_raw_dataset
from MaskSAMCore.data.image_io import read_image, read_label
from MaskSAMCore.data.image_writing import write_image, write_label
from MaskSAMCore.data.planning import dataset_fingerprint
from MaskSAMCore.data.preprocess_runner import class_locations
from MaskSAMCore.data.preprocessing import plan_hash
from MaskSAMCore.errors import DatasetError, ModelFolderError
from MaskSAMCore.training.losses import MaskSAMLoss
from MaskSAMCore.training.matcher import HungarianMatcher
from MaskSAMCore.training.slice_view import SlicePredictions
from MaskSAMCore.training.targets import build_targets
from MaskSAMCore.training.validation import confusion_matrix, structure_counts

IGNORE = 6   # the phantoms have background + 5 structures


# -- the dataset ------------------------------------------------------------------------------

@pytest.fixture
def sparse_dataset(phantom_dataset: Path, tmp_path: Path) -> Path:
    """The phantoms with 'ignore' declared and the upper half of every case's slices unannotated."""
    root = Path(shutil.copytree(phantom_dataset, tmp_path / "Dataset002_Sparse"))
    set_labels(root, ignore=IGNORE)
    for label_file in sorted((root / "labelsTr").glob("*.nii.gz")):
        labels, geometry = read_label(label_file)
        labels[labels.shape[0] // 2:] = IGNORE
        write_label(labels, geometry, label_file)
    return root


def set_labels(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {**meta["labels"], **changes}
    (root / "dataset.json").write_text(json.dumps(meta))


def load_error(root: Path) -> str:
    with pytest.raises(DatasetError) as info:
        load_raw_dataset(root, progress=False)
    return str(info.value)


def test_the_ignore_label_is_no_class_of_the_dataset(sparse_dataset):
    raw = load_raw_dataset(sparse_dataset, progress=False)
    assert raw.ignore_label == IGNORE
    assert raw.class_names == ["background", "liver", "spleen", "kidney_left", "kidney_right", "aorta"]
    assert raw.num_classes == 6


@pytest.mark.parametrize("value", [9, 3, 0])
def test_an_ignore_label_that_is_not_one_above_the_last_class_is_refused(sparse_dataset, value):
    set_labels(sparse_dataset, ignore=value)
    message = load_error(sparse_dataset)
    assert "dataset.json: label 'ignore' (unannotated voxels) must have the highest value, one above " \
           f"the last class (6), not {value}" in message


def test_labels_of_nothing_but_ignore_are_refused_in_one_line(sparse_dataset):
    meta = json.loads((sparse_dataset / "dataset.json").read_text())
    meta["labels"] = {"ignore": 0}
    (sparse_dataset / "dataset.json").write_text(json.dumps(meta))
    assert "labels must name value 0 'background'" in load_error(sparse_dataset)


def test_label_values_beyond_the_ignore_label_are_still_refused(sparse_dataset):
    label_file = sparse_dataset / "labelsTr" / "phantom_001.nii.gz"
    labels, geometry = read_label(label_file)
    labels[0, 0, 0] = IGNORE + 1
    write_label(labels, geometry, label_file)
    assert "has value(s) 7 not declared in dataset.json labels" in load_error(sparse_dataset)


def test_a_dataset_of_background_and_unannotated_voxels_only_is_refused(sparse_dataset):
    for label_file in sorted((sparse_dataset / "labelsTr").glob("*.nii.gz")):
        labels, geometry = read_label(label_file)
        write_label(np.where(labels > 0, IGNORE, 0).astype(labels.dtype), geometry, label_file)
    assert "no label map in labelsTr holds any structure (every voxel is background 0 or unannotated " \
        f"('ignore' {IGNORE})); there is nothing to learn" in load_error(sparse_dataset)


def test_a_dataset_of_unannotated_voxels_only_is_not_called_background(sparse_dataset):
    for label_file in sorted((sparse_dataset / "labelsTr").glob("*.nii.gz")):
        labels, geometry = read_label(label_file)
        write_label(np.full_like(labels, IGNORE), geometry, label_file)
    error = load_error(sparse_dataset)
    assert f"holds any structure (every voxel is unannotated ('ignore' {IGNORE}));" in error
    assert "background" not in error


def test_make_phantoms_writes_sparse_training_labels_and_complete_test_labels(tmp_path):
    from MaskSAMCore.cli import main
    from MaskSAMCore.data.phantoms import phantom_case

    root = tmp_path / "sparse"
    assert main(["make-phantoms", str(root), "--cases", "2", "--test-cases", "1", "--seed", "4",
                 "--annotate-every", "3"]) == 0
    raw = load_raw_dataset(root, progress=False)
    assert raw.ignore_label == IGNORE and raw.num_classes == 6
    labels, _ = read_label(root / "labelsTr" / "phantom_001.nii.gz")
    _, complete, _ = phantom_case(4, "train", 1)
    annotated = [z for z in range(labels.shape[0]) if (labels[z] != IGNORE).any()]
    assert annotated == list(range(1, labels.shape[0], 3))
    np.testing.assert_array_equal(labels[annotated], complete[annotated])
    test_labels, _ = read_label(root / "labelsTs" / "phantom_test_000.nii.gz")
    np.testing.assert_array_equal(test_labels, phantom_case(4, "test", 0)[1])


def test_make_phantoms_annotates_a_slice_of_a_case_thinner_than_annotate_every(tmp_path):
    """--annotate-every far above a case's depth: its middle slice stays annotated (with organs), so
    the dataset trains instead of holding nothing but unannotated voxels."""
    from MaskSAMCore.cli import main
    from MaskSAMCore.data.phantoms import phantom_case

    root = tmp_path / "sparse"
    assert main(["make-phantoms", str(root), "--cases", "2", "--seed", "4", "--annotate-every", "1000"]) == 0
    load_raw_dataset(root, progress=False)   # the check `masksam train` runs first
    for index in range(2):
        labels, _ = read_label(root / "labelsTr" / f"phantom_{index:03d}.nii.gz")
        middle = labels.shape[0] // 2
        assert [z for z in range(labels.shape[0]) if (labels[z] != IGNORE).any()] == [middle]
        np.testing.assert_array_equal(labels[middle], phantom_case(4, "train", index)[1][middle])
        assert (labels[middle] > 0).any()


def test_ct_statistics_come_from_structures_not_from_unannotated_voxels(sparse_dataset):
    """The CT normalisation is planned on foreground intensities: unannotated voxels (here made
    implausibly bright) must not reach them."""
    for case in sorted((sparse_dataset / "imagesTr").glob("*_0000.nii.gz")):
        image, geometry = read_image(case)
        labels, _ = read_label(sparse_dataset / "labelsTr" / case.name.replace("_0000", ""))
        write_image(np.where(labels == IGNORE, 5000.0, image[0]).astype(np.float32), geometry, case)
    raw = load_raw_dataset(sparse_dataset, progress=False)
    samples = dataset_fingerprint(raw, progress=False)["foreground"][0]
    assert samples.size > 0 and samples.max() < 5000


def test_foreground_sampling_never_centres_on_unannotated_voxels():
    seg = np.zeros((4, 8, 8), dtype=np.int16)
    seg[0, :2, :2] = 1
    seg[1:] = IGNORE
    locations = class_locations(seg, seed=0, ignore_label=IGNORE)
    assert set(locations[:, 0].tolist()) == {1} and len(locations) == 4
    assert IGNORE in class_locations(seg, seed=0)[:, 0]   # (without the label, it is a class)


def test_cached_preprocessing_of_a_plan_without_ignore_label_is_not_reused():
    plan = {"target_spacing": [1, 1, 1], "transpose_forward": [0, 1, 2]}
    assert plan_hash({**plan, "ignore_label": IGNORE}) != plan_hash(plan)
    assert plan_hash({**plan, "ignore_label": None}) == plan_hash(plan)


# -- targets, matching and losses ---------------------------------------------------------------

K, QUERIES = 3, 5
UNANNOTATED = K   # the ignore label of these 3-class toy patches


def toy_patch() -> torch.Tensor:
    """(1, 3, 12, 12): slice 0 fully annotated, slice 1 half annotated (class 2 runs into the
    unannotated half), slice 2 not annotated at all."""
    seg = torch.zeros(1, 3, 12, 12, dtype=torch.long)
    seg[0, 0, 2:6, 2:8] = 1
    seg[0, 0, 7:11, 3:10] = 2
    seg[0, 1, 1:10, 2:10] = 2
    seg[0, 1, :, 6:] = UNANNOTATED
    seg[0, 2] = UNANNOTATED
    return seg


def random_output(seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(class_logits=torch.randn(1, 3, QUERIES, K + 1, generator=g),
                           mask_logits=torch.randn(1, QUERIES, 3, 12, 12, generator=g),
                           aux_mask_logits=torch.randn(1, QUERIES, 3, 12, 12, generator=g),
                           aux_boxes=torch.rand(1, 3, QUERIES, 4, generator=g))


def changed(output: SimpleNamespace, **tensors) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(output), **tensors})


def loss_terms(output: SimpleNamespace, seg: torch.Tensor, ignore_label=UNANNOTATED) -> dict:
    criterion = MaskSAMLoss(num_classes=K, num_points=4096, ignore_label=ignore_label)
    return criterion(output, seg).terms


def matched_queries(output: SimpleNamespace, seg: torch.Tensor) -> dict:
    """slice -> the queries matched to its targets."""
    targets = build_targets(seg, K, UNANNOTATED)
    matches = HungarianMatcher(num_points=4096)(SlicePredictions.from_output(output), targets)
    result: dict = {}
    for s, q in zip(matches.slice_index.tolist(), matches.query_index.tolist()):
        result.setdefault(s, []).append(q)
    return result


def test_targets_are_the_classes_seen_in_annotated_pixels_with_their_boxes():
    targets = build_targets(toy_patch(), K, UNANNOTATED)
    assert [c.tolist() for c in targets.classes] == [[0, 1, 2], [0, 2], []]
    # class 2 of slice 1: columns 2..5 are annotated (6.. are not), rows 1..9
    assert targets.boxes[1, 2].tolist() == pytest.approx([2 / 12, 1 / 12, 6 / 12, 10 / 12])
    assert targets.fully_annotated().tolist() == [True, False, False]
    assert build_targets(toy_patch().clamp(max=2), K, UNANNOTATED).annotated is None


def test_out_of_range_labels_are_still_caught_beside_the_ignore_label():
    seg = toy_patch()
    seg[0, 0, 0, 0] = K + 1
    with pytest.raises(ValueError, match=r"found \[0, 4\]"):
        build_targets(seg, K, UNANNOTATED)


def test_mask_predictions_at_unannotated_pixels_change_neither_loss_nor_matching():
    seg = toy_patch()
    output = random_output()
    unannotated = (seg == UNANNOTATED)[:, None].expand_as(output.mask_logits)
    other = changed(output, mask_logits=output.mask_logits.masked_fill(unannotated, 20.0),
                    aux_mask_logits=output.aux_mask_logits.masked_fill(unannotated, -20.0))
    before, after = loss_terms(output, seg), loss_terms(other, seg)
    for term in ("mask_bce", "mask_dice", "aux_bce", "aux_dice"):
        assert after[term] == pytest.approx(before[term], rel=1e-6), term
    assert matched_queries(other, seg) == matched_queries(output, seg)
    # control: the same change where pixels are annotated does move the loss
    annotated = changed(output, mask_logits=output.mask_logits.masked_fill(~unannotated, 20.0))
    assert loss_terms(annotated, seg)["mask_bce"] > before["mask_bce"] + 1.0


@pytest.mark.parametrize("num_points", [4096, 40])
def test_mask_gradients_vanish_at_unannotated_pixels(num_points):
    """With every pixel judged (4096 points) and with importance-sampled points (40 of 144 per
    slice, read bilinearly: a point between an annotated and an unannotated pixel counts in
    part, so only pixels two columns into the unannotated half are sure to get nothing)."""
    seg = toy_patch()
    output = random_output()
    output.mask_logits.requires_grad_(True)
    torch.manual_seed(0)
    MaskSAMLoss(num_classes=K, num_points=num_points, ignore_label=UNANNOTATED)(output, seg).total.backward()
    grad = output.mask_logits.grad[0]   # (N, T, H, W)
    assert torch.isfinite(grad).all()
    far_from_annotation = torch.zeros_like(seg[0], dtype=torch.bool)
    far_from_annotation[1, :, 8:] = True
    far_from_annotation[2] = True
    assert float(grad[far_from_annotation.expand_as(grad)].abs().max()) == 0.0
    assert float(grad[:, 0].abs().max()) > 0.0 and float(grad[:, 1, :, :6].abs().max()) > 0.0
    if num_points > 144:
        unannotated = (seg[0] == UNANNOTATED).expand_as(grad)
        assert float(grad[unannotated].abs().max()) == 0.0


def test_no_object_is_claimed_only_where_a_slice_is_fully_annotated():
    seg = toy_patch()
    output = random_output()
    matched = matched_queries(output, seg)
    base = loss_terms(output, seg)["cls"]

    def class_loss_after_changing(slice_index: int, queries) -> float:
        logits = output.class_logits.clone()
        logits[0, slice_index, list(queries), K] += 5.0   # more "no object"
        return loss_terms(changed(output, class_logits=logits), seg)["cls"]

    unmatched_1 = [q for q in range(QUERIES) if q not in matched[1]]
    assert class_loss_after_changing(2, range(QUERIES)) == pytest.approx(base, rel=1e-6)   # no annotation
    assert class_loss_after_changing(1, unmatched_1) == pytest.approx(base, rel=1e-6)      # partly annotated
    assert class_loss_after_changing(1, matched[1]) > base + 1e-3                          # its matched queries
    unmatched_0 = [q for q in range(QUERIES) if q not in matched[0]]
    assert class_loss_after_changing(0, unmatched_0) < base - 1e-3                         # fully annotated


def test_boxes_are_learnt_from_fully_annotated_slices_only():
    seg = toy_patch()
    output = random_output()
    matched = matched_queries(output, seg)
    base = loss_terms(output, seg)

    def box_terms_after_moving(slice_index: int) -> tuple:
        boxes = output.aux_boxes.clone()
        boxes[0, slice_index, matched[slice_index]] = torch.tensor([0.0, 0.0, 0.1, 0.1])
        terms = loss_terms(changed(output, aux_boxes=boxes), seg)
        return terms["box_l1"], terms["box_giou"]

    assert box_terms_after_moving(1) == pytest.approx((base["box_l1"], base["box_giou"]), rel=1e-6)
    assert box_terms_after_moving(0) != pytest.approx((base["box_l1"], base["box_giou"]), rel=1e-3)


def test_a_batch_without_any_annotated_voxel_gives_a_finite_zero_loss():
    seg = torch.full((1, 3, 12, 12), UNANNOTATED)
    output = random_output()
    output.class_logits.requires_grad_(True)
    result = MaskSAMLoss(num_classes=K, num_points=4096, ignore_label=UNANNOTATED)(output, seg)
    assert result.num_targets == 0 and float(result.total.detach()) == 0.0
    result.total.backward()   # still a graph (every DDP rank must take part in the step)


def test_fully_annotated_patches_lose_exactly_as_without_the_ignore_label():
    seg = toy_patch().clamp(max=2)
    output = random_output(3)
    torch.manual_seed(0)
    with_label = loss_terms(output, seg, ignore_label=UNANNOTATED)
    torch.manual_seed(0)
    without = loss_terms(output, seg, ignore_label=None)
    assert with_label == pytest.approx(without, rel=1e-6)


def test_validation_counts_only_annotated_voxels():
    labels = np.array([0, 1, 1, IGNORE, IGNORE, 2])
    prediction = np.array([0, 1, 2, 1, 2, 2])
    confusion = confusion_matrix(prediction, labels, num_classes=IGNORE, ignore_label=IGNORE)
    tp, fp, fn = np.array([structure_counts(confusion, [k]) for k in range(IGNORE)]).T
    assert tp[:3].tolist() == [1, 1, 1] and fp[:3].tolist() == [0, 0, 1] and fn[:3].tolist() == [0, 1, 0]


# -- end to end ---------------------------------------------------------------------------------

def test_masksam_trains_on_sparse_annotations_and_predicts_only_classes(sparse_dataset, tmp_path):
    from MaskSAMCore.cli import main
    from MaskSAMCore.model_folder import ModelFolder
    from MaskSAMCore.training.arguments import TrainArguments
    from MaskSAMCore.training.run import load_resumed_run
    from MaskSAMCore.training.training_log import read_csv

    model_dir = tmp_path / "model"
    assert main(["train", str(sparse_dataset), str(model_dir), "--preset", "tiny", "--random-init",
                 "--epochs", "1", "--iters-per-epoch", "2", "--fold", "all", "--num-workers", "0",
                 "--device", "cpu"]) == 0
    folder = ModelFolder.load(model_dir)
    assert folder.class_names == ["background", "liver", "spleen", "kidney_left", "kidney_right", "aorta"]
    assert folder.plan["ignore_label"] == IGNORE and folder.config.num_classes == 6
    log_columns = list(read_csv(model_dir / "training_log.csv")[0])
    assert "dice_aorta" in log_columns and not [c for c in log_columns if "ignore" in c]
    output = tmp_path / "labels.nii.gz"
    assert main(["predict", str(model_dir), str(sparse_dataset / "imagesTs" / "phantom_test_000_0000.nii.gz"),
                 str(output), "--no-mirror", "--device", "cpu"]) == 0
    labels, _ = read_label(output)
    assert labels.max() < IGNORE
    # resuming with a dataset.json that lost (or gained) its ignore label would change the loss
    fully_annotated = dataclasses.replace(load_raw_dataset(sparse_dataset, progress=False), ignore_label=None)
    with pytest.raises(ModelFolderError, match="was trained with an 'ignore' label .* has none; resume with"):
        load_resumed_run(TrainArguments(sparse_dataset, model_dir, resume=True), model_dir, fully_annotated,
                         announce=False)
