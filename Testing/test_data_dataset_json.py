"""Every field of dataset.json is checked, each mistake named in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from MaskSAMCore.errors import DatasetError


@pytest.fixture
def dataset(phantom_dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(phantom_dataset, tmp_path / "Dataset001_Phantoms"))


def _edit(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (root / "dataset.json").write_text(json.dumps(meta))


def _error(root: Path) -> str:
    from MaskSAMCore.data.dataset import load_raw_dataset

    with pytest.raises(DatasetError) as info:
        load_raw_dataset(root, progress=False)
    return str(info.value)


LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4, "aorta": 5}


@pytest.mark.parametrize("changes, problem", [
    (dict(labels={**LABELS, "liver": "1"}), "label 'liver' has value '1'; label values must be whole numbers"),
    (dict(labels={**LABELS, "liver": True}), "label 'liver' has value True"),
    (dict(labels={**LABELS, "liver": 1.5}), "label 'liver' has value 1.5"),
    (dict(labels={**LABELS, "liver": 2}), "two labels share a value"),
    (dict(labels={"background": 0}), "labels need at least one structure besides background"),
    (dict(labels={**{k: v for k, v in LABELS.items() if k != "liver"}, "  ": 1}), "label value 1 has an empty name"),
    (dict(channel_names={"0": "CT", "2": "T2"}), 'channel_names keys must be "0".."1"'),
    (dict(channel_names={"1": "CT"}), 'channel_names keys must be "0".."0"'),
    (dict(channel_names={"0": " "}), "every channel needs a name"),
    (dict(file_ending="nii.gz"), "file_ending must look like \".nii.gz\", not 'nii.gz'"),
    (dict(file_ending="."), "file_ending must look like"),
    (dict(numTraining="3"), "numTraining must be a whole number, not '3'"),
    (dict(numTraining=-1), "numTraining must be a whole number, not -1"),
])
def test_every_field_of_dataset_json_is_checked(dataset, changes, problem):
    _edit(dataset, **changes)
    message = _error(dataset)
    assert "dataset.json: " in message and problem in message, message


def test_a_json_array_is_no_dataset_json(dataset):
    (dataset / "dataset.json").write_text("[1, 2]")
    assert "dataset.json: must hold a JSON object" in _error(dataset)


def test_a_v2_dataset_json_missing_a_key_gets_no_v1_hint(dataset):
    _edit(dataset, channel_names=None)
    message = _error(dataset)
    assert message.endswith("dataset.json: missing key(s) channel_names"), message
