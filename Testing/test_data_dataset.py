"""The nnU-Net raw dataset reader: a valid dataset loads; every broken one fails before any work
with one line naming the case (or dataset.json) and the problem."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MaskSAMCore.data.dataset import load_raw_dataset
from MaskSAMCore.data.image_io import ImageGeometry, read_image, read_label
from MaskSAMCore.data.image_writing import write_image, write_label
from MaskSAMCore.errors import DatasetError


@pytest.fixture
def dataset(phantom_dataset: Path, tmp_path: Path) -> Path:
    """A private, changeable copy of the shared phantom dataset (cases phantom_000..002)."""
    return Path(shutil.copytree(phantom_dataset, tmp_path / "Dataset001_Phantoms"))


def edit_json(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (root / "dataset.json").write_text(json.dumps(meta))


def load_error(root: Path) -> str:
    with pytest.raises(DatasetError) as info:
        load_raw_dataset(root, progress=False)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_dataset_loads_with_names_channels_and_grids(dataset):
    raw = load_raw_dataset(dataset, progress=False)
    assert raw.class_names == ["background", "liver", "spleen", "kidney_left", "kidney_right", "aorta"]
    assert raw.num_classes == 6 and raw.num_channels == 1 and raw.modality == "CT"
    assert raw.file_ending == ".nii.gz"
    assert [c.name for c in raw.training_cases] == ["phantom_000", "phantom_001", "phantom_002"]
    assert raw.training_cases[0].image_files[0].name == "phantom_000_0000.nii.gz"
    assert raw.training_cases[0].label_file.name == "phantom_000.nii.gz"
    assert [c.name for c in raw.test_cases] == ["phantom_test_000"]
    assert raw.geometries["phantom_001"].size == (40, 36, 12)


def test_missing_dataset_json(dataset):
    (dataset / "dataset.json").unlink()
    assert "no dataset.json" in load_error(dataset)


def test_dataset_json_given_instead_of_its_folder(dataset):
    message = load_error(dataset / "dataset.json")
    assert "dataset.json: is a file, not a dataset folder; give its folder" in message
    assert dataset.name in message


def test_invalid_json(dataset):
    (dataset / "dataset.json").write_text('{"labels": {"background": 0,,}')
    assert "dataset.json: not valid JSON (line 1" in load_error(dataset)


@pytest.mark.parametrize("key", ["channel_names", "labels", "numTraining", "file_ending"])
def test_missing_key(dataset, key):
    edit_json(dataset, **{key: None})
    assert f"dataset.json: missing key(s) {key}" in load_error(dataset)


def test_labels_not_consecutive(dataset):
    edit_json(dataset, labels={"background": 0, "liver": 1, "spleen": 3})
    assert "label values must be consecutive 0..2, got [0, 1, 3]" in load_error(dataset)


def test_background_not_zero(dataset):
    edit_json(dataset, labels={"liver": 0, "background": 1})
    assert "labels must name value 0 'background'" in load_error(dataset)


def test_empty_dataset(dataset):
    for path in (dataset / "imagesTr").iterdir():
        path.unlink()
    for path in (dataset / "labelsTr").iterdir():
        path.unlink()
    assert "no training cases in imagesTr" in load_error(dataset)


def test_file_ending_hint_when_the_files_have_another_ending(dataset):
    edit_json(dataset, file_ending=".nrrd")
    message = load_error(dataset)
    assert "no training cases" in message and "found files ending in .nii.gz" in message


@pytest.mark.parametrize("suffix", ["_seg", "_locations"])
def test_case_names_that_would_share_preprocessed_files_are_refused(dataset, suffix):
    """Case X is stored as X.npy, X_seg.npy, X_locations.npy: a case named X_seg would read X's labels as its image."""
    (dataset / "imagesTr" / "phantom_001_0000.nii.gz").rename(dataset / "imagesTr" / f"phantom_000{suffix}_0000.nii.gz")
    (dataset / "labelsTr" / "phantom_001.nii.gz").rename(dataset / "labelsTr" / f"phantom_000{suffix}.nii.gz")
    assert load_error(dataset).endswith(
        f": cases 'phantom_000' and 'phantom_000{suffix}' would share the preprocessed file phantom_000{suffix}.npy; "
        f"rename case 'phantom_000{suffix}'")


