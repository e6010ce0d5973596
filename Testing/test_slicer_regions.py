"""Region models and region datasets (nnU-Net v2's BraTS-like labels) in the Slicer module, on a
real MRML scene: a region model shows and names its segments by its regions, its label maps (each
region painted with its regions_class_order value, a later region over an earlier one) become one
segment per region, overlapping where the regions do, at each voxel's world position; the Training
tab describes a region dataset by its regions."""

from __future__ import annotations

import inspect
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from MaskSAMCore.terminology import AnatomyTerminology
from slicer_support import add_scalar_volume, chain_of_transforms, distinct_voxel_values, new_scene, oblique_grid
from test_slicer_geometry import segment_mask_on
from test_slicer_jobs import fake_model_folder

from MaskSAMCore.data.regions import region_scheme
from MaskSAMCore.errors import ModelFolderError
from MaskSAMSegmentLib.dataset_builder import dataset_summary, read_dataset_labels
from MaskSAMSegmentLib.job_runner import JobState
from MaskSAMSegmentLib.models import read_model_info
from MaskSAMSegmentLib.segment_job import SegmentJob, SegmentRequest
from MaskSAMSegmentLib.segmentations import (LABEL_NAME_TAG, REGION_VALUES_TAG, export_label_values_on_volume,
                                             export_segments_on_volume, import_label_map, segment_label_values,
                                             segment_tag)

BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
BRATS_ORDER = [1, 2, 3]
REGIONS = ["whole tumor", "tumor core", "enhancing tumor"]
NEOPLASM = "SCT^108369006^Neoplasm"


def region_model_folder(folder: Path, regions: object = None, labels: object = None) -> Path:
    """A model folder of a model trained on BraTS-like regions: model.json as the core writes it
    (labels = the network's classes, "regions" = the scheme, format version 2)."""
    scheme = region_scheme(BRATS_LABELS, BRATS_ORDER)
    fake_model_folder(folder, labels=labels or scheme.class_labels, channel_names={"0": "T1c"})
    meta = json.loads((folder / "model.json").read_text())
    meta.update(format_version=2, name="Glioma model", modality="MR",
                regions=scheme.to_dict() if regions is None else regions)
    meta["plan"]["regions"] = meta["regions"]   # preprocessing reads the plan's copy
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def painted_output(shape_zyx) -> np.ndarray:
    """A region model's label map: whole tumor painted 1, tumor core 2 over it, enhancing tumor
    3 over that (nested boxes, each also reaching the edge of the one around it)."""
    output = np.zeros(shape_zyx, dtype=np.uint8)
    output[1:6, 2:10, 2:12] = 1
    output[2:5, 3:8, 3:9] = 2
    output[3:5, 4:6, 4:8] = 3
    output[2, 3, 3] = 3
    return output


def region_masks(output: np.ndarray) -> dict:
    return {"whole tumor": output > 0, "tumor core": output >= 2, "enhancing tumor": output == 3}


def test_a_region_model_shows_its_regions_with_the_values_of_its_label_maps(tmp_path):
    model = read_model_info(region_model_folder(tmp_path / "model"))
    assert model.labels == {"background": 0, "whole tumor": 1, "tumor core": 2, "enhancing tumor": 3}
    assert model.structures == REGIONS
    assert model.names_by_value == {0: "background", 1: "whole tumor", 2: "tumor core", 3: "enhancing tumor"}
    assert model.region_values == {1: (1, 2, 3), 2: (2, 3), 3: (3,)}
    assert model.summary().splitlines()[0] == "Regions (3): whole tumor, tumor core, enhancing tumor"
    # A model of plain labels is described as before.
    plain = read_model_info(fake_model_folder(tmp_path / "plain"))
    assert plain.regions is None and plain.region_values is None
    assert plain.summary().splitlines()[0] == "Structures (2): liver, spleen"


@pytest.mark.parametrize("regions, labels, message", [
    ("whole tumor", None, "regions: damaged region description"),
    ({"regions": {"whole tumor": [1, 2, 3]}}, None, "regions: damaged region description"),
    ({"regions": {"whole tumor": [1, 2], "tumor core": [2]}, "regions_class_order": [1]}, None,
     "regions: 'regions_class_order' has 1 value"),
    ({**region_scheme(BRATS_LABELS, BRATS_ORDER).to_dict(), "classes": 5}, None, "regions: damaged region description"),
    ({**region_scheme(BRATS_LABELS, BRATS_ORDER).to_dict(), "classes": {"background": [0]}}, None,
     "regions: its classes do not follow from its regions"),
    ({**region_scheme(BRATS_LABELS, BRATS_ORDER).to_dict(), "regions_class_order": [1, 1, 2]}, None,
     "gives two regions the same value"),
    (None, {"background": 0, "edema": 1, "core": 2, "enhancing": 3}, "its labels are not the classes of its regions"),
], ids=["not_a_mapping", "no_order", "order_too_short", "classes_not_a_mapping", "wrong_classes",
        "shared_order_value", "labels_not_its_classes"])
