"""Build-dataset-from-scene: the folder it writes is a dataset the core accepts, every case sits on
its volume's exact grid, and the same segment name gets the same label value in every case."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_support import (add_scalar_volume, chain_of_transforms, distinct_voxel_values, new_scene,
                            oblique_direction, oblique_grid)

from MaskSAMCore.errors import InputError
from MaskSAMSegmentLib.dataset_builder import CasePair, DatasetBuilder, build_dataset_from_scene, dataset_summary
from MaskSAMSegmentLib.drawn_slices import find_drawn_slices, mark_undrawn_slices, slice_orientation
from MaskSAMSegmentLib.geometry import LpsGrid
from MaskSAMSegmentLib.segmentations import import_label_map


def rename_segments(node, names):
    segmentation = node.GetSegmentation()
    for index, name in enumerate(names):
        segmentation.GetNthSegment(index).SetName(name)


def two_cases(scene):
    """Case A on the oblique test grid, case B on another grid with its segmentation drawn on a
    coarser grid; segment names spelled differently and in a different order."""
    grid_a = oblique_grid()
    volume_a = add_scalar_volume(scene, distinct_voxel_values(), grid_a, name="Patient A")
    labels_a = np.zeros(grid_a.shape_zyx, np.uint8)
    labels_a[1:4, 2:7, 3:9] = 1
    labels_a[4:7, 6:11, 0:5] = 2
    seg_a = import_label_map(scene, labels_a, grid_a, {1: "liver", 2: "kidney"}, reference_volume=volume_a)
    rename_segments(seg_a, ["Liver", "Left kidney"])

    grid_b = LpsGrid(size=(16, 12, 10), spacing=(0.7, 0.7, 2.5), origin=(30.0, -20.0, 5.0),
                     direction=oblique_direction((0.0, 0.0, 90.0)))
    volume_b = add_scalar_volume(scene, distinct_voxel_values((10, 12, 16)), grid_b, name="Patient B")
    # Coarse voxel (i, j, k) covers fine voxels 2i..2i+1 (and so on): its centre is half a fine
    # step further along each (rotated) axis than the fine grid's first voxel.
    half_step = grid_b.direction_matrix @ np.array([0.35, 0.35, 1.25])
    coarse = LpsGrid(size=(8, 6, 5), spacing=(1.4, 1.4, 5.0), origin=tuple(np.array(grid_b.origin) + half_step),
                     direction=grid_b.direction)
    labels_b = np.zeros((5, 6, 8), np.uint8)
    labels_b[1:3, 1:4, 2:6] = 1   # spleen
    labels_b[3:5, 3:6, 0:3] = 2   # left kidney
    seg_b = import_label_map(scene, labels_b, coarse, {1: "spleen", 2: "kidney"}, reference_volume=volume_b)
    rename_segments(seg_b, ["spleen", "left_kidney"])
    expected_b = np.zeros((10, 12, 16), np.uint8)
    expected_b[2:6, 2:8, 4:12] = 3        # spleen (value 3: third name met), 2x2x2 fine voxels each
    expected_b[6:10, 6:12, 0:6] = 2       # left kidney: same value as in case A
    return [CasePair(volume_a, seg_a), CasePair(volume_b, seg_b)], [labels_a, expected_b], [grid_a, grid_b]


def test_dataset_from_scene_is_accepted_by_the_core_with_consistent_labels(tmp_path):
    from MaskSAMCore.data.dataset import load_raw_dataset

    scene = new_scene()
    pairs, expected_labels, grids = two_cases(scene)
    summary = build_dataset_from_scene(pairs, tmp_path / "Dataset501_Scene", channel_name="CT")
    assert summary.labels == {"background": 0, "liver": 1, "left_kidney": 2, "spleen": 3}

    dataset = load_raw_dataset(summary.folder, progress=False)   # opens and checks every case
    assert dataset.labels == summary.labels and dataset.channel_names == {"0": "CT"}
    assert [case.name for case in dataset.training_cases] == ["case_000", "case_001"]

    for case, pair, labels, grid in zip(dataset.training_cases, pairs, expected_labels, grids):
        image = sitk.ReadImage(str(case.image_files[0]))
        label = sitk.ReadImage(str(case.label_file))
        for written in (image, label):
            assert written.GetSize() == grid.size
            np.testing.assert_allclose(written.GetSpacing(), grid.spacing, atol=1e-5)
            np.testing.assert_allclose(written.GetOrigin(), grid.origin, atol=1e-4)
            np.testing.assert_allclose(written.GetDirection(), grid.direction, atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), labels)
        assert sitk.GetArrayFromImage(image).shape == grid.shape_zyx
    meta = json.loads((summary.folder / "dataset.json").read_text())
    assert meta["masksam_sources"]["case_001"] == {"volume": "Patient B", "segmentation": pairs[1].segmentation.GetName()}
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset501_Scene"]   # no temporaries left


def sparsely_drawn_cases(scene):
    """Case A drawn on every other stored slice (K) of the oblique grid; case B, a volume turned
    90 degrees about S-I, drawn on two slices across its J axis, which runs left-right."""
    grid_a = oblique_grid()
    volume_a = add_scalar_volume(scene, distinct_voxel_values(), grid_a, name="Patient A")
    labels_a = np.zeros(grid_a.shape_zyx, np.uint8)
    labels_a[1:6:2, 2:9, 3:11] = 1
    labels_a[1:6:2, 6:10, 1:4] = 2
    seg_a = import_label_map(scene, labels_a, grid_a, {1: "liver", 2: "kidney"}, reference_volume=volume_a)
    grid_b = LpsGrid(size=(16, 12, 10), spacing=(0.7, 0.7, 2.5), origin=(30.0, -20.0, 5.0),
                     direction=oblique_direction((0.0, 0.0, 90.0)))
    volume_b = add_scalar_volume(scene, distinct_voxel_values((10, 12, 16)), grid_b, name="Patient B")
    labels_b = np.zeros((10, 12, 16), np.uint8)
    labels_b[2:9, (3, 8), 4:12] = 1
    labels_b[3:6, 8, 1:3] = 2
    seg_b = import_label_map(scene, labels_b, grid_b, {1: "liver", 2: "kidney"}, reference_volume=volume_b)
    return [CasePair(volume_a, seg_a), CasePair(volume_b, seg_b)], [labels_a, labels_b]


def test_cases_drawn_on_some_slices_mark_the_other_slices_not_annotated(tmp_path):
    """With drawn_slices_only, a slice without any segment voxel, across the axis the user drew
    on, is nnU-Net's 'ignore' (value K, one above the last class) rather than background, and the
    core reads the dataset as sparsely annotated; drawn slices keep their background."""
    from MaskSAMCore.data.dataset import load_raw_dataset

    scene = new_scene()
    pairs, expected_labels = sparsely_drawn_cases(scene)
    summary = build_dataset_from_scene(pairs, tmp_path / "Sparse", drawn_slices_only=True)
    dataset = load_raw_dataset(summary.folder, progress=False)
    assert dataset.ignore_label == 3 and dataset.labels == summary.labels   # 'ignore' is no class
    assert json.loads((summary.folder / "dataset.json").read_text())["labels"]["ignore"] == 3
    written = [sitk.GetArrayFromImage(sitk.ReadImage(str(case.label_file))) for case in dataset.training_cases]
    drawn_a = np.isin(np.arange(7), [1, 3, 5])
    np.testing.assert_array_equal(written[0][drawn_a], expected_labels[0][drawn_a])
    assert (written[0][~drawn_a] == 3).all()
    drawn_b = np.isin(np.arange(12), [3, 8])
    np.testing.assert_array_equal(written[1][:, drawn_b], expected_labels[1][:, drawn_b])
    assert (written[1][:, ~drawn_b] == 3).all()
    assert summary.warnings == ["case_001: drawn on sagittal slices (the volume's J axis): 2 of 12 slices annotated"]
    plain = build_dataset_from_scene(pairs, tmp_path / "Complete")
    assert "ignore" not in json.loads((plain.folder / "dataset.json").read_text())["labels"]
    assert not plain.warnings


def test_existing_folder_and_bad_segment_names_are_refused_without_writing(tmp_path):
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="already exists and is not empty"):
        build_dataset_from_scene(pairs, taken)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]

    rename_segments(pairs[0].segmentation, ["Background"])
    with pytest.raises(InputError, match="may not be called 'Background'"):
        build_dataset_from_scene(pairs, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_segment_named_ignore_is_refused_before_writing(tmp_path):
    """nnU-Net reserves the label 'ignore' for unannotated voxels, and `masksam train` takes it so:
    a segment of that name (meant as a structure) must be refused when the dataset is built."""
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    rename_segments(pairs[1].segmentation, ["spleen", "Ignore"])
    with pytest.raises(InputError, match="may not be called 'Ignore'"):
        build_dataset_from_scene(pairs, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("labels, line", [
    ({"background": 0, "liver": 1, "spleen": 2}, "Labels: liver, spleen"),
    ({"background": 0, "liver": 1, "ignore": 2},
     "Labels: liver (sparse: some voxels marked 'ignore', not annotated)"),
    ({"background": 0, "liver": 1, "organs": [1, 2]},   # regions, without the values to paint them with
     "Regions not usable: region labels need 'regions_class_order': the value each region is written with "
     "in a prediction, in the order of labels"),
])
def test_the_training_tab_summarises_a_dataset_folder(tmp_path, labels, line):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    assert dataset_summary(str(tmp_path)) == line
    assert dataset_summary(str(tmp_path / "absent")) == "" and dataset_summary("") == ""


def test_a_case_failing_midway_leaves_no_dataset(tmp_path):
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    pairs[1].volume.SetAndObserveImageData(None)   # e.g. a volume whose data was removed
    builder = DatasetBuilder(pairs, tmp_path / "ds")
    builder.step()
    assert builder.done == 1
    with pytest.raises(InputError, match="volume 'Patient B' has no image data"):
        builder.step()
    builder.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_transformed_volume_is_refused_by_name_before_writing(tmp_path):
    """The case is written from the volume's voxels on its own grid: under a transform (a
    registration not yet hardened) the image would not lie where the user sees it."""
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    chain_of_transforms(scene, pairs[1].volume, ((5.0, 0.0, 0.0), (0.0, 0.0, 1.0), 10.0))
    assert pairs[1].volume.GetParentTransformNode().IsA("vtkMRMLLinearTransformNode")
    with pytest.raises(InputError, match=r"^Volume 'Patient B' is transformed; harden its transform first"):
        DatasetBuilder(pairs, tmp_path / "Dataset506_Transformed")
    assert list(tmp_path.iterdir()) == []


def test_a_segmentation_under_nested_transforms_is_written_where_it_lies(tmp_path):
    """Slicer's export wrote an empty label map for a segmentation under transform A under B (a
    registration applied on top of another), and the case silently trained as background."""
    scene = new_scene()
    pairs, expected_labels, _ = two_cases(scene)
    chain_of_transforms(scene, pairs[0].segmentation, ((10.0, 0.0, 0.0), (0.0, 0.0, 1.0), 90.0),
                        ((0.0, 20.0, 0.0), (1.0, 0.0, 0.0), 90.0))
    import_label_map(scene, expected_labels[0], oblique_grid(), {1: "liver", 2: "kidney"},
                     segmentation_node=pairs[0].segmentation, reference_volume=pairs[0].volume)
    rename_segments(pairs[0].segmentation, ["Liver", "Left kidney"])
    summary = build_dataset_from_scene(pairs, tmp_path / "Dataset502_Nested", channel_name="CT")
    for name, labels in zip(("case_000", "case_001"), expected_labels):
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(summary.folder / "labelsTr" / f"{name}.nii.gz")))
        np.testing.assert_array_equal(written, labels)


def test_a_segment_that_misses_its_volume_is_warned_about(tmp_path):
    """A segment drawn on another scan, or beyond this one's field of view, would train as
    background without a word: say which segment, and how much of it is on the volume."""
    scene = new_scene()
    pairs, _, grids = two_cases(scene)
    wider = dataclasses.replace(grids[0], size=(20, 11, 7))   # the volume's grid, 7 voxels more along i
    labels = np.zeros(wider.shape_zyx, np.uint8)
    labels[4:7, 2:7, 14:18] = 1     # liver: wholly beyond the volume (i >= 13)
    labels[1:4, 2:7, 11:17] = 2     # kidney: 2 of its 6 columns on the volume
    segmentation = pairs[0].segmentation
    import_label_map(scene, labels, wider, {1: "liver", 2: "kidney"}, segmentation_node=segmentation,
                     reference_volume=pairs[0].volume)
    rename_segments(segmentation, ["Liver", "Left kidney"])
    summary = build_dataset_from_scene(pairs, tmp_path / "Dataset503_Misses", channel_name="CT")
    name = segmentation.GetName()
    assert (f"case_000: segment 'Liver' of '{name}' lies outside volume 'Patient A' (drawn on another scan?)"
            in summary.warnings)
    assert (f"case_000: segment 'Left kidney' of '{name}' lies outside volume 'Patient A' for the most part "
            "(only 33% of it is on the volume)" in summary.warnings)
    assert not [warning for warning in summary.warnings if warning.startswith("case_001")]   # resampled, not cut


def test_overlapping_segments_are_warned_about_and_the_later_one_wins(tmp_path):
    """A label map holds one value per voxel: where a user's segments overlap (drawn with
    overlap allowed), the later segment's value is written and the voxels are counted."""
    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid, name="Patient A")
    first = np.zeros(grid.shape_zyx, np.uint8)
    first[1:4, 2:7, 3:9] = 1                         # 3 * 5 * 6 = 90 voxels
    liver = import_label_map(scene, first, grid, {1: "liver"}, reference_volume=volume)
    second = np.zeros(grid.shape_zyx, np.uint8)
    second[3:6, 5:9, 7:12] = 1                       # shares z 3, y 5-6, x 7-8 with the liver: 4 voxels
    kidney = import_label_map(scene, second, grid, {1: "kidney"}, reference_volume=volume)
    segmentation = liver.GetSegmentation()
    segmentation.CopySegmentFromSegmentation(kidney.GetSegmentation(), kidney.GetSegmentation().GetNthSegmentID(0))
    summary = build_dataset_from_scene([CasePair(volume, liver)], tmp_path / "Dataset505_Overlap")
    assert summary.warnings == ["case_000: segment 'Kidney' overlaps earlier segments in 4 voxels (it wins there)"]
    written = tmp_path / "Dataset505_Overlap" / "labelsTr" / "case_000.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(written)))
    expected = np.where(second == 1, summary.labels["kidney"], np.where(first == 1, summary.labels["liver"], 0))
    np.testing.assert_array_equal(labels, expected)


