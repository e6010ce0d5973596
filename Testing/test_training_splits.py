"""splits.json: 5 shuffled nnU-Net folds, reproducible, reused when present, 'all' for everything."""

import json

import pytest

from MaskSAMCore.errors import InputError, MaskSAMError
from MaskSAMCore.training.splits import load_or_create_splits, make_splits, select_fold


def test_five_disjoint_folds_cover_every_case_once():
    names = [f"case_{i:02d}" for i in range(12)]
    folds = make_splits(reversed(names))                   # input order does not matter
    assert len(folds) == 5
    vals = [f["val"] for f in folds]
    assert sorted(sum(vals, [])) == names
    assert [len(v) for v in vals] == [3, 3, 2, 2, 2]        # the first n % 5 folds one larger
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == names and not set(fold["train"]) & set(fold["val"])
    assert make_splits(names) == folds                       # seed 12345: always the same
    assert vals != [names[i:i + 3] for i in (0, 3, 6)]      # shuffled, not consecutive


def test_existing_splits_file_is_reused_and_checked(tmp_path):
    names = [f"c{i}" for i in range(6)]
    custom = [{"train": names[1:], "val": names[:1]}] * 5
    (tmp_path / "splits.json").write_text(json.dumps(custom))
    assert load_or_create_splits(tmp_path, names) == custom
    assert select_fold(custom, "3", names) == (names[1:], names[:1])
    assert select_fold(custom, "all", names) == (sorted(names), sorted(names))
    with pytest.raises(InputError, match="'c5' is not in the dataset"):
        load_or_create_splits(tmp_path, names[:-1])         # the dataset lost a case


def test_new_splits_are_written_and_too_few_cases_need_fold_all(tmp_path):
    names = [f"c{i}" for i in range(5)]
    folds = load_or_create_splits(tmp_path, names)
    assert json.loads((tmp_path / "splits.json").read_text()) == folds
    with pytest.raises(MaskSAMError, match="--fold all"):
        make_splits(names[:3])


@pytest.mark.parametrize("fold, message", [
    ({"train": [], "val": ["c0"]}, "fold 1 has no train cases"),
    ({"train": ["c1", "c2"], "val": []}, "fold 1 has no val cases"),
    ({"train": ["c0", "c1"], "val": ["c1"]}, "case 'c1' is in both train and val of fold 1"),
    ({"train": ["c0", 3], "val": ["c1"]}, "fold 1 lists something other than case names"),
])
def test_a_hand_edited_fold_that_cannot_train_or_validate_is_refused(tmp_path, fold, message):
    names = [f"c{i}" for i in range(3)]
    good = {"train": ["c1", "c2"], "val": ["c0"]}
    (tmp_path / "splits.json").write_text(json.dumps([good, fold, good]))
    with pytest.raises(InputError, match=message):
        load_or_create_splits(tmp_path, names)
