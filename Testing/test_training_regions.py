"""Region datasets (nnU-Net v2's region labels, e.g. BraTS): read, trained and predicted.

The phantoms (liver 1, spleen 2, left and right kidney 3 and 4, aorta 5) are declared as three
overlapping regions: "solid organs" [1, 2, 3, 4], "kidneys" [3, 4] and "aorta" 5, written with
1, 3 and 5. The values fall into three classes by the regions they belong to: {1, 2}, {3, 4}
and {5}; a prediction paints them 1, 3 and 5 (a kidney voxel is in "solid organs" and "kidneys",
and "kidneys" comes later, so 3).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from MaskSAMCore.data.dataset import load_raw_dataset
from MaskSAMCore.data.image_io import read_label
from MaskSAMCore.data.regions import RegionError, RegionScheme, region_scheme
from MaskSAMCore.errors import DatasetError, ModelFolderError

REGIONS = {"background": 0, "solid organs": [1, 2, 3, 4], "kidneys": [3, 4], "aorta": 5}
ORDER = [1, 3, 5]
CLASSES = {"background": 0, "labels 1, 2 (solid organs)": 1, "labels 3, 4 (solid organs, kidneys)": 2,
           "label 5 (aorta)": 3}


def with_regions(root: Path, labels=REGIONS, order=ORDER) -> Path:
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = labels
    if order is None:
        meta.pop("regions_class_order", None)
    else:
        meta["regions_class_order"] = order
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def region_dataset(phantom_dataset: Path, tmp_path: Path) -> Path:
    return with_regions(Path(shutil.copytree(phantom_dataset, tmp_path / "Dataset003_Regions")))


# -- the scheme ---------------------------------------------------------------------------------

def test_values_in_the_same_regions_make_one_class_and_classes_paint_their_last_region():
    scheme = region_scheme(REGIONS, ORDER)
    assert scheme.class_labels == CLASSES
    assert scheme.output_labels == {"background": 0, "solid organs": 1, "kidneys": 3, "aorta": 5}
    raw = np.array([0, 1, 2, 3, 4, 5])
    classes = scheme.to_classes(raw)
    assert classes.tolist() == [0, 1, 1, 2, 2, 3]
    painted = scheme.to_output(classes)
    assert painted.tolist() == [0, 1, 1, 3, 3, 5]
    # every region is given back exactly by the painted map, as nnU-Net evaluates regions
    for name in ("solid organs", "kidneys", "aorta"):
        assert np.array_equal(scheme.region_mask(painted, name), scheme.region_mask(raw, name))


def test_brats_like_regions_with_an_ignore_label():
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3, "ignore": 4}
    scheme = region_scheme(labels, [1, 2, 3])
    assert list(scheme.classes.values()) == [(0,), (1,), (2,), (3,)]
    # unannotated voxels become K, one above the classes, as the ignore label of class maps
    assert scheme.to_classes(np.array([0, 3, 4])).tolist() == [0, 3, 4]
    assert RegionScheme.from_dict(json.loads(json.dumps(scheme.to_dict()))) == scheme


@pytest.mark.parametrize("labels, order, message", [
    (REGIONS, None, "region labels need 'regions_class_order'"),
    (REGIONS, [1, 3], "'regions_class_order' has 2 value\\(s\\) for 3 region\\(s\\)"),
    (REGIONS, [1, 3, "5"], "'regions_class_order' must be a list of label values above 0"),
    ({**REGIONS, "kidneys": []}, ORDER, "region 'kidneys' must be a non-empty list of label values above 0"),
    ({**REGIONS, "kidneys": [3, 3]}, ORDER, "region 'kidneys' lists a value twice"),
    ({**REGIONS, "kidneys": [1, 2, 3, 4]}, ORDER, "regions 'solid organs' and 'kidneys' hold the same values"),
    ({**REGIONS, "ignore": 5}, ORDER, "label 'ignore' .* must be a whole number above every region value \\(5\\)"),
    ({**REGIONS, "background": [0]}, ORDER, "labels must name value 0 'background'"),
    (REGIONS, [1, 3, 3], "'regions_class_order' gives two regions the same value \\(\\[1, 3, 3\\]\\)"),
    # a kidney voxel (3) would need a value in both regions, an aorta voxel (5) one in the second only
    ({"background": 0, "organs": [1, 2, 3], "vessels and kidneys": [3, 5]}, [1, 5],
     "regions 'organs' \\[1, 2, 3\\] and 'vessels and kidneys' \\[3, 5\\] overlap without one containing the "
     "other; only nested regions .* or disjoint ones are supported"),
    # liver and spleen voxels painted 3 would be read back as kidneys
    (REGIONS, [3, 1, 5], "a prediction paints value 3 on voxels outside region 'kidneys' \\[3, 4\\], so the "
                         "region could not be read back"),
])
def test_bad_region_definitions_are_refused_in_one_line_naming_the_file(region_dataset, labels, order, message):
    with_regions(region_dataset, labels, order)
    with pytest.raises(DatasetError, match=message) as info:
        load_raw_dataset(region_dataset, progress=False)
    assert str(info.value).startswith(str(region_dataset / "dataset.json")) and "\n" not in str(info.value)


def test_a_region_dataset_is_read_as_its_classes_and_checks_its_label_values(region_dataset):
    dataset = load_raw_dataset(region_dataset, progress=False)
    assert dataset.labels == CLASSES and dataset.regions == region_scheme(REGIONS, ORDER)
    with_regions(region_dataset, {"background": 0, "solid organs": [1, 2, 3], "aorta": 5}, [1, 5])
    with pytest.raises(DatasetError, match="has value\\(s\\) 4 not declared in dataset.json labels"):
        load_raw_dataset(region_dataset, progress=False)


def test_undeclared_values_are_named_beside_the_values_declared_not_a_range_with_gaps(region_dataset):
    """Declared 0, 3, 4, 5: the message must not say 0..5, which holds the very values refused."""
    with_regions(region_dataset, {"background": 0, "kidneys": [3, 4], "aorta": 5}, [3, 5])
    with pytest.raises(DatasetError, match="has value\\(s\\) 1, 2 not declared in dataset.json labels "
                                           "\\(declared: 0, 3..5\\)"):
        load_raw_dataset(region_dataset, progress=False)


@pytest.mark.parametrize("damage, message", [
    ({"regions_class_order": [1]}, "model.json: regions: 'regions_class_order' has 1 value"),
    ({"classes": [1]}, "model.json: regions: damaged region description \\(classes:"),
    ({"classes": {"background": [0], "label 5 (aorta)": [5]}}, "its classes do not follow from its regions"),
])
def test_a_damaged_region_description_in_model_json_is_one_error_line(tmp_path, damage, message):
    from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
    from MaskSAMCore.model.config import preset
    from MaskSAMCore.model_folder import ModelFolder

    config = preset("tiny", num_classes=4)
    model_dir = write_random_model_folder(tmp_path / "model", config, synthetic_plan(config))
    meta = json.loads((model_dir / "model.json").read_text())
    meta["labels"] = CLASSES
    meta["regions"] = meta["plan"]["regions"] = {**region_scheme(REGIONS, ORDER).to_dict(), **damage}
    (model_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFolderError, match=message) as info:
        ModelFolder.load(model_dir)
    assert "\n" not in str(info.value)


# -- end to end ---------------------------------------------------------------------------------

def test_masksam_trains_on_regions_and_writes_painted_label_maps(region_dataset, tmp_path):
    from MaskSAMCore.cli import main
    from MaskSAMCore.model_folder import ModelFolder
    from MaskSAMCore.training.arguments import TrainArguments
    from MaskSAMCore.training.run import load_resumed_run
    from MaskSAMCore.training.training_log import read_csv

    model_dir = tmp_path / "model"
    assert main(["train", str(region_dataset), str(model_dir), "--preset", "tiny", "--random-init",
                 "--epochs", "1", "--iters-per-epoch", "2", "--fold", "all", "--num-workers", "0",
                 "--device", "cpu"]) == 0
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["format_version"] == 2 and meta["labels"] == CLASSES
    folder = ModelFolder.load(model_dir)
    assert folder.config.num_classes == 4 and folder.output_labels["kidneys"] == 3
    # the validation Dice is each region's, as nnU-Net reports region datasets
    assert list(read_csv(model_dir / "training_log.csv")[0])[3:6] == ["dice_solid organs", "dice_kidneys",
                                                                     "dice_aorta"]
    # training saw classes, never the raw values 4 and 5
    case = json.loads(next((model_dir / "preprocessed").glob("*.json")).read_text())
    assert set(case["classes_present"]) <= {0, 1, 2, 3}

    output = tmp_path / "labels.nii.gz"
    assert main(["predict", str(model_dir), str(region_dataset / "imagesTs" / "phantom_test_000_0000.nii.gz"),
                 str(output), "--no-mirror", "--device", "cpu"]) == 0
    assert set(np.unique(read_label(output)[0]).tolist()) <= {0, 1, 3, 5}

    # resuming with other regions would train other classes
    with_regions(region_dataset, {"background": 0, "solid organs": [1, 2, 3, 4], "kidneys": [3, 4],
                                  "aorta": [5]}, [1, 4, 5])
    changed = load_raw_dataset(region_dataset, progress=False)
    with pytest.raises(ModelFolderError, match="was trained with other labels"):
        load_resumed_run(TrainArguments(region_dataset, model_dir, resume=True), model_dir, changed,
                         announce=False)


def test_a_label_map_outside_the_regions_is_refused_before_training(region_dataset):
    labels, geometry = read_label(next((region_dataset / "labelsTr").glob("*.nii.gz")))
    scheme = region_scheme(REGIONS, ORDER)
    with pytest.raises(RegionError, match="outside the regions"):
        scheme.to_classes(labels + 7)
    assert scheme.to_classes(labels).max() == 3


def test_a_region_model_paints_the_classes_it_predicts(region_dataset, tmp_path):
    from MaskSAMCore.data.image_io import read_image
    from MaskSAMCore.inference.predictor import Predictor, PredictOptions
    from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
    from MaskSAMCore.model.config import preset
    from MaskSAMCore.model_folder import ModelFolder

    config = preset("tiny", num_classes=4)
    plan = {**synthetic_plan(config), "regions": region_scheme(REGIONS, ORDER).to_dict()}
    model_dir = write_random_model_folder(tmp_path / "model", config, plan, labels=CLASSES, seed=3)
    meta = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**meta, "regions": plan["regions"]}))
    assert ModelFolder.load(model_dir).output_labels == {"background": 0, "solid organs": 1, "kidneys": 3, "aorta": 5}

    image, geometry = read_image(region_dataset / "imagesTs" / "phantom_test_000_0000.nii.gz")
    predictor = Predictor.from_model_folder(model_dir, device="cpu", options=PredictOptions(mirror=False,
                                            show_progress=False))
    painted = predictor.predict_array(image, geometry)
    predictor.regions = None
    classes = predictor.predict_array(image, geometry)
    assert set(np.unique(classes).tolist()) - {0, 1, 3}   # a class whose painted value differs
    assert np.array_equal(painted, np.array([0, 1, 3, 5])[classes])

    # the plan's copy (read by preprocessing) and model.json's (read for painting) must agree
    (model_dir / "model.json").write_text(json.dumps({**meta, "regions": {**plan["regions"], "regions_class_order": [1, 4, 5]}}))
    with pytest.raises(ModelFolderError, match="its plan and its description differ in regions"):
        ModelFolder.load(model_dir)


def test_a_region_is_scored_as_the_union_of_its_classes():
    from MaskSAMCore.training.validation import confusion_matrix, structure_counts

    truth = np.array([0, 1, 1, 2, 2, 3, 4])      # class 4: unannotated (K = 4)
    predicted = np.array([1, 1, 2, 2, 0, 3, 1])
    confusion = confusion_matrix(predicted, truth, num_classes=4, ignore_label=4)
    # "solid organs" = classes 1 and 2: a voxel predicted 2 where the truth is 1 is still inside it
    assert structure_counts(confusion, [1, 2]) == (3, 1, 1)
    assert structure_counts(confusion, [2]) == (1, 1, 1)
    assert structure_counts(confusion, [3]) == (1, 0, 0)