def test_missing_label_file(dataset):
    (dataset / "labelsTr" / "phantom_001.nii.gz").unlink()
    assert "case 'phantom_001': missing label file labelsTr/phantom_001.nii.gz" in load_error(dataset)


def test_label_without_images(dataset):
    shutil.copy(dataset / "labelsTr" / "phantom_000.nii.gz", dataset / "labelsTr" / "stray.nii.gz")
    assert "case 'stray': labelsTr/stray.nii.gz has no image files" in load_error(dataset)


@pytest.mark.parametrize("entry", ["imagesTr/phantom_001_0000.nii.gz", "labelsTr/phantom_001.nii.gz"])
def test_a_folder_named_as_a_case_file_is_called_a_folder(dataset, entry):
    """Not "has no image files" or "missing label file": the name is there, but as a folder."""
    (dataset / entry).unlink()
    (dataset / entry).mkdir()
    assert load_error(dataset).endswith(f": {entry} is a folder, not an image file; put the image file itself there")


def test_missing_channel_file(dataset):
    edit_json(dataset, channel_names={"0": "CT", "1": "CT_late"})
    for name in ("phantom_000", "phantom_002"):
        shutil.copy(dataset / "imagesTr" / f"{name}_0000.nii.gz", dataset / "imagesTr" / f"{name}_0001.nii.gz")
    assert "case 'phantom_001': missing channel file imagesTr/phantom_001_0001.nii.gz" in load_error(dataset)


def test_extra_channel_file(dataset):
    shutil.copy(dataset / "imagesTr" / "phantom_002_0000.nii.gz", dataset / "imagesTr" / "phantom_002_0001.nii.gz")
    message = load_error(dataset)
    assert "case 'phantom_002': unexpected channel file imagesTr/phantom_002_0001.nii.gz" in message
    assert "declares 1 channel" in message


def test_image_file_without_channel_number(dataset):
    shutil.copy(dataset / "imagesTr" / "phantom_000_0000.nii.gz", dataset / "imagesTr" / "phantom_009.nii.gz")
    assert "imagesTr/phantom_009.nii.gz does not end in a channel number" in load_error(dataset)


def _rewrite_label_geometry(dataset: Path, case: str, change: str) -> None:
    labels, geometry = read_label(dataset / "labelsTr" / f"{case}.nii.gz")
    size, spacing, origin, direction = geometry.size, geometry.spacing, geometry.origin, geometry.direction
    if change == "size":
        labels, size = labels[:-1], (size[0], size[1], size[2] - 1)
    elif change == "spacing":
        spacing = (spacing[0] * 1.1, spacing[1], spacing[2])
    elif change == "origin":
        origin = (origin[0] + 2.0, origin[1], origin[2])
    else:
        direction = tuple(np.eye(3).ravel())
    write_label(labels, ImageGeometry(size, spacing, origin, direction), dataset / "labelsTr" / f"{case}.nii.gz")


@pytest.mark.parametrize("change", ["size", "spacing", "origin", "direction"])
def test_label_not_on_the_image_grid(dataset, change):
    _rewrite_label_geometry(dataset, "phantom_001", change)
    message = load_error(dataset)
    assert "case 'phantom_001': label labelsTr/phantom_001.nii.gz is not on the image's grid" in message
    assert change in message


def test_channel_grids_differ(dataset):
    edit_json(dataset, channel_names={"0": "CT", "1": "CT_late"})
    for name in ("phantom_000", "phantom_001", "phantom_002"):
        image, geometry = read_image(dataset / "imagesTr" / f"{name}_0000.nii.gz")
        if name == "phantom_002":
            geometry = ImageGeometry(geometry.size, geometry.spacing, (0.0, 0.0, 0.0), geometry.direction)
        write_image(image, geometry, dataset / "imagesTr" / f"{name}_0001.nii.gz")
    test_case = dataset / "imagesTs" / "phantom_test_000_0000.nii.gz"
    shutil.copy(test_case, test_case.with_name("phantom_test_000_0001.nii.gz"))
    message = load_error(dataset)
    assert "case 'phantom_002': channel 0001 (imagesTr/phantom_002_0001.nii.gz) is not on the grid" in message
    assert "origin" in message


