"""The CUDA paths of the sliding-window engine (prefetching feeder, async sinks, no host syncs).

Skipped without a GPU (CI has none); run on a GPU machine with
``python -m pytest Testing/test_inference_cuda.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from MaskSAMCore.inference.sliding_window import WindowJob, WindowSettings, sliding_window_predict

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
    on_gpu, finite = sliding_window_predict(WindowJob(volume, make_net(CUDA), (4, 32, 32), 3, CUDA,
                                                      progress_stage=None), settings)
    on_cpu, _ = sliding_window_predict(WindowJob(volume, make_net(torch.device("cpu")), (4, 32, 32), 3,
                                                 torch.device("cpu"), progress_stage=None), WindowSettings())
    assert finite
    np.testing.assert_allclose(on_gpu.astype(np.float32), on_cpu.astype(np.float32), atol=2e-3)
    labels, _ = sliding_window_predict(WindowJob(volume, make_net(CUDA), (4, 32, 32), 3, CUDA, output="labels",
                                                 progress_stage=None), settings)
    decided = np.sort(on_cpu.astype(np.float32), axis=0)
    decided = decided[-1] - decided[-2] > 1e-2
    np.testing.assert_array_equal(labels[decided], on_cpu.argmax(0)[decided])


def count_synchronisations(depth: int, output: str) -> int:
    volume = np.random.default_rng(1).normal(size=(1, depth, 64, 64)).astype(np.float32)
    net = make_net(CUDA)
    # "restored": the resampling sink, with output slices between the network's.
    restore_shape = (depth * 3 // 2, 48, 80) if output == "restored" else None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sliding_window_predict(WindowJob(volume, net, (4, 32, 32), 3, CUDA, output=output, progress_stage=None,
                                             restore_shape=restore_shape), WindowSettings(window_batch=2))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


@pytest.mark.parametrize("output", ["scores", "labels", "restored"])
def test_window_loop_does_not_synchronise_per_window(output):
    count_synchronisations(8, output)  # warm-up: cuDNN autotuning and allocator growth may sync once
    few, many = count_synchronisations(8, output), count_synchronisations(64, output)
    # 9 windows versus 279: the host may sync a fixed number of times per case, not per window.
    assert many == few, (few, many)


def test_predictor_on_cuda_agrees_with_cpu_and_plans_its_window_batch(tmp_path, monkeypatch):
    from MaskSAMCore.data.image_io import ImageGeometry
    from MaskSAMCore.inference.predictor import PredictOptions, Predictor
    from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
    from MaskSAMCore.model.config import preset

    config = preset("tiny", num_classes=4)
    folder = write_random_model_folder(tmp_path / "tiny", config, synthetic_plan(config, (2.0, 1.0, 1.0)))
    rng = np.random.default_rng(0)
    image = (rng.normal(0, 300, size=(21, 90, 70))).astype(np.float32)
    geometry = ImageGeometry((70, 90, 21), (0.9, 0.9, 2.2), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    options = PredictOptions(show_progress=False)
    on_cpu = Predictor.from_model_folder(folder, device="cpu", options=options).predict_array(image, geometry)
    gpu = Predictor.from_model_folder(folder, device="cuda", options=options)
    on_gpu = gpu.predict_array(image, geometry)
    assert on_gpu.shape == on_cpu.shape == geometry.shape_zyx
    assert gpu.settings.window_batch >= 1 and gpu.amp_dtype is not None
    # bf16 on the GPU versus float32 on the CPU: the same labels almost everywhere.
    assert (on_gpu == on_cpu).mean() > 0.97
    # A tiny memory budget makes the automatic planner split the flips instead of failing.
    monkeypatch.setenv("MASKSAM_GPU_MEMORY_GB", "0.001")
    frugal = Predictor.from_model_folder(folder, device="cuda", options=options)
    frugal.predict_array(image, geometry)
    assert frugal.settings.window_batch == 1 and frugal.settings.flips_per_forward == 1


@pytest.mark.parametrize("prompt_mode", ["mask_box", "mask", "box"])
def test_the_network_forward_never_waits_for_the_gpu(prompt_mode):
    """A host synchronisation inside the forward (a tensor made from a Python list, an index built
    on the host) stalls the window loop once per forward; raise on any."""
    from MaskSAMCore.model.builder import build_masksam
    from MaskSAMCore.model.config import preset

    torch.manual_seed(0)
    config = preset("tiny", num_classes=4, prompt_mode=prompt_mode)
    model = build_masksam(config).to(CUDA).eval()
    patches = torch.randn(2, config.in_channels, config.num_slices, *config.image_hw, device=CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.segment(patches)               # warm-up: cuDNN and cuBLAS set-up may sync once
        torch.cuda.set_sync_debug_mode("error")
        try:
            scores = model.segment(patches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert scores.shape == (2, 4, config.num_slices, *config.image_hw)
