"""`--probabilities`: the npz lies on the input's grid, sums to 1 and agrees with the label map."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.preprocessing import preprocess_case, restore_scores_argmax
from MaskSAMCore.inference.export import write_probabilities
from MaskSAMCore.inference.random_model import synthetic_plan
from MaskSAMCore.model.config import preset

CLASSES = 4
GEOMETRY = ImageGeometry((41, 37, 9), (0.7, 0.9, 3.0), (-12.5, 40.25, 7.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))


def resampling_case():
    """(plan, properties) of a preprocessing that crops a zero border and resamples every axis."""
    config = preset("tiny", num_classes=CLASSES)
    plan = synthetic_plan(config, (2.5, 1.2, 1.2))
    rng = np.random.default_rng(0)
    image = rng.normal(0, 200, size=(1, *GEOMETRY.shape_zyx)).astype(np.float32)
    image[:, :, :3] = 0.0  # y rows 0-2: cropped away, pasted back as background
    _, _, properties = preprocess_case(image, GEOMETRY, plan)
    assert list(properties["shape_after_resampling"]) != list(properties["shape_after_transpose"])
    return plan, properties


def network_like_scores(shape, seed=0, queries=6) -> np.ndarray:
    """(K, T', H', W') float16 like the network's: sum over queries of softmax(class) x sigmoid(mask),
    so the total over classes varies from voxel to voxel."""
    rng = np.random.default_rng(seed)
    classes = np.exp(rng.normal(0, 2, (queries, CLASSES)))
    classes /= classes.sum(axis=1, keepdims=True)
    logits = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5) * 30 for _ in range(queries)])
    return np.einsum("qk,qzyx->kzyx", classes, 1 / (1 + np.exp(-logits))).astype(np.float16)


def read_probabilities(path):
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


def test_probabilities_argmax_is_the_label_map_when_preprocessing_resampled(tmp_path):
    plan, properties = resampling_case()
    scores = network_like_scores(properties["shape_after_resampling"])
    labels = restore_scores_argmax(scores, properties, plan)   # what predict writes with --probabilities
    assert len(np.unique(labels)) == CLASSES
    write_probabilities(scores, properties, [f"class_{k}" for k in range(CLASSES)], tmp_path / "p.npz")
    saved = read_probabilities(tmp_path / "p.npz")
    probabilities = saved["probabilities"]
    assert probabilities.dtype == np.float16 and probabilities.shape == (CLASSES, *GEOMETRY.shape_zyx)
    assert tuple(saved["size"]) == GEOMETRY.size and tuple(saved["spacing"]) == GEOMETRY.spacing
    assert tuple(saved["origin"]) == GEOMETRY.origin and tuple(saved["direction"]) == GEOMETRY.direction
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    # The only disagreement float16 storage allows: the label's class ties with a lower one.
    top = probabilities.max(axis=0)
    of_label = np.take_along_axis(probabilities, labels[None].astype(np.int64), axis=0)[0]
    np.testing.assert_array_equal(of_label, top)
    disagree = probabilities.argmax(axis=0) != labels
    assert disagree.mean() < 1e-3
    assert (probabilities[0][:, :3] == 1).all() and (labels[:, :3] == 0).all()


def test_voxels_without_any_score_are_background_with_probability_1(tmp_path):
    """Where every class's float16 score underflowed to 0 (no query's mask reaches the voxel) the
    label map says background; the probabilities must say so too, still summing to 1."""
    plan, properties = resampling_case()
    scores = network_like_scores(properties["shape_after_resampling"], seed=1)
    # The last network columns (W): nothing predicted at all. W is the input's y here: its y axis
    # runs towards the patient's left, and preprocessing reorients to LPS voxel order.
    scores[..., -8:] = 0.0
    labels = restore_scores_argmax(scores, properties, plan)
    write_probabilities(scores, properties, [f"class_{k}" for k in range(CLASSES)], tmp_path / "p.npz")
    probabilities = read_probabilities(tmp_path / "p.npz")["probabilities"]
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    assert (labels[:, -5:] == 0).all() and (probabilities[0][:, -5:] == 1).all()


def test_the_file_says_which_label_each_channel_is_written_as_and_a_region_models_regions(tmp_path):
    """A region model's channels are its classes, not label values: channel 2 (values 3 and 4,
    "kidneys" inside "solid organs") is written as 3, and "solid organs" is channels 1 and 2."""
    import json

    import torch
    from test_inference_contracts import StandIn, smooth_case, stand_in_predictor
    from test_training_regions import CLASSES as REGION_CLASSES, ORDER, REGIONS

    from MaskSAMCore.data.image_io import read_label
    from MaskSAMCore.data.regions import region_scheme

    def four_bands(patches: torch.Tensor) -> torch.Tensor:
        """Class k wins in the k-th band of the normalised intensity."""
        centres = torch.tensor([-1.5, -0.5, 0.5, 1.5])[None, :, None, None, None]
        return torch.exp(-(patches[:, :1] - centres) ** 2)

    image, geometry = smooth_case()
    predictor = stand_in_predictor(StandIn(4, four_bands), (3.0, 1.0, 1.0))
    predictor.regions, predictor.class_names = region_scheme(REGIONS, ORDER), list(REGION_CLASSES)
    predictor.predict_prepared(predictor.prepare(image, geometry), tmp_path / "case.nii.gz", probabilities=True)
    saved = read_probabilities(tmp_path / "case_probabilities.npz")
    assert saved["label_values"].tolist() == [0, 1, 3, 5]
    assert json.loads(str(saved["regions"])) == {
        "solid organs": {"channels": [1, 2], "label_values": [1, 2, 3, 4], "written_as": 1},
        "kidneys": {"channels": [2], "label_values": [3, 4], "written_as": 3},
        "aorta": {"channels": [3], "label_values": [5], "written_as": 5}}
    # what the label map holds where a channel wins: its label value
    labels = read_label(tmp_path / "case.nii.gz")[0]
    assert set(np.unique(labels).tolist()) == {0, 1, 3, 5}
    assert (saved["label_values"][saved["probabilities"].argmax(axis=0)] == labels).mean() > 0.999

    plan, properties = resampling_case()
    scores = network_like_scores(properties["shape_after_resampling"])
    write_probabilities(scores, properties, [f"class_{k}" for k in range(CLASSES)], tmp_path / "classes.npz")
    saved = read_probabilities(tmp_path / "classes.npz")
    assert saved["label_values"].tolist() == [0, 1, 2, 3] and "regions" not in saved