def test_damaged_regions_are_refused_in_one_line(tmp_path, regions, labels, message):
    folder = region_model_folder(tmp_path / "model", regions=regions, labels=labels)
    with pytest.raises(ModelFolderError) as caught:
        read_model_info(folder)
    assert message in str(caught.value) and "model.json" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("where", ["new_node", "replaced_node_under_transforms"])
def test_a_region_label_map_becomes_overlapping_region_segments_in_their_world_place(tmp_path, where):
    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid)
    model = read_model_info(region_model_folder(tmp_path / "model"))
    output = painted_output(grid.shape_zyx)
    existing = None
    if where != "new_node":
        existing = import_label_map(scene, (output > 0).astype(np.uint8), grid, {1: "liver"}, reference_volume=volume)
        chain_of_transforms(scene, existing, ((5.0, -3.0, 2.0), (0.0, 0.0, 1.0), 20.0),
                            ((-7.0, 1.0, 4.0), (1.0, 1.0, 0.0), -35.0))

    node = import_label_map(scene, output, grid, model.names_by_value, segmentation_node=existing,
                            reference_volume=volume, regions=model.region_values)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [segment_tag(s, LABEL_NAME_TAG) for s in segments] == REGIONS
    assert [s.GetName() for s in segments] == ["Whole tumor", "Tumor core", "Enhancing tumor"]   # not 3 x "Tumor"
    assert len({tuple(s.GetColor()) for s in segments}) == 3
    assert all(NEOPLASM in segment_tag(s, s.GetTerminologyEntryTagName()) for s in segments)
    assert [segment_tag(s, REGION_VALUES_TAG) for s in segments] == ["1,2,3", "2,3", "3"]
    assert sorted(segment_label_values(node).values()) == [1, 2, 3]

    # Each region holds every voxel of its values (nnU-Net's reading of a region prediction), so
    # whole tumor holds tumor core, which holds enhancing tumor.
    expected = region_masks(output)
    assert [int(m.sum()) for m in expected.values()] == [400, 90, 17]
    ids = {segment_tag(segmentation.GetSegment(i), LABEL_NAME_TAG): i for i in segmentation.GetSegmentIDs()}
    for name, mask in expected.items():
        exported = export_segments_on_volume(node, volume, [ids[name]]) > 0
        np.testing.assert_array_equal(exported, mask, err_msg=name)
    if where == "new_node":
        # Found by world position from each segment's own labelmap (not through an export).
        for name, value in (("whole tumor", 1), ("tumor core", 2), ("enhancing tumor", 3)):
            np.testing.assert_array_equal(segment_mask_on(grid.ijk_to_ras(), grid.shape_zyx, node, value),
                                          expected[name], err_msg=name)
        assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    else:
        assert node is existing and node.GetParentTransformNode() is not None
    # Exported together in their order, the later region over the earlier: the painted map again.
    np.testing.assert_array_equal(export_label_values_on_volume(node, volume), output)


def test_values_in_no_region_keep_a_segment_of_their_own(tmp_path):
    scene = new_scene()
    grid = oblique_grid()
    model = read_model_info(region_model_folder(tmp_path / "model"))
    output = painted_output(grid.shape_zyx)
    output[0, 0, 0:2] = 7
    node = import_label_map(scene, output, grid, model.names_by_value, regions=model.region_values)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
        "Whole tumor", "Tumor core", "Enhancing tumor", "Label 7"]
    stray = {v: k for k, v in segment_label_values(node).items()}[7]
    assert segment_tag(segmentation.GetSegment(stray), REGION_VALUES_TAG) == ""
    assert segment_mask_on(grid.ijk_to_ras(), grid.shape_zyx, node, 7).sum() == 2


def test_an_absent_region_still_gets_its_empty_segment(tmp_path):
    scene = new_scene()
    grid = oblique_grid()
    model = read_model_info(region_model_folder(tmp_path / "model"))
    output = np.minimum(painted_output(grid.shape_zyx), 2)    # no enhancing tumor found
    node = import_label_map(scene, output, grid, model.names_by_value, regions=model.region_values)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    assert segment_mask_on(grid.ijk_to_ras(), grid.shape_zyx, node, 3).sum() == 0
    assert segment_mask_on(grid.ijk_to_ras(), grid.shape_zyx, node, 2).sum() == 90


