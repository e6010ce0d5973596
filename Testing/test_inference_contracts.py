"""Behaviour of the inference and geometry core that no other test pinned (found by mutation
testing): the out-of-memory fallbacks, where a small volume sits in its window, NaN scores (and
bf16's retry in float32), the whole predictor under bf16 autocast, what the fast options and
`--probabilities` change, voxels without any score, models with more than 256 classes, the npz
and label map appearing together, and thick slices interpolated linearly along z. (The data
layer's rules found the same way are in test_data_resampling.py and test_data_preprocessing.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.inference.sliding_window import (WindowJob, WindowSettings, predict_with_fallback,
                                                  sliding_window_predict)

CPU = torch.device("cpu")
PATCH = (4, 16, 16)


def ramp_net(x: torch.Tensor) -> torch.Tensor:
    """(M, 1, T, H, W) -> (M, 2, T, H, W): class 1 rises with the intensity; not flip-equivariant
    (a term that grows along W), so every flip changes its output."""
    w = torch.linspace(0.0, 0.3, x.shape[-1])
    foreground = torch.sigmoid(2.0 * x[:, :1] + w)
    return torch.cat([1.0 - foreground, foreground], dim=1)


# -- the out-of-memory fallback --------------------------------------------------------------------

def test_out_of_memory_with_one_window_splits_its_flips_before_giving_up():
    """A GPU that holds 4 flips of one window but not 8: prediction must go on with 4 flips per
    forward (same result), not end with "out of memory"."""
    volume = np.random.default_rng(0).normal(size=(1, 6, 20, 20)).astype(np.float32)
    seen = []

    def four_flips_fit(x):
        seen.append(x.shape[0])
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return ramp_net(x)

    result, _, used = predict_with_fallback(WindowJob(volume, four_flips_fit, PATCH, 2, CPU, progress_stage=None),
                                            WindowSettings(window_batch=1))
    assert used.window_batch == 1 and used.flips_per_forward == 4 and not used.accumulate_on_host
    assert seen[0] == 8 and set(seen[1:]) == {4}
    expected, _ = sliding_window_predict(WindowJob(volume, ramp_net, PATCH, 2, CPU, progress_stage=None),
                                         WindowSettings())
    np.testing.assert_array_equal(result, expected)


# -- where the network sees a small volume ---------------------------------------------------------

def test_a_volume_smaller_than_the_patch_is_centred_in_the_window_as_training_centres_it():
    """Training pads a case smaller than the patch on both sides (`sampling.patch_start`); the
    network (with its depth embeddings) must see it at the same place when predicting."""
    from MaskSAMCore.data.sampling import patch_start

    shape = (2, 10, 13)
    seen = []

    def recording(x):
        seen.append(x[0, 0].clone())
        return ramp_net(x)

    sliding_window_predict(WindowJob(np.ones((1, *shape), np.float32), recording, PATCH, 2, CPU, progress_stage=None),
                           WindowSettings(mirror=False))
    assert len(seen) == 1
    start = patch_start(shape, PATCH, np.random.default_rng(0))   # unique here: no random choice left
    expected = np.zeros(PATCH, np.float32)
    expected[tuple(slice(-s, -s + n) for s, n in zip(start, shape))] = 1.0
    np.testing.assert_array_equal(seen[0].numpy(), expected)


# -- NaN scores ------------------------------------------------------------------------------------

def test_nan_scores_in_any_window_of_a_batch_are_reported():
    """Half precision overflowing in one window of a batch (not the first) must still be caught:
    the predictor then redoes the case in float32 instead of writing labels argmaxed from NaN."""
    volume = np.zeros((1, 12, 16, 16), np.float32)
    volume[0, -1] = 5.0   # only the last window (slices 8-11) reaches it

    def overflowing(x):
        scores = ramp_net(x)
        hot = x.flatten(1).amax(dim=1) > 1.0
        scores[hot] = float("nan")
        return scores

    for window_batch in (1, 2, 5):
        _, finite = sliding_window_predict(WindowJob(volume, overflowing, PATCH, 2, CPU, progress_stage=None),
                                           WindowSettings(mirror=False, window_batch=window_batch))
        assert finite is False, window_batch


# -- the predictor with a stand-in network ---------------------------------------------------------

class StandIn(torch.nn.Module):
    """Stands in for MaskSAM (patch (4, 16, 16)): `scores` maps patches (M, 1, T, H, W) to class
    scores (M, K, T, H, W); every forward's batch size is recorded."""

    def __init__(self, classes: int, scores) -> None:
        super().__init__()
        from MaskSAMCore.model.config import preset

        self.config = preset("tiny", num_classes=classes, image_size=16)
        self.scores = scores
        self.batch_sizes = []

    def segment(self, patches: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(patches.shape[0])
        return self.scores(patches)


def soft_threshold(patches: torch.Tensor) -> torch.Tensor:
    """Two classes, class 1 rising smoothly with the normalised intensity (scores in (0, 1))."""
    foreground = torch.sigmoid(3.0 * patches[:, :1])
    return torch.cat([1.0 - foreground, foreground], dim=1)


def stand_in_predictor(network: StandIn, target_spacing_zyx, options=None):
    from MaskSAMCore.inference.predictor import PredictOptions, Predictor
    from MaskSAMCore.inference.random_model import synthetic_plan

    plan = synthetic_plan(network.config, target_spacing_zyx)
    names = ["background"] + [f"class_{k}" for k in range(1, network.config.num_classes)]
    return Predictor(network, plan, names, CPU, options or PredictOptions(show_progress=False))


def smooth_case(shape_zyx=(7, 23, 19), spacing_xyz=(1.0, 1.0, 3.0)):
    """(image (z, y, x) HU, geometry): a blob whose intensity falls smoothly from its centre."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    image = 500.0 - 700.0 * np.sqrt(0.3 * z ** 2 + (y - 0.2) ** 2 + (x + 0.1) ** 2)
    geometry = ImageGeometry(shape_zyx[::-1], spacing_xyz, (10.0, -20.0, 30.0), tuple(np.eye(3).ravel()))
    return image.astype(np.float32), geometry


def test_a_model_whose_scores_are_nan_is_refused_on_the_cpu():
    """No half precision to blame on the CPU: NaN scores are an error, never a label map."""
    from MaskSAMCore.inference.sliding_window import NonFiniteScores

    network = StandIn(2, lambda x: torch.full((x.shape[0], 2, *x.shape[2:]), float("nan")))
    image, geometry = smooth_case()
    with pytest.raises(NonFiniteScores, match="NaN/Inf"):
        stand_in_predictor(network, (3.0, 1.0, 1.0)).predict_array(image, geometry)


def test_nan_scores_in_half_precision_are_predicted_again_in_float32(capsys):
    """bf16 overflowing on a GPU: the case is redone in float32 with a message, not refused, and
    the next case tries bf16 again. (CPU autocast stands in for the GPU's.)"""
    def overflows_in_half_precision(patches):
        if torch.is_autocast_enabled("cpu"):
            return torch.full((patches.shape[0], 2, *patches.shape[2:]), float("nan"))
        return soft_threshold(patches)

    image, geometry = smooth_case()
    predictor = stand_in_predictor(StandIn(2, overflows_in_half_precision), (3.0, 1.0, 1.0))
    predictor.amp_dtype = torch.bfloat16
    labels = predictor.predict_array(image, geometry)
    assert "NaN/Inf scores in torch.bfloat16; predicting this case again in float32" in capsys.readouterr().err
    reference = stand_in_predictor(StandIn(2, soft_threshold), (3.0, 1.0, 1.0)).predict_array(image, geometry)
    assert np.array_equal(labels, reference) and labels.any()
    assert predictor.amp_dtype == torch.bfloat16


def test_masksam_under_bf16_autocast_gives_the_float32_probabilities(tmp_path):
    """The whole predictor (8 flips, overlapping windows, restoring) as CUDA runs it, in bf16."""
    from MaskSAMCore.inference.predictor import PredictOptions, Predictor
    from MaskSAMCore.inference.random_model import synthetic_plan
    from MaskSAMCore.model.builder import build_masksam
    from MaskSAMCore.model.config import preset

    torch.manual_seed(0)
    config = preset("tiny", num_classes=4)
    model = build_masksam(config).eval()
    image, geometry = smooth_case((9, 40, 35))
    probabilities = {}
    for name, dtype in (("float32", None), ("bf16", torch.bfloat16)):
        predictor = Predictor(model, synthetic_plan(config, (3.0, 1.0, 1.0)), ["background", "a", "b", "c"], CPU,
                              PredictOptions(show_progress=False))
        predictor.amp_dtype = dtype
        predictor.predict_prepared(predictor.prepare(image, geometry), tmp_path / f"{name}.nii.gz", probabilities=True)
        probabilities[name] = np.load(tmp_path / f"{name}_probabilities.npz")["probabilities"].astype(np.float32)
    assert probabilities["bf16"].shape == (4, *geometry.shape_zyx)
    assert np.isfinite(probabilities["bf16"]).all()
    difference = np.abs(probabilities["bf16"] - probabilities["float32"]).max()
    assert 0 < difference < 0.02, difference   # rounded differently, to the same result


def test_fast_options_predict_each_window_once_without_flips():
    """`--fast` (and `--no-mirror`, `--step`) must reach the sliding window: with them every window
    goes through the network once; by default every window is predicted with all 8 flips and
    windows overlap by half."""
    from MaskSAMCore.inference.predictor import PredictOptions
    from MaskSAMCore.inference.windows import WindowGrid

    image, geometry = smooth_case((9, 40, 35))
    counts = {}
    for name, options in (("fast", PredictOptions.fast(show_progress=False)),
                          ("default", PredictOptions(show_progress=False))):
        network = StandIn(2, soft_threshold)
        predictor = stand_in_predictor(network, (3.0, 1.0, 1.0), options)
        result = predictor.predict_prepared(predictor.prepare(image, geometry))
        counts[name] = (sum(network.batch_sizes), result.windows)
    shape = geometry.shape_zyx   # = the network grid here (nothing is cropped or resampled)
    assert counts["fast"] == (len(WindowGrid(shape, PATCH, 1.0)),) * 2
    assert counts["default"] == (8 * len(WindowGrid(shape, PATCH, 0.5)), len(WindowGrid(shape, PATCH, 0.5)))
    assert counts["default"][1] > counts["fast"][1]


def near_tie(patches: torch.Tensor) -> torch.Tensor:
    """Two classes within float16 rounding of each other: 0.5 and 0.5 + 1e-4 tanh(x), both 0.5
    in float16 (whose step there is 5e-4); in float32 class 1 wins where the intensity is positive."""
    lead = 1e-4 * torch.tanh(patches[:, :1])
    return torch.cat([torch.full_like(lead, 0.5), 0.5 + lead], dim=1)


@pytest.mark.parametrize("resampled", [False, True], ids=["same_grid", "resampled"])
def test_the_label_map_does_not_depend_on_asking_for_probabilities(resampled):
    """`--probabilities` only adds a file: the label map is the float32 argmax either way, also at
    near-ties that the float16 scores kept for the probabilities would tip to the lower class."""
    image, geometry = smooth_case((7, 23, 19), (0.8, 0.7, 3.5))
    # resampled: up along z, down in-plane; else the image's own spacing
    predictor = stand_in_predictor(StandIn(2, near_tie), (1.5, 2.1, 2.4) if resampled else (3.5, 0.7, 0.8))
    case = predictor.prepare(image, geometry)
    assert resampled == (case.properties["shape_after_resampling"] != case.properties["shape_after_transpose"])
    labels = predictor.predict_prepared(case).labels
    with_probabilities = predictor.predict_prepared(predictor.prepare(image, geometry), probabilities=True).labels
    assert 0.1 < labels.mean() < 0.9
    np.testing.assert_array_equal(labels, with_probabilities)


@pytest.mark.parametrize("resampled", [False, True], ids=["same_grid", "resampled"])
@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "probabilities"])
def test_where_no_class_scores_anything_the_label_map_says_background(resampled, probabilities):
    """Far from every structure all of a query-based network's class scores can be 0 (float16
    underflow): whichever way the labels come back, such voxels are background, not the last class."""
    def nothing_in_the_dark(x):
        foreground = torch.sigmoid(3.0 * x[:, :1])
        scores = torch.cat([1.0 - foreground, foreground, 0.2 * foreground], dim=1)
        return scores * (x[:, :1] > -1.5)   # below -375 HU no query's mask reaches: every score 0

    shape = (8, 20, 40)
    image = np.broadcast_to(np.linspace(-800.0, 800.0, shape[2], dtype=np.float32), shape).copy()
    geometry = ImageGeometry(shape[::-1], (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    predictor = stand_in_predictor(StandIn(3, nothing_in_the_dark), (2.0, 1.3, 1.3) if resampled else (3.0, 1.0, 1.0))
    case = predictor.prepare(image, geometry)
    assert resampled == (case.properties["shape_after_resampling"] != case.properties["shape_after_transpose"])
    labels = predictor.predict_prepared(case, probabilities=probabilities).labels
    assert (labels[..., :8] == 0).all()
    assert (labels[..., -8:] == 1).all()


# -- models with more than 256 classes ---------------------------------------------------------------

@pytest.mark.parametrize("resampled", [False, True], ids=["same_grid", "resampled"])
def test_labels_above_255_are_kept(resampled):
    """A model with 300 classes (whole-body atlases come close): label 299 must not wrap to 43."""
    from MaskSAMCore.inference.predictor import PredictOptions

    classes = 300

    def two_labels(x):
        k = torch.arange(classes, dtype=torch.float32)[None, :, None, None, None]
        winner = torch.where(x[:, :1] > 0, 299.0, 7.0)   # 299 in the blob, 7 around it
        return torch.exp(-((k - winner) ** 2))

    image, geometry = smooth_case((6, 20, 20), (1.0, 1.0, 3.0))
    predictor = stand_in_predictor(StandIn(classes, two_labels), (2.0, 1.3, 1.3) if resampled else (3.0, 1.0, 1.0),
                                   PredictOptions.fast(show_progress=False))
    labels = predictor.predict_array(image, geometry)
    assert set(np.unique(labels)) == {7, 299}
    assert labels[3, 10, 9] == 299 and labels[0, 0, 0] == 7


# -- one network shape for compiled models ------------------------------------------------------------

def test_a_padded_last_batch_keeps_every_forward_the_same_shape():
    """With a compiled network (`MASKSAM_COMPILE`) a short last batch is zero-padded, so the
    network never sees a new shape (a recompilation costs minutes); the padding rows are ignored."""
    volume = np.random.default_rng(3).normal(size=(1, 12, 20, 20)).astype(np.float32)
    shapes = []

    def recording(x):
        shapes.append(tuple(x.shape))
        return ramp_net(x)

    settings = WindowSettings(window_batch=3, pad_last_batch=True, flips_per_forward=2)
    padded, _ = sliding_window_predict(WindowJob(volume, recording, PATCH, 2, CPU, progress_stage=None), settings)
    assert len(set(shapes)) == 1 and shapes[0][0] == 3 * 2
    plain, _ = sliding_window_predict(WindowJob(volume, ramp_net, PATCH, 2, CPU, progress_stage=None),
                                      WindowSettings(window_batch=3))
    np.testing.assert_array_equal(padded, plain)


def test_the_mean_over_flips_divides_by_the_number_of_flips():
    """A model trained without left-right flips is predicted with 4 flips: their mean, not 4/8 of it."""
    from MaskSAMCore.inference.mirroring import flip_combinations, mirrored_predict

    patches = torch.randn(2, 1, *PATCH)
    flips = flip_combinations((2, 3))
    expected = sum(ramp_net(patches.flip(f) if f else patches).flip(f) if f else ramp_net(patches)
                   for f in flips) / 4
    torch.testing.assert_close(mirrored_predict(ramp_net, patches, flips), expected)
    scores, _ = sliding_window_predict(WindowJob(np.zeros((1, *PATCH), np.float32),
                                                 lambda x: torch.ones(x.shape[0], 2, *PATCH), PATCH, 2, CPU,
                                                 progress_stage=None), WindowSettings(mirror_axes=(0, 1)))
    np.testing.assert_allclose(scores.astype(np.float32), 1.0, atol=1e-3)


# -- preprocessing ------------------------------------------------------------------------------------

def test_a_thick_slice_case_is_interpolated_linearly_along_z_even_when_the_plan_is_isotropic():
    """nnU-Net's rule looks at the case too: 5 mm slices under a 1 mm plan are upsampled linearly
    between slices (cubic would ring next to a step), in-plane cubically."""
    from MaskSAMCore.data.preprocessing import preprocess_case

    along_z = np.array([100.0, 100.0, 200.0, 200.0])
    image = (along_z[:, None, None] + np.zeros((4, 6, 6))).astype(np.float32)[None]
    geometry = ImageGeometry((6, 6, 4), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    ct = {"channel": "CT", "scheme": "ct", "clip_low": -1000.0, "clip_high": 1000.0, "mean": 0.0, "std": 100.0}
    plan = {"target_spacing": [2.5, 1.0, 1.0], "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "anisotropic": False, "crop_to_nonzero": True, "normalization": [ct],
            "image_resampling": {"order": 3, "order_z": 1}}
    data, _, properties = preprocess_case(image, geometry, plan)
    assert properties["separate_z"] and data.shape == (1, 8, 6, 6)
    linear = np.interp((np.arange(8) + 0.5) * 0.5 - 0.5, np.arange(4), along_z)
    np.testing.assert_allclose(data[0, :, 3, 3] * 100.0, linear, atol=1e-3)


# -- probabilities written together with the label map -------------------------------------------------

def test_when_writing_the_label_map_fails_no_probabilities_are_left_behind(tmp_path):
    """The label map is written (`then`) before the npz is renamed into place: a failure there
    (a read-only folder, a cancel) must not leave probabilities without their label map."""
    from MaskSAMCore.data.preprocessing import preprocess_case
    from MaskSAMCore.inference.export import write_probabilities
    from MaskSAMCore.inference.random_model import synthetic_plan
    from MaskSAMCore.model.config import preset

    image, geometry = smooth_case((6, 12, 10))
    plan = synthetic_plan(preset("tiny", num_classes=2), (3.0, 1.0, 1.0))
    _, _, properties = preprocess_case(image[None], geometry, plan)
    scores = np.random.default_rng(0).random((2, *properties["shape_after_resampling"])).astype(np.float16)

    def label_map_fails():
        raise RuntimeError("the label map could not be written")

    with pytest.raises(RuntimeError, match="label map could not"):
        write_probabilities(scores, properties, ["background", "blob"], tmp_path / "case_probabilities.npz",
                            then=label_map_fails)
    assert list(tmp_path.iterdir()) == []


def test_a_label_map_of_another_shape_is_never_written(tmp_path):
    """`write_labels` refuses labels that do not fit the input's grid instead of writing a file
    that no viewer overlays on the image."""
    from MaskSAMCore.inference.export import write_labels

    _, geometry = smooth_case((6, 12, 10))
    with pytest.raises(ValueError, match="is not the input's"):
        write_labels(np.zeros((6, 10, 12), np.uint8), geometry, tmp_path / "labels.nii.gz")
    assert list(tmp_path.iterdir()) == []


# -- a folder of cases after running out of GPU memory ----------------------------------------------

def test_the_settings_that_survived_running_out_of_memory_are_kept_for_the_next_case(capsys):
    """Out of memory on the first case of a folder: the later cases start with the settings that
    worked, instead of running out of memory (and saying so) again for every case."""
    from MaskSAMCore.inference.predictor import PredictOptions

    def small_gpu(x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return soft_threshold(x)

    network = StandIn(2, small_gpu)
    predictor = stand_in_predictor(network, (3.0, 1.0, 1.0), PredictOptions(window_batch=4, show_progress=False))
    image, geometry = smooth_case((9, 40, 35))
    first = predictor.predict_array(image, geometry)
    assert capsys.readouterr().err.count("out of memory") == 1      # 4 windows per forward -> 2: fits
    network.batch_sizes.clear()
    second = predictor.predict_array(image, geometry)
    assert "out of memory" not in capsys.readouterr().err
    assert max(network.batch_sizes) <= 2
    np.testing.assert_array_equal(first, second)
