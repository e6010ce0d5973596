"""`masksam benchmark`: speed and memory of the full predictor on a synthetic CT of a given size.

    masksam benchmark --preset vit_b --shape 300 512 512 --classes 16 --output bench.json

The synthetic CT (a body with organs and noise, in HU; one per channel the model reads) goes
through exactly what `masksam predict` does after reading a file: checks and preprocessing, the
sliding window, restoring and writing the label map. Reported: seconds per stage, windows/s,
model TFLOP/s (PyTorch's FLOP counter on one window, times the flips and the windows), peak GPU
memory and peak host RSS, as JSON. One warm-up on a single-patch volume comes first (cuDNN autotuning, the automatic
window batch, torch.compile when MASKSAM_COMPILE=1).

``--max-windows N`` runs the real network on the first N windows only and extrapolates the network
seconds (marked ``"extrapolated": true``; see `benchmark_extrapolation`) - for slow CPUs, where a
mirrored ViT-B run would take hours. Everything else (accumulation, restoring, export, host
memory) is predict's own, measured on the whole volume.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from MaskSAMCore.atomic import write_json
from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.errors import InputError, MaskSAMError
from MaskSAMCore.inference import devices
from MaskSAMCore.inference.arguments import BenchmarkArguments
from MaskSAMCore.inference.benchmark_extrapolation import extrapolated_run
from MaskSAMCore.inference.flops import count_flops
from MaskSAMCore.inference.input_checks import HOST_COPIES_OF_RESAMPLED
from MaskSAMCore.inference.predictor import PredictOptions, Predictor
from MaskSAMCore.inference.run import options_from_args
from MaskSAMCore.inference.windows import WindowGrid
from MaskSAMCore.paths import check_output_file
from MaskSAMCore.progress import EVENT_DONE, emit, print_message

IMAGE_SPACING_ZYX = (1.0, 0.8, 0.8)   # the random network's plan (without --resample)
# With --resample the random network's plan asks for a slightly coarser grid than IMAGE_SPACING_ZYX;
# whatever the model, the synthetic volume is as much finer in-plane than the model's spacing.
RESAMPLED_TARGET_ZYX = (1.0, 0.82, 0.82)
FINER_IN_PLANE_ZYX = (1.0, 0.8 / 0.82, 0.8 / 0.82)


def synthetic_spacing_zyx(plan: Dict[str, Any], resample: bool) -> Tuple[float, float, float]:
    """The synthetic volume's spacing (z, y, x): the model's own target spacing, so nothing is
    resampled (as most benchmarks want), or with `resample` slightly finer in-plane, so the
    scores are resampled back (the host-memory-heavy path of real CTs) while the window count
    stays about that of --shape. Taken from the plan, never fixed: a fixed 1 x 0.8 x 0.8 mm grid
    given to a model of 3.5 mm slices would shrink --shape 3.5-fold along z (the warm-up volume
    to a single slice) and time another volume than the one asked for."""
    # From the fields preprocessing reads (the spacing in the network's axis order, and the order
    # back): "target_spacing_zyx" is informative only, and model.json's check does not require it.
    in_network_order = [float(t) for t in plan["target_spacing"]]
    target = [in_network_order[axis] for axis in plan["transpose_backward"]]
    finer = FINER_IN_PLANE_ZYX if resample else (1.0, 1.0, 1.0)
    z, y, x = (t * f for t, f in zip(target, finer))
    return z, y, x


def synthetic_ct(shape_zyx: Tuple[int, int, int], seed: int = 0, channels: int = 1) -> np.ndarray:
    """(C, z, y, x) float32 HU: air, an elliptic body, a few organs, noise. Built slice by slice.
    Every channel (as many as the model reads: CT + PET, four MR sequences) is the same anatomy
    with its own noise, so none is a copy of another."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape_zyx
    y, x = np.meshgrid(np.linspace(-1, 1, height, dtype=np.float32), np.linspace(-1, 1, width, dtype=np.float32),
                       indexing="ij")
    body = (y / 0.7) ** 2 + (x / 0.9) ** 2 < 1.0
    volume = np.empty((channels, *shape_zyx), dtype=np.float32)
    organs = [(0.2, -0.3, 0.3, 60.0), (-0.1, 0.4, 0.15, 45.0), (0.3, 0.3, 0.1, 180.0), (-0.3, -0.2, 0.12, 30.0)]
    for z in range(depth):
        t = 2.0 * z / max(depth - 1, 1) - 1.0
        slice_ = np.where(body, 40.0, -1000.0).astype(np.float32)
        for cy, cx, radius, value in organs:
            r = radius * np.sqrt(max(0.0, 1.0 - 0.8 * t * t))
            slice_[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = value
        volume[:, z] = slice_ + rng.normal(0.0, 12.0, size=(channels, height, width)).astype(np.float32)
    return volume


def _gpu_name(device: torch.device) -> Optional[str]:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


DEFAULT_PRESET, DEFAULT_CLASSES = "vit_b", 16


def build_predictor(args: BenchmarkArguments, device: torch.device, options: PredictOptions) -> Predictor:
    if args.model_dir:
        if args.preset or args.classes:
            raise MaskSAMError("--preset and --classes choose a random network; a --model-dir brings its own")
        return Predictor.from_model_folder(args.model_dir, device=str(device), options=options)
    from MaskSAMCore.inference.random_model import default_labels, synthetic_plan
    from MaskSAMCore.model.builder import build_masksam
    from MaskSAMCore.model.config import preset

    name, classes = args.preset or DEFAULT_PRESET, args.classes or DEFAULT_CLASSES
    config = preset(name, num_classes=classes)
    target = RESAMPLED_TARGET_ZYX if args.resample else IMAGE_SPACING_ZYX
    plan = synthetic_plan(config, target_spacing_zyx=target)
    torch.manual_seed(0)
    model = build_masksam(config).to(device)
    return Predictor(model, plan, list(default_labels(classes)), device, options, name=f"random {name}")


def host_bytes_needed(shape_zyx: Tuple[int, int, int], predictor: Predictor) -> int:
    """Host memory a benchmark of `shape_zyx` needs, about: the synthetic volume (kept for every
    repeat), what `predict` needs for a volume that size (`HOST_COPIES_OF_RESAMPLED` float32 copies
    per channel; --resample only makes the network grid smaller) and, on a CPU, two slabs of every
    class's float32 scores (the accumulation and the restoring sink's buffer). The network's own
    working memory is left out, so that a refusal is never wrong, only a late one possible."""
    voxels = math.prod(shape_zyx)
    volume = 4 * predictor.config.in_channels * voxels
    needed = volume + HOST_COPIES_OF_RESAMPLED * volume
    if predictor.device.type == "cpu":
        depth, height, width = predictor.patch
        plane = max(shape_zyx[1], height) * max(shape_zyx[2], width)
        needed += 2 * 4 * predictor.config.num_classes * depth * plane
    return needed


def check_shape_fits_host_memory(shape_zyx: Tuple[int, int, int], predictor: Predictor) -> None:
    """Refuse a --shape that cannot fit before the volume is made: making it alone took minutes
    and gigabytes, and the refusal that came after sent the user to a header there is none of."""
    available = devices.available_host_bytes()
    needed = host_bytes_needed(shape_zyx, predictor)
    if available is not None and needed > available:
        raise InputError(f"--shape {' '.join(str(n) for n in shape_zyx)}: the benchmark needs about "
                         f"{needed / 2 ** 30:.3g} GiB of host memory ({available / 2 ** 30:.3g} GiB available); "
                         "choose a smaller --shape")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flops_per_window(predictor: Predictor) -> int:
    """FLOPs of one window with all its flips: one flip is counted (the work is the same for
    every flip, and counting runs the network, which takes a while on a CPU) and multiplied."""
    settings = predictor.settings
    assert settings is not None
    sample = torch.zeros((1, predictor.config.in_channels, *predictor.patch), device=predictor.device)
    return count_flops(predictor.network, sample) * len(settings.flips)


def _window_count(predictor: Predictor, data: np.ndarray) -> int:
    return len(WindowGrid(tuple(data.shape[1:]), predictor.patch, predictor.window_settings().step))


def benchmark(args: BenchmarkArguments) -> Dict[str, Any]:
    device = devices.resolve_device(args.device)
    options = options_from_args(args)   # exactly as `masksam predict` reads the same options
    from MaskSAMCore.inference.nnunet_compare import nnunet_problem

    problem = nnunet_problem() if args.compare_nnunet else None
    if problem:
        raise MaskSAMError(f"--compare-nnunet {problem}; nothing was measured")
    predictor = build_predictor(args, device, options)
    spacing_zyx = synthetic_spacing_zyx(predictor.plan, args.resample)   # the warm-up's too
    shape = (int(args.shape[0]), int(args.shape[1]), int(args.shape[2]))
    # After the network is built (its channels and classes count), before the volume is.
    check_shape_fits_host_memory(shape, predictor)
    print_message(f"benchmark {predictor.name} on {device} ({_gpu_name(device) or platform.processor() or 'CPU'}), "
                  f"volume {shape[0]}x{shape[1]}x{shape[2]} (z, y, x), {predictor.config.num_classes} classes")
    geometry = ImageGeometry(shape[::-1], spacing_zyx[::-1], (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    started = time.perf_counter()
    channels = predictor.config.in_channels
    volume = synthetic_ct(shape, channels=channels)
    synthesis_s = time.perf_counter() - started

    warm_shape = predictor.patch
    warm_geometry = ImageGeometry(warm_shape[::-1], spacing_zyx[::-1], (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    started = time.perf_counter()
    predictor.predict_array(synthetic_ct(warm_shape, seed=1, channels=channels), warm_geometry, name="warm-up")
    _sync(device)
    warmup_s = time.perf_counter() - started

    runs = []
    with tempfile.TemporaryDirectory(prefix="masksam-benchmark-") as folder:
        output = Path(folder) / "labels.nii.gz"
        for _ in range(max(1, args.repeat)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            prepared = predictor.prepare(volume, geometry, name="synthetic", owned=False)
            preprocessed_shape = list(prepared.data.shape[1:])
            if args.max_windows and _window_count(predictor, prepared.data) > args.max_windows:
                partial = extrapolated_run(predictor, prepared, args.max_windows, output)
                runs.append({"timings": partial.timings, "windows": partial.windows, "extrapolated": True,
                             "peak_gpu_memory_gib": _gpu_peak(device)})
                continue
            result = predictor.predict_prepared(prepared, output)
            _sync(device)
            runs.append({"timings": result.timings, "windows": result.windows, "extrapolated": False,
                         "peak_gpu_memory_gib": _gpu_peak(device)})
        peak_rss = devices.peak_host_rss_bytes()

    best = min(runs, key=lambda run: run["timings"]["network_s"])
    windows = best["windows"]
    total_flops = _flops_per_window(predictor) * windows
    network_s = best["timings"]["network_s"]
    settings = predictor.settings
    assert settings is not None
    report: Dict[str, Any] = {
        "device": str(device), "gpu": _gpu_name(device), "torch": torch.__version__,
        "model": predictor.name, "preset": None if args.model_dir else (args.preset or DEFAULT_PRESET),
        "shape_zyx": list(shape), "preprocessed_shape": preprocessed_shape,
        "classes": predictor.config.num_classes, "patch": list(predictor.patch),
        "mirror": settings.mirror, "flips": len(settings.flips), "step": settings.step,
        "window_batch": settings.window_batch, "flips_per_forward": settings.flips_per_forward or len(settings.flips),
        "autocast": str(predictor.amp_dtype).replace("torch.", "") if predictor.amp_dtype else "float32",
        "compiled": predictor.options.compile, "windows": windows, "extrapolated": best["extrapolated"],
        "seconds": {**{k: round(v, 3) for k, v in best["timings"].items()},
                    "total_s": round(sum(best["timings"].values()), 3)},
        "windows_per_s": _significant(windows / network_s),
        "model_tflop": _significant(total_flops / 1e12),
        "tflops_per_s": _significant(total_flops / network_s / 1e12),
        "peak_gpu_memory_gib": best["peak_gpu_memory_gib"],
        "peak_host_rss_gib": round(peak_rss / 2 ** 30, 2),
        "synthesis_s": round(synthesis_s, 2), "warmup_s": round(warmup_s, 2),
        "all_runs_network_s": [round(r["timings"]["network_s"], 3) for r in runs],
    }
    if args.compare_nnunet:
        report["nnunet"] = _compare_nnunet(volume, predictor, device, settings.mirror, settings.step)
    return report


def _significant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (tiny CPU models give 1e-4 TFLOP/s)."""
    return float(f"{value:.{digits}g}")


def _gpu_peak(device: torch.device) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None


def _compare_nnunet(volume: np.ndarray, predictor: Predictor, device: torch.device, mirror: bool,
                    step: float) -> Dict[str, Any]:
    from MaskSAMCore.inference.nnunet_compare import run_nnunet

    # The same volume, normalised as nnU-Net's CT normalisation would (clip, z-score).
    normalised = ((np.clip(volume, -1000.0, 1000.0) - 0.0) / 250.0).astype(np.float32)
    print_message("running nnU-Net v2's predictor on the same volume")
    return run_nnunet(normalised, predictor.config.num_classes, device, mirror=mirror, step=step)


def run_benchmark(args: BenchmarkArguments) -> int:
    args.check_values()
    if args.output:
        check_output_file(args.output, what="report")   # now, not after minutes of timing
    report = benchmark(args)
    seconds = report["seconds"]
    gpu = report["peak_gpu_memory_gib"]
    print_message(f"{report['windows']} windows ({report['flips']} flips, batch {report['window_batch']}): "
                  f"preprocess {seconds['preprocess_s']:.1f} s, network {seconds['network_s']:.1f} s"
                  f"{' (extrapolated)' if report['extrapolated'] else ''}, export {seconds['export_s']:.1f} s; "
                  f"{report['windows_per_s']:.3g} windows/s, {report['tflops_per_s']:.3g} TFLOP/s, "
                  f"{'' if gpu is None else f'peak GPU {gpu} GiB, '}peak host RSS {report['peak_host_rss_gib']} GiB")
    if args.output:
        write_json(args.output, report)
    print(json.dumps(report, indent=2))
    emit(EVENT_DONE, **{k: report[k] for k in ("windows_per_s", "tflops_per_s", "peak_gpu_memory_gib")})
    return 0