# -- which slices a sparsely annotated case was drawn on ----------------------------------------

def organ(shape=(40, 60, 50)) -> np.ndarray:
    """A large ellipsoid (label 1), as a user would outline it slice by slice."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    inside = ((z - 20) / 16.0) ** 2 + ((y - 30) / 25.0) ** 2 + ((x - 25) / 20.0) ** 2 <= 1
    return inside.astype(np.uint8)


def keep_slices(labels: np.ndarray, axis: int, indices) -> np.ndarray:
    kept = np.zeros_like(labels)
    index = [slice(None)] * 3
    index[axis] = list(indices)
    kept[tuple(index)] = labels[tuple(index)]
    return kept


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_every_fifth_slice_is_found_across_whichever_axis_it_was_drawn(axis):
    labels = keep_slices(organ(), axis, range(8, 35, 5))
    found = find_drawn_slices(labels)
    assert found.axis == axis and found.axis_name == "KJI"[axis]
    assert np.flatnonzero(found.drawn).tolist() == list(range(8, 35, 5))


def test_gaps_beat_a_smaller_share_of_drawn_slices():
    """Every other axial slice of a structure long in S-I and thin in P-A: a larger share of the
    K slices than of the J slices holds a voxel, but only across K are there gaps."""
    labels = np.zeros((40, 60, 50), np.uint8)
    labels[2:39:2, 25:35, 10:40] = 1
    assert labels.any(axis=(1, 2)).mean() > 2 * labels.any(axis=(0, 2)).mean()
    assert find_drawn_slices(labels).axis == 0


def test_a_single_drawn_slice_is_found():
    assert find_drawn_slices(keep_slices(organ(), 2, [25])).axis == 2
    assert find_drawn_slices(keep_slices(organ(), 1, [30])).axis == 1


def test_a_block_of_consecutive_slices_is_found_by_its_abrupt_ends():
    """13 consecutive axial slices of an organ drawn, in a scan of 40 slices of 200 x 200: a larger
    share of the K slices than of the J or I ones holds a voxel and nothing has gaps, but only
    across K does the drawing end abruptly (the organ tapers off along J and I)."""
    z, y, x = np.ogrid[:40, :200, :200]
    labels = ((((z - 20) / 16.0) ** 2 + ((y - 100) / 25.0) ** 2 + ((x - 100) / 20.0) ** 2) <= 1).astype(np.uint8)
    labels[:14] = 0
    labels[27:] = 0
    assert labels.any(axis=(1, 2)).mean() > labels.any(axis=(0, 2)).mean() > labels.any(axis=(0, 1)).mean()
    found = find_drawn_slices(labels)
    assert found.axis == 0 and np.flatnonzero(found.drawn).tolist() == list(range(14, 27))


def test_a_drawing_alike_across_every_axis_keeps_the_stored_slices():
    """Nothing tells the axis drawn on (a box on every slice it crosses, in a cube): K, as
    stored, and so no line about another orientation."""
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:8, 2:8, 2:8] = 1
    found = find_drawn_slices(labels)
    assert found.axis == 0 and np.flatnonzero(found.drawn).tolist() == list(range(2, 8))


def test_without_gaps_the_smallest_share_of_drawn_slices_wins_not_the_shortest_range():
    """60 consecutive axial slices of a long scan drawn, of a structure 40 of 100 voxels wide: the
    drawing spans more K slices than J or I ones, yet the smallest share of them (a fifth)."""
    labels = np.zeros((300, 100, 100), np.uint8)
    labels[10:70, 30:70, 30:70] = 1
    assert find_drawn_slices(labels).axis == 0


def test_nothing_drawn_keeps_the_stored_slices_all_unannotated():
    found = find_drawn_slices(np.zeros((4, 5, 6), np.uint8))
    assert found.axis == 0 and found.drawn.shape == (4,) and not found.drawn.any()


def test_undrawn_slices_get_the_ignore_value_and_drawn_ones_keep_their_background():
    labels = keep_slices(organ(), 1, [10, 30, 50])
    labels[labels > 0] = 2
    original = labels.copy()
    found = mark_undrawn_slices(labels, 7)
    assert found.axis == 1
    np.testing.assert_array_equal(labels[:, [10, 30, 50]], original[:, [10, 30, 50]])
    assert (labels[:, [10, 30, 50]] == 0).any()                         # drawn slices keep background
    assert set(np.unique(np.delete(labels, [10, 30, 50], axis=1))) == {7}


def test_slice_names_follow_the_volume_direction():
    identity = np.eye(3)   # i = L, j = P, k = S
    assert [slice_orientation(identity, axis) for axis in range(3)] == ["axial", "coronal", "sagittal"]
    stored_sagittally = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])   # k = L, i = P, j = -S
    assert [slice_orientation(stored_sagittally, axis) for axis in range(3)] == ["sagittal", "axial", "coronal"]


@pytest.mark.parametrize("drawn_slices_only", [False, True])
def test_empty_segments_and_a_case_with_nothing_drawn_are_warned_about(tmp_path, drawn_slices_only):
    """A segment that exists but was never painted trains as background just like a missing one
    (or, with drawn slices only, a case with nothing drawn teaches nothing): said by case."""
    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    pairs[1].segmentation.GetSegmentation().AddEmptySegment("liver", "Liver")   # B: a liver segment, never painted
    volume_c = add_scalar_volume(scene, distinct_voxel_values(), oblique_grid(), name="Patient C")
    nothing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Nothing drawn")
    nothing.SetReferenceImageGeometryParameterFromVolumeNode(volume_c)
    for name in ("Liver", "Spleen"):
        nothing.GetSegmentation().AddEmptySegment(name.lower(), name)
    summary = build_dataset_from_scene(pairs + [CasePair(volume_c, nothing)], tmp_path / "ds",
                                       drawn_slices_only=drawn_slices_only)
    segmentations = [pair.segmentation.GetName() for pair in pairs]
    unannotated = ("with 'only slices with a segment are annotated' the whole case is unannotated and teaches "
                   "nothing" if drawn_slices_only else "the whole case is learned as background")
    assert summary.warnings == [
        f"case_002 ('Nothing drawn') has no segment voxel at all: {unannotated}",
        f"case_000 ('{segmentations[0]}') has no segment spleen: the model learns it as background there "
        "(right only if that case has none)",
        f"case_001 ('{segmentations[1]}') has an empty segment liver: the model learns it as background there "
        "(right only if that case has none)",
        "case_002 ('Nothing drawn') has no segment left_kidney and an empty segment liver, spleen: the model learns "
        "it as background there (right only if that case has none)"]


def test_a_volume_paired_twice_is_refused(tmp_path):
    """The same scan as two cases could be trained on and validated on at once."""
    from MaskSAMSegmentLib.dataset_builder import check_pairs

    scene = new_scene()
    pairs, _, _ = two_cases(scene)
    assert check_pairs(pairs + [pairs[0]]) == ["Volume 'Patient A' is in more than one pair; remove all but one."]
    with pytest.raises(InputError, match="'Patient A' is in more than one pair"):
        build_dataset_from_scene(pairs + [CasePair(pairs[0].volume, pairs[1].segmentation)], tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def test_a_case_of_many_segments_is_exported_once_per_layer(tmp_path, monkeypatch):
    """Each export runs in Slicer's GUI thread: a case of 30 segments drawn in one layer (as
    the Segment Editor stores them without overlap) takes one export, not 30, with the same
    label map."""
    import MaskSAMSegmentLib.dataset_builder as dataset_builder

    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid, name="Patient A")
    drawn = (np.arange(int(np.prod(grid.shape_zyx))).reshape(grid.shape_zyx) % 31).astype(np.uint8)
    names = {value: f"structure {value}" for value in range(1, 31)}
    segmentation = import_label_map(scene, drawn, grid, names, reference_volume=volume)
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 1
    calls = []
    real_export = dataset_builder.export_segments_on_volume
    monkeypatch.setattr(dataset_builder, "export_segments_on_volume",
                        lambda *args: calls.append(args[2]) or real_export(*args))
    summary = build_dataset_from_scene([CasePair(volume, segmentation)], tmp_path / "Dataset506_Many")
    assert len(calls) == 1 and len(calls[0]) == 30
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "Dataset506_Many" / "labelsTr" / "case_000.nii.gz")))
    np.testing.assert_array_equal(labels, drawn)
    assert summary.warnings == []
