"""The sliding-window engine with toy networks: windows, Gaussian, slabs, mirroring, OOM fallback."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from MaskSAMCore.errors import Cancelled
from MaskSAMCore.inference.mirroring import flip_combinations, mirrored_predict
from MaskSAMCore.inference.sliding_window import (
    OutOfMemory, WindowJob, WindowSettings, predict_with_fallback, sliding_window_predict)
from MaskSAMCore.inference.windows import WindowGrid, gaussian_1d, gaussian_importance, window_starts

CPU = torch.device("cpu")


class ToyConvNet(torch.nn.Module):
    """A random, not flip-equivariant 3D conv net: (M, C, T, H, W) -> (M, K, T, H, W) in (0, 1)."""

    def __init__(self, channels: int, classes: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv3d(channels, classes, kernel_size=3, padding=1)
        with torch.no_grad():
            self.conv.weight.normal_()
        # A position-dependent term along T, like the depth embeddings of the real network.
        self.depth_bias = torch.nn.Parameter(torch.randn(1, classes, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x) + self.depth_bias[:, :, : x.shape[2]])


def symmetric_net(x: torch.Tensor) -> torch.Tensor:
    """Flip-equivariant: a conv with a kernel symmetric under every flip, then a nonlinearity."""
    kernel = torch.tensor([1.0, 2.0, 1.0])
    weight = (kernel[:, None, None] * kernel[None, :, None] * kernel[None, None, :]) / 64.0
    smoothed = torch.nn.functional.conv3d(x[:, :1], weight[None, None], padding=1)
    return torch.cat([torch.sigmoid(3 * smoothed), torch.tanh(smoothed) ** 2], dim=1)


def reference_sliding_window(volume: np.ndarray, network, patch, step: float, mirror: bool) -> np.ndarray:
    """Textbook implementation: zero-pad, weight every window, divide by a weight volume."""
    grid = WindowGrid(volume.shape[1:], patch, step)
    padded = np.zeros((volume.shape[0], *grid.padded_shape), np.float32)
    real = tuple(grid.real_slice(a) for a in range(3))
    padded[(slice(None), *real)] = volume
    weight = gaussian_importance(patch).astype(np.float64)
    total, norm = None, np.zeros(grid.padded_shape)
    flips = flip_combinations() if mirror else [()]
    for w in grid.windows:
        box = (slice(w.z, w.z + patch[0]), slice(w.y, w.y + patch[1]), slice(w.x, w.x + patch[2]))
        x = torch.from_numpy(padded[(slice(None), *box)].copy())[None]
        with torch.no_grad():
            pred = sum(network(x.flip(f) if f else x).flip(f) if f else network(x) for f in flips) / len(flips)
        pred = pred[0].double().numpy()
        if total is None:
            total = np.zeros((pred.shape[0], *grid.padded_shape))
        total[(slice(None), *box)] += pred * weight
        norm[box] += weight
    return (total / norm)[(slice(None), *real)]


def test_window_starts_cover_the_axis_with_at_most_the_step():
    assert window_starts(64, 64, 0.5) == [0]
    assert window_starts(10, 64, 0.5) == [0]
    starts = window_starts(150, 64, 0.5)
    assert starts[0] == 0 and starts[-1] == 150 - 64
    assert max(np.diff(starts)) <= 32
    assert window_starts(150, 64, 1.0) == [0, 43, 86]
    with pytest.raises(ValueError):
        window_starts(10, 4, 0.0)


def test_gaussian_is_symmetric_with_a_sigma_floor_on_short_axes():
    short = gaussian_1d(8)
    assert short.max() == pytest.approx(1.0)
    np.testing.assert_allclose(short, short[::-1])
    # Relative to the two central slices (0.5 from the centre): with sigma = patch/8 = 1 the
    # edge slices (3.5 from the centre) would weigh exp(-6) = 0.0025; the 2-voxel floor gives 0.22.
    assert short[0] == pytest.approx(np.exp(-(3.5 ** 2 - 0.5 ** 2) / 8), rel=1e-6)
    assert gaussian_1d(8, sigma_floor=0.0)[0] == pytest.approx(0.0025, abs=1e-4)
    # Long in-plane axes keep sigma = patch / 8.
    assert gaussian_1d(512)[0] == pytest.approx(np.exp(-0.5 * (255.5 ** 2 - 0.5 ** 2) / 64 ** 2), rel=1e-6)
    full = gaussian_importance((8, 64, 64))
    assert full.shape == (8, 64, 64)
    np.testing.assert_allclose(full, full[::-1, ::-1, ::-1], rtol=1e-6)


def test_volume_of_exactly_one_patch_equals_one_forward():
    net = ToyConvNet(2, 3)
    volume = np.random.default_rng(0).normal(size=(2, 4, 16, 16)).astype(np.float32)
    scores, finite = sliding_window_predict(WindowJob(volume, net, (4, 16, 16), 3, CPU, progress_stage=None),
                                            WindowSettings(mirror=False))
    with torch.no_grad():
        expected = net(torch.from_numpy(volume)[None])[0].numpy()
    assert finite and scores.shape == (3, 4, 16, 16) and scores.dtype == np.float16
    np.testing.assert_allclose(scores.astype(np.float32), expected, atol=1e-3)


def test_constant_network_gives_a_constant_weighted_average():
    values = torch.tensor([0.2, 0.7, 0.1])
    net = lambda x: values[None, :, None, None, None].expand(x.shape[0], 3, *x.shape[2:])  # noqa: E731
    volume = np.zeros((1, 11, 37, 29), np.float32)  # odd sizes: uneven window steps
    scores, _ = sliding_window_predict(WindowJob(volume, net, (4, 16, 16), 3, CPU, progress_stage=None),
                                       WindowSettings())
    for k in range(3):
        np.testing.assert_allclose(scores[k].astype(np.float32), float(values[k]), atol=1e-3)


@pytest.mark.parametrize("shape,window_batch", [((1, 13, 37, 50), 1), ((1, 13, 37, 50), 5),
                                                ((2, 3, 10, 40), 2), ((1, 9, 16, 16), 3),
                                                # fewer slices than the patch: padded on both sides
                                                # of z, so finished slices must be shifted back
                                                ((1, 2, 10, 40), 1)])
def test_slab_accumulation_matches_a_full_volume_reference(shape, window_batch):
    net = ToyConvNet(shape[0], 2, seed=1)
    volume = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    settings = WindowSettings(mirror=True, window_batch=window_batch)
    scores, _ = sliding_window_predict(WindowJob(volume, net, (4, 16, 16), 2, CPU, progress_stage=None), settings)
    expected = reference_sliding_window(volume, net, (4, 16, 16), 0.5, mirror=True)
    assert scores.shape == (2, *shape[1:])
    np.testing.assert_allclose(scores.astype(np.float32), expected, atol=2e-3)
    labels, _ = sliding_window_predict(WindowJob(volume, net, (4, 16, 16), 2, CPU, output="labels",
                                                 progress_stage=None), settings)
    decided = np.abs(expected[0] - expected[1]) > 1e-2  # skip near-ties where float16 may flip
    np.testing.assert_array_equal(labels[decided], expected.argmax(0)[decided])


def test_mirroring_a_flip_equivariant_network_equals_one_pass():
    volume = np.random.default_rng(2).normal(size=(1, 10, 30, 21)).astype(np.float32)
    job = WindowJob(volume, symmetric_net, (4, 16, 16), 2, CPU, progress_stage=None)
    mirrored, _ = sliding_window_predict(job, WindowSettings(mirror=True))
    single, _ = sliding_window_predict(job, WindowSettings(mirror=False))
    np.testing.assert_allclose(mirrored.astype(np.float32), single.astype(np.float32), atol=1e-3)


def test_flips_are_batched_into_one_forward_and_chunking_does_not_change_the_result():
    net = ToyConvNet(1, 2, seed=3)
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return net(x)

    patches = torch.randn(3, 1, 4, 16, 16)
    with torch.no_grad():
        together = mirrored_predict(counting, patches)
        assert calls == [24]  # 8 flips x 3 windows in one call
        halves = mirrored_predict(counting, patches, flips_per_forward=4)
        assert calls[1:] == [12, 12]
        by_hand = sum(net(patches.flip(f) if f else patches).flip(f) if f else net(patches)
                      for f in flip_combinations()) / 8
    torch.testing.assert_close(together, by_hand)
    torch.testing.assert_close(halves, by_hand)


def test_out_of_memory_halves_the_window_batch_and_then_gives_a_clear_error():
    net = ToyConvNet(1, 2, seed=4)
    volume = np.random.default_rng(4).normal(size=(1, 12, 20, 20)).astype(np.float32)
    seen = []

    def small_gpu(x):
        seen.append(x.shape[0])
        if x.shape[0] > 8:  # "memory" for one window's 8 flips
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return net(x)

    result, _, used = predict_with_fallback(WindowJob(volume, small_gpu, (4, 16, 16), 2, CPU, progress_stage=None),
                                            WindowSettings(window_batch=4))
    assert used.window_batch == 1 and seen[:3] == [32, 16, 8]
    expected, _ = sliding_window_predict(WindowJob(volume, net, (4, 16, 16), 2, CPU, progress_stage=None),
                                         WindowSettings())
    np.testing.assert_array_equal(result, expected)

    def no_gpu(x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(OutOfMemory, match="one window per forward"):
        predict_with_fallback(WindowJob(volume, no_gpu, (4, 16, 16), 2, CPU, progress_stage=None,
                                        case_name="case_007"), WindowSettings(window_batch=2))


def test_cublas_and_cudnn_allocation_failures_fall_back_like_out_of_memory():
    net = ToyConvNet(1, 2, seed=5)
    volume = np.random.default_rng(5).normal(size=(1, 12, 20, 20)).astype(np.float32)

    def full_gpu(error: str):
        def network(x):
            if x.shape[0] > 8:  # a full GPU, as cuBLAS / cuDNN report it when creating a handle
                raise RuntimeError(error)
            return net(x)
        return network

    expected, _ = sliding_window_predict(WindowJob(volume, net, (4, 16, 16), 2, CPU, progress_stage=None),
                                         WindowSettings())
    for error in ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                  "cuDNN error: CUDNN_STATUS_ALLOC_FAILED"):
        result, _, used = predict_with_fallback(WindowJob(volume, full_gpu(error), (4, 16, 16), 2, CPU,
                                                          progress_stage=None), WindowSettings(window_batch=4))
        assert used.window_batch == 1
        np.testing.assert_array_equal(result, expected)
    with pytest.raises(RuntimeError, match="CUBLAS_STATUS_EXECUTION_FAILED"):  # not memory: no retry
        predict_with_fallback(WindowJob(volume, full_gpu("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED"), (4, 16, 16), 2,
                                        CPU, progress_stage=None), WindowSettings(window_batch=4))


def test_the_failed_attempts_memory_is_released_before_the_cache_is_emptied(monkeypatch):
    net = ToyConvNet(1, 2, seed=6)
    volume = np.random.default_rng(6).normal(size=(1, 8, 16, 16)).astype(np.float32)
    failed = []

    def small_gpu(x):
        activations = net(x)  # held by this frame, hence by the error's traceback
        if x.shape[0] > 8:
            failed.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return activations

    still_held = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: still_held.append(failed[-1]() is not None))
    predict_with_fallback(WindowJob(volume, small_gpu, (4, 16, 16), 2, CPU, progress_stage=None),
                          WindowSettings(window_batch=2))
    # Emptying the cache while the traceback still holds the failed forward's tensors frees none
    # of their memory (cuBLAS, allocating outside PyTorch's cache, would then fail again).
    assert still_held == [False]


def test_non_finite_scores_are_reported_and_cancel_stops_the_loop():
    volume = np.ones((1, 8, 16, 16), np.float32)

    def nan_net(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2, *x.shape[2:]), float("nan"))

    _, finite = sliding_window_predict(WindowJob(volume, nan_net, (4, 16, 16), 2, CPU, progress_stage=None),
                                       WindowSettings(mirror=False))
    assert finite is False
    with pytest.raises(Cancelled):
        sliding_window_predict(WindowJob(volume, symmetric_net, (4, 16, 16), 2, CPU, progress_stage=None,
                                         should_cancel=lambda: True), WindowSettings())


def test_automatic_window_batch_is_planned_for_the_memory_budget_alone():
    from MaskSAMCore.inference.devices import SAFETY, plan_window_batch

    gib = 2 ** 30
    # 8 flips of 0.25 GiB plus a 0.5 GiB slab per window: 2.5 GiB a window, 4 windows in a 10 GiB budget
    # (whatever the first case's size: a small first case must not slow the cases after it).
    assert plan_window_batch(0.25 * gib, gib // 2, int(10.1 * gib / SAFETY), 8) == (4, None)
    # One window's 8 flips do not fit 1 GiB: one window at a time, 2 flips per forward.
    assert plan_window_batch(0.4 * gib, gib // 8, int(1 * gib / SAFETY), 8) == (1, 2)


@pytest.mark.parametrize("value", ["16GB", "0", "-4", "nan"])
def test_a_bad_gpu_memory_budget_is_one_error_naming_the_variable(monkeypatch, value):
    from MaskSAMCore.errors import MaskSAMError
    from MaskSAMCore.inference import devices

    monkeypatch.setenv("MASKSAM_GPU_MEMORY_GB", value)
    # Refused before any CUDA call, so this runs on a CPU-only machine too.
    with pytest.raises(MaskSAMError, match=f"MASKSAM_GPU_MEMORY_GB='{value}' is not a GPU memory budget"):
        devices.gpu_budget_bytes(torch.device("cuda"))


def test_the_gpu_memory_budget_is_read_in_gib_and_defaults_to_8(monkeypatch):
    from MaskSAMCore.inference import devices

    monkeypatch.setenv("MASKSAM_GPU_MEMORY_GB", " 12.5 ")
    assert devices.gpu_budget_gb() == 12.5
    monkeypatch.setenv("MASKSAM_GPU_MEMORY_GB", "")
    assert devices.gpu_budget_gb() == 8.0


def test_a_predictor_for_the_gpu_refuses_a_bad_budget_before_any_case(monkeypatch):
    from MaskSAMCore.errors import MaskSAMError
    from MaskSAMCore.inference.predictor import PredictOptions, Predictor
    from MaskSAMCore.model.builder import build_masksam
    from MaskSAMCore.model.config import preset

    monkeypatch.setenv("MASKSAM_GPU_MEMORY_GB", "16GB")
    model = build_masksam(preset("tiny", num_classes=2))
    with pytest.raises(MaskSAMError, match="MASKSAM_GPU_MEMORY_GB"):
        Predictor(model, {}, ["background", "x"], torch.device("cuda"))
    # An explicit --window-batch plans nothing, so the budget is not read.
    Predictor(model, {}, ["background", "x"], torch.device("cuda"), PredictOptions(window_batch=2))


def test_half_precision_is_bf16_only_on_gpus_with_bf16_hardware(monkeypatch):
    from MaskSAMCore.inference import devices
    from MaskSAMCore.training.trainer import autocast_dtype as training_dtype

    # Two GPUs, as PyTorch describes them: cuda:0 a T4 (compute capability 7.5, bf16 only
    # emulated, which torch.cuda.is_bf16_supported() still calls supported), cuda:1 an A100.
    capabilities = {0: (7, 5), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: capabilities[torch.device(device).index or 0])
    t4, a100 = torch.device("cuda:0"), torch.device("cuda:1")
    # The T4 computes in float16 (tensor cores; NaN/Inf scores are then redone in float32).
    assert devices.autocast_dtype(t4) == training_dtype(t4, enabled=True) == torch.float16
    # The GPU asked for decides, not the current one.
    assert devices.autocast_dtype(a100) == training_dtype(a100, enabled=True) == torch.bfloat16
    assert devices.autocast_dtype(CPU) is None