def test_labels_read_as_one_structure_get_names_and_colours_of_their_own():
    terminology = AnatomyTerminology()
    styles = terminology.styles([("whole tumor", 1), ("tumor core", 2), ("liver", 3), ("blob", 4)])
    assert [s.name for s in styles] == ["Whole tumor", "Tumor core", "Liver", "Blob"]
    assert styles[0].color != styles[1].color
    assert styles[0].terminology == styles[1].terminology == terminology.style("tumor", 1).terminology
    assert styles[2] == terminology.style("liver", 3) and styles[3] == terminology.style("blob", 4)
    assert terminology.styles([("tumor", 1), ("kidney left", 2)]) == [terminology.style("tumor", 1),
                                                                      terminology.style("kidney left", 2)]


def stand_in_core(tmp_path: Path) -> Path:
    """An executable standing in for ``python -m MaskSAMCore ... predict MODEL INPUT OUTPUT``: it
    writes `painted_output` on the input's grid, as a region model's prediction."""
    script = tmp_path / "region_core.py"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        import numpy as np
        import SimpleITK as sitk
        """) + inspect.getsource(painted_output) + textwrap.dedent("""\
        arguments = sys.argv[sys.argv.index("predict") + 1:]
        image = sitk.ReadImage(arguments[1])
        labels = sitk.GetImageFromArray(painted_output(sitk.GetArrayFromImage(image).shape))
        labels.CopyInformation(image)
        sitk.WriteImage(labels, arguments[2])
        """))
    script.chmod(0o755)
    return script


def test_segmenting_with_a_region_model_gives_one_segment_per_region(tmp_path):
    scene = new_scene()
    grid = oblique_grid()
    volume = add_scalar_volume(scene, distinct_voxel_values(), grid)
    model = read_model_info(region_model_folder(tmp_path / "model"))
    job = SegmentJob(scene, SegmentRequest([volume], model), python=str(stand_in_core(tmp_path)))
    job.start()
    assert job.wait(timeout_s=60) is JobState.SUCCEEDED, job.error_message
    node = job.result_node
    segmentation = node.GetSegmentation()
    assert [segment_tag(segmentation.GetNthSegment(i), LABEL_NAME_TAG)
            for i in range(segmentation.GetNumberOfSegments())] == REGIONS
    for value, mask in zip((1, 2, 3), region_masks(painted_output(grid.shape_zyx)).values()):
        np.testing.assert_array_equal(segment_mask_on(grid.ijk_to_ras(), grid.shape_zyx, node, value), mask)


def write_dataset_json(folder: Path, labels: dict, **more) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, **more}))
    return folder


@pytest.mark.parametrize("labels, more, line", [
    (BRATS_LABELS, {"regions_class_order": BRATS_ORDER}, "Regions (3): whole tumor, tumor core, enhancing tumor"),
    ({**BRATS_LABELS, "ignore": 4}, {"regions_class_order": BRATS_ORDER},
     "Regions (3): whole tumor, tumor core, enhancing tumor (sparse: some voxels marked 'ignore', not annotated)"),
    (BRATS_LABELS, {}, "Regions not usable: region labels need 'regions_class_order'"),
    (BRATS_LABELS, {"regions_class_order": [1, 2]}, "Regions not usable: 'regions_class_order' has 2 value(s) "
                                                    "for 3 region(s)"),
], ids=["regions", "sparse_regions", "no_order", "order_too_short"])
def test_the_training_tab_summarises_a_region_dataset_by_its_regions(tmp_path, labels, more, line):
    folder = write_dataset_json(tmp_path / "Dataset002_Glioma", labels, **more)
    assert dataset_summary(str(folder)).startswith(line)
    assert "\n" not in dataset_summary(str(folder))


def test_the_training_tab_reads_a_dataset_json_with_a_byte_order_mark(tmp_path):
    folder = write_dataset_json(tmp_path / "Dataset003_Windows", {"background": 0, "liver": 1})
    (folder / "dataset.json").write_text((folder / "dataset.json").read_text(), encoding="utf-8-sig")
    assert dataset_summary(str(folder)) == "Labels: liver"


def test_a_region_datasets_labels_are_the_values_its_predictions_hold(tmp_path):
    folder = write_dataset_json(tmp_path / "Dataset002_Glioma", {**BRATS_LABELS, "ignore": 4},
                                regions_class_order=BRATS_ORDER)
    assert read_dataset_labels(folder) == {"background": 0, "whole tumor": 1, "tumor core": 2,
                                           "enhancing tumor": 3, "ignore": 4}