def test_label_value_not_declared(dataset):
    labels, geometry = read_label(dataset / "labelsTr" / "phantom_000.nii.gz")
    labels[0, 0, :3] = 9
    write_label(labels, geometry, dataset / "labelsTr" / "phantom_000.nii.gz")
    assert "case 'phantom_000': label labelsTr/phantom_000.nii.gz has value(s) 9 not declared" in load_error(dataset)


def test_non_3d_image(dataset):
    sitk.WriteImage(sitk.Image([40, 36], sitk.sitkInt16), str(dataset / "imagesTr" / "phantom_001_0000.nii.gz"))
    assert "case 'phantom_001': imagesTr/phantom_001_0000.nii.gz: is a 2D image" in load_error(dataset)


def test_nan_in_image(dataset):
    """The dataset is NIfTI, whose ITK reader turns NaN/Inf into 0; the check reads the file."""
    image, geometry = read_image(dataset / "imagesTr" / "phantom_002_0000.nii.gz")
    image[3, 4, 5] = np.nan
    write_image(image, geometry, dataset / "imagesTr" / "phantom_002_0000.nii.gz")
    assert "case 'phantom_002': imagesTr/phantom_002_0000.nii.gz: contains 1 NaN/Inf voxel" in load_error(dataset)


def test_unreadable_image(dataset):
    (dataset / "imagesTr" / "phantom_000_0000.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    assert "case 'phantom_000': imagesTr/phantom_000_0000.nii.gz: cannot read it as an image" in load_error(dataset)


def test_num_training_mismatch(dataset):
    edit_json(dataset, numTraining=5)
    assert "numTraining is 5 but imagesTr holds 3 case(s)" in load_error(dataset)


def test_region_labels_need_their_order_of_painting(dataset):
    edit_json(dataset, labels={"background": 0, "liver": 1, "organs": [1, 2]})
    assert "region labels need 'regions_class_order'" in load_error(dataset)


def _relabel_every_case(dataset: Path, old: int, new: int) -> None:
    for label_file in sorted((dataset / "labelsTr").glob("*.nii.gz")):
        labels, geometry = read_label(label_file)
        labels[labels == old] = new
        write_label(labels, geometry, label_file)


def test_label_maps_without_any_foreground_are_refused(dataset):
    for value in range(1, 6):
        _relabel_every_case(dataset, value, 0)
    message = load_error(dataset)
    assert message.startswith(f"{dataset}: no label map in labelsTr holds any structure")
    assert "nothing to learn" in message


def test_a_declared_label_no_case_holds_is_one_warning_and_the_dataset_loads(dataset, capsys):
    _relabel_every_case(dataset, 5, 1)   # the aorta becomes liver in every case
    raw = load_raw_dataset(dataset, progress=False, warn=True)
    assert raw.num_classes == 6
    assert capsys.readouterr().err.splitlines() == [
        f"masksam: warning: {dataset}: label(s) 'aorta' (5) declared in dataset.json appear in no training "
        "case; the model cannot learn to segment them"]


def test_a_constant_image_is_refused_like_prediction_refuses_it(dataset):
    image, geometry = read_image(dataset / "imagesTr" / "phantom_001_0000.nii.gz")
    write_image(np.full(image.shape, -1000, np.int16), geometry, dataset / "imagesTr" / "phantom_001_0000.nii.gz")
    assert ("case 'phantom_001': imagesTr/phantom_001_0000.nii.gz: the image is constant (every voxel is -1000); "
            "there is nothing to segment in it") in load_error(dataset)


def test_files_in_imagests_that_are_no_nnunet_cases_do_not_stop_training(dataset, capsys):
    """Training never reads imagesTs/; `masksam predict` reads it by its own rules."""
    shutil.copy(dataset / "imagesTs" / "phantom_test_000_0000.nii.gz", dataset / "imagesTs" / "scan.nii.gz")
    shutil.copy(dataset / "imagesTs" / "phantom_test_000_0000.nii.gz",
                dataset / "imagesTs" / "two_channels_0001.nii.gz")   # its _0000 is missing
    raw = load_raw_dataset(dataset, progress=False, warn=True)
    assert [c.name for c in raw.test_cases] == ["phantom_test_000"]
    assert capsys.readouterr().err == ""


def test_a_dataset_json_with_a_byte_order_mark_loads(dataset):
    text = (dataset / "dataset.json").read_text()
    (dataset / "dataset.json").write_bytes(b"\xef\xbb\xbf" + text.encode())   # as Windows Notepad saves
    assert load_raw_dataset(dataset, progress=False).num_classes == 6


def test_a_key_given_twice_in_dataset_json_is_named(dataset):
    text = (dataset / "dataset.json").read_text()
    assert '"aorta": 5' in text
    (dataset / "dataset.json").write_text(text.replace('"aorta": 5', '"aorta": 5, "liver": 6'))
    assert "dataset.json: key 'liver' appears twice in one object" in load_error(dataset)


def test_an_empty_label_name_is_refused(dataset):
    edit_json(dataset, labels={"background": 0, "": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4,
                               "aorta": 5})
    assert "dataset.json: label value 1 has an empty name" in load_error(dataset)


def test_an_nnunet_v1_dataset_json_gets_a_hint(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    edit_json(dataset, channel_names=None, file_ending=None, modality={"0": "CT"},
              labels={str(value): name for name, value in meta["labels"].items()})
    message = load_error(dataset)
    assert message.endswith(
        "dataset.json: missing key(s) channel_names, file_ending; this is nnU-Net v1's dataset.json: rename "
        "'modality' to 'channel_names', write 'labels' as name -> value ({\"background\": 0, ...}), add "
        "\"file_ending\": \".nii.gz\" (nnUNetv2_convert_old_nnUNet_dataset converts a whole v1 dataset)")


def _move_nifti_placement(path: Path, offset: int, by_mm: float, code_changes=()) -> None:
    """Move one of the two placements of a .nii.gz file's header (a float at `offset`) by `by_mm`."""
    data = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", data, offset, struct.unpack_from("<f", data, offset)[0] + by_mm)
    for code_offset, code in code_changes:
        struct.pack_into("<h", data, code_offset, code)
    path.write_bytes(gzip.compress(bytes(data)))


def test_nifti_files_written_by_itk_are_not_called_ambiguous(tmp_path):
    """ITK's qform of an oblique phantom (a float32 quaternion) is ~0.05 mm off its sform at the
    far corner of the demo's first test case: rounding, not two placements, so no warning."""
    from MaskSAMCore.data.nifti_transforms import placement_warning
    from MaskSAMCore.data.phantoms import phantom_case

    image, _, geometry = phantom_case(0, "test", 0, None)
    write_image(image, geometry, tmp_path / "oblique.nii.gz")
    assert placement_warning(tmp_path / "oblique.nii.gz", geometry) is None


def test_a_case_whose_nifti_placements_disagree_loads_with_one_warning(dataset, capsys):
    """Image and label both carry an aligned sform (code 2) and a qform moved 50 mm (ITK reads
    the qform): they fit each other, but nibabel and FSL would place the case elsewhere."""
    for path in (dataset / "imagesTr" / "phantom_001_0000.nii.gz", dataset / "labelsTr" / "phantom_001.nii.gz"):
        _move_nifti_placement(path, 268, 50.0, code_changes=[(254, 2)])   # qoffset_x
    load_raw_dataset(dataset, progress=False, warn=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert "the NIfTI header of 1 case(s) (phantom_001) is ambiguous: its qform and sform place the image " \
           "up to 50 mm apart; MaskSAM reads it as ITK and 3D Slicer do, by the qform" in warnings[0]


def test_a_label_that_misses_its_image_because_of_the_image_header_says_so(dataset):
    # An aligned sform (code 2) and a qform moved 50 mm: ITK reads the qform, the label stays put.
    _move_nifti_placement(dataset / "imagesTr" / "phantom_001_0000.nii.gz", 268, 50.0, code_changes=[(254, 2)])
    message = load_error(dataset)
    assert "label labelsTr/phantom_001.nii.gz is not on the image's grid" in message
    assert "(note: the image's qform and sform place the image up to 50 mm apart; MaskSAM reads it as ITK and " \
           "3D Slicer do, by the qform" in message


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
    edit_json(dataset, **changes)
    message = load_error(dataset)
    assert "dataset.json: " in message and problem in message, message


def test_a_json_array_is_no_dataset_json(dataset):
    (dataset / "dataset.json").write_text("[1, 2]")
    assert "dataset.json: must hold a JSON object" in load_error(dataset)


def test_a_v2_dataset_json_missing_a_key_gets_no_v1_hint(dataset):
    edit_json(dataset, channel_names=None)
    message = load_error(dataset)
    assert message.endswith("dataset.json: missing key(s) channel_names"), message
