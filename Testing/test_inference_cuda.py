"""The CUDA paths of the sliding-window engine (prefetching feeder, async sinks, no host syncs).

Skipped without a GPU (CI has none); run on a GPU machine with
``python -m pytest Testing/test_inference_cuda.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from MaskSAMCore.inference.sliding_window import WindowSettings, sliding_window_predict

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def make_net(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Sigmoid())
    return net.to(device).eval()


@pytest.mark.parametrize("window_batch,host", [(1, False), (3, False), (4, True)])
def test_cuda_result_equals_cpu_result(window_batch, host):
    volume = np.random.default_rng(0).normal(size=(1, 23, 70, 45)).astype(np.float32)
    settings = WindowSettings(window_batch=window_batch, accumulate_on_host=host, pad_last_batch=True)
    on_gpu, finite = sliding_window_predict(volume, make_net(CUDA), (4, 32, 32), 3, CUDA, settings,
                                            progress_stage=None)
    on_cpu, _ = sliding_window_predict(volume, make_net(torch.device("cpu")), (4, 32, 32), 3,
                                       torch.device("cpu"), WindowSettings(), progress_stage=None)
    assert finite
    np.testing.assert_allclose(on_gpu.astype(np.float32), on_cpu.astype(np.float32), atol=2e-3)
    labels, _ = sliding_window_predict(volume, make_net(CUDA), (4, 32, 32), 3, CUDA, settings,
                                       output="labels", progress_stage=None)
    decided = np.sort(on_cpu.astype(np.float32), axis=0)
    decided = decided[-1] - decided[-2] > 1e-2
    np.testing.assert_array_equal(labels[decided], on_cpu.argmax(0)[decided])


def count_synchronisations(depth: int) -> int:
    volume = np.random.default_rng(1).normal(size=(1, depth, 64, 64)).astype(np.float32)
    net = make_net(CUDA)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sliding_window_predict(volume, net, (4, 32, 32), 3, CUDA, WindowSettings(window_batch=2),
                                   progress_stage=None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def test_window_loop_does_not_synchronise_per_window():
    count_synchronisations(8)  # warm-up: cuDNN autotuning and allocator growth may sync once
    few, many = count_synchronisations(8), count_synchronisations(64)
    # 9 windows versus 279: the host may sync a fixed number of times per case, not per window.
    assert many == few, (few, many)
