"""Resampling scores back to the input grid slab by slab gives the data layer's answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.preprocessing import preprocess_case, restore_scores_argmax
from MaskSAMCore.inference.random_model import synthetic_plan
from MaskSAMCore.inference.restore_sink import ResampledLabelSink, finish_labels, linear_taps
from MaskSAMCore.inference.sliding_window import WindowJob, WindowSettings, sliding_window_predict
from MaskSAMCore.model.config import preset


def test_linear_taps_follow_aligned_voxel_edges():
    lower, upper, weight = linear_taps(4, 8)  # upsampling x2: positions -0.25, 0.25, 0.75, ...
    assert lower.tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    assert upper.tolist() == [1, 1, 1, 2, 2, 3, 3, 3]
    np.testing.assert_allclose(weight, [0, 0.25, 0.75, 0.25, 0.75, 0.25, 0.75, 0])


@pytest.mark.parametrize("network_shape,target_shape,block", [
    ((13, 20, 24), (31, 17, 29), 3),   # z up, y down, x up
    ((20, 16, 16), (9, 16, 16), 4),    # z down only
    ((7, 30, 10), (7, 11, 33), 2),     # in-plane only
])
def test_streaming_restore_equals_resampling_the_whole_array(network_shape, target_shape, block):
    rng = np.random.default_rng(0)
    scores = rng.random((4, *network_shape)).astype(np.float32)
    sink = ResampledLabelSink(4, network_shape, target_shape, torch.device("cpu"))
    for z in range(0, network_shape[0], block):
        sink.put(z, torch.from_numpy(scores[:, z:z + block]))
    streamed = sink.result()
    properties = {"shape_after_resampling": list(network_shape), "shape_after_transpose": list(target_shape),
                  "transpose_backward": [0, 1, 2], "bbox": [[0, n] for n in target_shape],
                  "shape_before_cropping": list(target_shape)}
    whole = restore_scores_argmax(scores, properties, {})
    assert streamed.shape == whole.shape == target_shape
    assert (streamed == whole).mean() > 0.999  # float32 rounding may flip exact near-ties
    np.testing.assert_array_equal(finish_labels(streamed, properties), streamed)


def test_sliding_window_with_restore_matches_restore_scores_argmax_on_a_real_preprocessing():
    config = preset("tiny", num_classes=3)
    plan = synthetic_plan(config, (2.0, 1.5, 1.5))
    plan["transpose_forward"], plan["transpose_backward"] = [2, 0, 1], [1, 2, 0]  # x becomes the slice axis
    plan["target_spacing"] = [2.0, 1.1, 1.5]
    rng = np.random.default_rng(1)
    image = rng.normal(0, 200, size=(1, 17, 26, 23)).astype(np.float32)
    image[:, :2] = 0.0  # a zero border is cropped away and pasted back as background
    geometry = ImageGeometry((23, 26, 17), (1.3, 0.9, 2.7), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    data, _, properties = preprocess_case(image, geometry, plan)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Softmax(dim=1))
    settings = WindowSettings(mirror=False, step=0.5, window_batch=2)
    scores, _ = sliding_window_predict(WindowJob(data, net, (4, 16, 16), 3, torch.device("cpu"), progress_stage=None),
                                       settings)
    restored, _ = sliding_window_predict(WindowJob(data, net, (4, 16, 16), 3, torch.device("cpu"), output="restored",
                                                   progress_stage=None,
                                                   restore_shape=properties["shape_after_transpose"]), settings)
    expected = restore_scores_argmax(scores, properties, plan)
    labels = finish_labels(restored, properties)
    assert labels.shape == expected.shape == geometry.shape_zyx
    assert (labels == expected).mean() > 0.995  # float16 host scores vs float32 slabs at near-ties
    assert (labels[:2] == 0).all()
