"""`masksam benchmark` on the CPU with the tiny preset: stage seconds, FLOPs, memory, as JSON."""

from __future__ import annotations

import json
import sys

import pytest

from MaskSAMCore.cli import main
from MaskSAMCore.inference.nnunet_compare import nnunet_available
from MaskSAMCore.inference.windows import WindowGrid


def test_benchmark_reports_stages_throughput_and_memory(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--preset", "tiny", "--shape", "10", "40", "70", "--classes", "3", "--device", "cpu",
                 "--fast", "--resample", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    # --resample: the network grid is 0.8/0.82 of the in-plane size.
    assert report["preprocessed_shape"] == [10, 39, 68]
    assert report["windows"] == len(WindowGrid((10, 39, 68), (4, 64, 64), 1.0)) == 6
    assert report["flips"] == 1 and report["mirror"] is False and report["extrapolated"] is False
    assert set(report["seconds"]) == {"preprocess_s", "network_s", "export_s", "total_s"}
    assert report["model_tflop"] > 0 and report["tflops_per_s"] > 0 and report["windows_per_s"] > 0
    assert report["peak_host_rss_gib"] > 0.1 and report["peak_gpu_memory_gib"] is None
    assert "nnunet" not in report
    # The summary line gives significant digits: a tiny CPU model's 0.008 TFLOP/s, not "0.01" (or "0.00").
    summary = [line for line in capsys.readouterr().err.splitlines() if "TFLOP/s" in line]
    assert len(summary) == 1 and f" {report['tflops_per_s']:.3g} TFLOP/s," in summary[0], summary


def test_benchmark_can_extrapolate_from_a_few_windows(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--preset", "tiny", "--shape", "16", "40", "40", "--classes", "3", "--device", "cpu",
                 "--max-windows", "1", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["extrapolated"] is True and report["windows"] == 7 and report["flips"] == 8
    # Model FLOPs scale with windows x flips: 7 windows of 8 flips each.
    fast = tmp_path / "fast.json"
    assert main(["benchmark", "--preset", "tiny", "--shape", "16", "40", "40", "--classes", "3", "--device", "cpu",
                 "--fast", "--max-windows", "1", "--output", str(fast)]) == 0
    fast_report = json.loads(fast.read_text())
    assert fast_report["windows"] == 4
    assert report["model_tflop"] == pytest.approx(fast_report["model_tflop"] * 7 * 8 / 4, rel=0.01)


def test_an_extrapolated_run_restores_and_exports_as_predict_does(tmp_path, monkeypatch):
    """--max-windows with --resample: the label map is restored slab by slab inside the window loop
    (as predict does), never from a whole host score array (which timed another export and took
    twice predict's host memory)."""
    import MaskSAMCore.data.preprocessing as preprocessing
    from MaskSAMCore.inference.restore_sink import ResampledLabelSink

    def whole_array(*args, **kwargs):
        raise AssertionError("the whole score array was restored on the host")

    monkeypatch.setattr(preprocessing, "restore_scores_argmax", whole_array)
    restored = []
    original_put = ResampledLabelSink.put
    monkeypatch.setattr(ResampledLabelSink, "put", lambda sink, z, block: (restored.append(sink.network_shape),
                                                                           original_put(sink, z, block))[1])
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--preset", "tiny", "--shape", "10", "40", "70", "--classes", "3", "--device", "cpu",
                 "--fast", "--resample", "--max-windows", "1", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["extrapolated"] is True and report["windows"] == 6
    assert (10, 39, 68) in restored   # the timed volume's own blocks, not only the warm-up's
    assert report["seconds"]["export_s"] >= 0 and report["peak_host_rss_gib"] > 0.1


def test_the_stand_in_network_runs_the_model_on_the_first_patches_and_scales_their_time():
    from types import SimpleNamespace

    import torch

    from MaskSAMCore.inference.benchmark_extrapolation import FirstPatchesOnly

    class Model(torch.nn.Module):
        config = SimpleNamespace(num_classes=3)
        calls = 0

        def segment(self, patches):
            self.calls += patches.shape[0]
            return torch.ones((patches.shape[0], 3, *patches.shape[2:]))

    model = Model()
    network = FirstPatchesOnly(model, budget=2, device=torch.device("cpu"))
    scores = [network.segment(torch.zeros((1, 1, 2, 4, 4))) for _ in range(5)]
    assert model.calls == 2 and network.timed_patches == 2 and network.skipped_patches == 3
    assert [float(s.sum()) for s in scores] == [96.0, 96.0, 0.0, 0.0, 0.0]
    assert scores[-1].shape == (1, 3, 2, 4, 4) and scores[-1].dtype == torch.float32
    network.seconds = 2.0   # 2 s of real forwards in a 3 s loop: 1 s of the rest, 5 s of network for 5
    assert network.extrapolated_seconds(3.0) == pytest.approx(1.0 + 5.0)


@pytest.mark.skipif(nnunet_available(), reason="nnU-Net is installed here")
def test_compare_nnunet_without_nnunet_is_refused_before_any_timing(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--preset", "tiny", "--shape", "4", "40", "40", "--classes", "3", "--device", "cpu",
                 "--fast", "--compare-nnunet", "--output", str(out)]) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ["masksam: error: --compare-nnunet needs nnU-Net v2 in this Python (pip install nnunetv2); "
                    "nothing was measured"]
    assert not out.exists()


def test_benchmark_fast_keeps_an_explicit_step(tmp_path):
    """As `predict --fast --step 0.5`: no mirroring, but the half-overlapping windows asked for."""
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--preset", "tiny", "--shape", "16", "40", "40", "--classes", "3", "--device", "cpu",
                 "--fast", "--step", "0.5", "--max-windows", "1", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["step"] == 0.5 and report["flips"] == 1
    assert report["windows"] == len(WindowGrid((16, 40, 40), (4, 64, 64), 0.5)) == 7


def test_benchmark_of_a_multi_channel_model_folder(tmp_path):
    """--model-dir with a two-channel (CT + PET) model: every channel gets a synthetic volume."""
    from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
    from MaskSAMCore.model.config import preset

    config = preset("tiny", num_classes=3, in_channels=2)
    model = write_random_model_folder(tmp_path / "ct_pet", config,
                                      synthetic_plan(config, channel_names={"0": "CT", "1": "PET"}))
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--model-dir", str(model), "--shape", "8", "40", "40", "--device", "cpu",
                 "--fast", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["windows"] == len(WindowGrid((8, 40, 40), (4, 64, 64), 1.0)) == 2 and report["classes"] == 3


def test_benchmark_of_a_model_with_coarse_slices_runs_on_its_own_grid(tmp_path):
    """A model planned at 3.7 mm slices (as the phantom models are): the synthetic volume lies on
    the model's grid, so neither the warm-up nor the timed volume is resampled away."""
    from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
    from MaskSAMCore.model.config import preset

    config = preset("tiny", num_classes=3)
    model = write_random_model_folder(tmp_path / "coarse", config, synthetic_plan(config, (3.7, 1.4, 1.4)))
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--model-dir", str(model), "--shape", "8", "40", "40", "--device", "cpu",
                 "--fast", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["preprocessed_shape"] == [8, 40, 40]


def test_benchmark_of_a_sagittal_model_without_the_informative_zyx_spacing_runs_on_its_own_grid(tmp_path):
    """A model sliced along x (transposed plan) whose model.json lacks "target_spacing_zyx" (it is
    not required): the volume's grid comes from "target_spacing" and the transpose, as in
    preprocessing, so nothing is resampled and no KeyError stops the run."""
    from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
    from MaskSAMCore.model.config import preset

    config = preset("tiny", num_classes=3)
    plan = synthetic_plan(config, (1.4, 1.2, 3.7))
    plan.update(transpose_forward=[2, 0, 1], transpose_backward=[1, 2, 0], target_spacing=[3.7, 1.4, 1.2])
    del plan["target_spacing_zyx"]
    model = write_random_model_folder(tmp_path / "sagittal", config, plan)
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--model-dir", str(model), "--shape", "40", "44", "8", "--device", "cpu",
                 "--fast", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["preprocessed_shape"] == [8, 40, 44]


def test_benchmark_resample_of_a_model_with_coarse_slices_is_slightly_finer_than_its_grid(tmp_path, capsys):
    """--resample on a model planned at 3.7 x 1.4 x 1.4 mm: the volume and the warm-up lie 0.8/0.82
    finer in-plane than the model's spacing and on its slices, so the scores are resampled back
    while the window count stays that of --shape (a fixed 1 x 0.8 x 0.8 mm grid made the 4-slice
    warm-up a single slice, "too few to segment", and the timed volume 8/3.7 slices)."""
    from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
    from MaskSAMCore.model.config import preset

    config = preset("tiny", num_classes=3)
    model = write_random_model_folder(tmp_path / "coarse", config, synthetic_plan(config, (3.7, 1.4, 1.4)))
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--model-dir", str(model), "--shape", "8", "40", "70", "--device", "cpu",
                 "--fast", "--resample", "--output", str(out)]) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["preprocessed_shape"] == [8, 39, 68]
    assert report["windows"] == len(WindowGrid((8, 39, 68), (4, 64, 64), 1.0)) == 4


def test_a_shape_too_large_for_the_host_is_refused_before_the_volume_is_made(tmp_path, capsys, monkeypatch):
    """Making the synthetic volume of --shape 300 2000 2000 took minutes and gigabytes before
    predict's check refused it, naming a header the synthetic volume does not have."""
    from MaskSAMCore.inference import benchmark, devices

    def synthetic_ct(*args, **kwargs):
        raise AssertionError("the synthetic volume was made")

    monkeypatch.setattr(devices, "available_host_bytes", lambda: 2 ** 20)   # a 1 MiB machine
    monkeypatch.setattr(benchmark, "synthetic_ct", synthetic_ct)
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--preset", "tiny", "--shape", "10", "40", "70", "--classes", "3", "--device", "cpu",
                 "--fast", "--output", str(out)]) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("masksam: error: --shape 10 40 70: the benchmark needs about "), said
    assert said[0].endswith(" GiB of host memory (0.000977 GiB available); choose a smaller --shape"), said
    assert not out.exists()


def test_the_host_memory_estimate_counts_the_volume_its_copies_and_the_score_slabs():
    from types import SimpleNamespace

    from MaskSAMCore.inference.benchmark import host_bytes_needed
    from MaskSAMCore.inference.input_checks import HOST_COPIES_OF_RESAMPLED

    predictor = SimpleNamespace(config=SimpleNamespace(in_channels=2, num_classes=16), patch=(8, 512, 512),
                                device=SimpleNamespace(type="cpu"))
    volume = 4 * 2 * 300 * 2000 * 2000
    slabs = 2 * 4 * 16 * 8 * 2000 * 2000
    assert host_bytes_needed((300, 2000, 2000), predictor) == (1 + HOST_COPIES_OF_RESAMPLED) * volume + slabs
    predictor.device.type = "cuda"   # the slabs are on the GPU there
    assert host_bytes_needed((300, 2000, 2000), predictor) == (1 + HOST_COPIES_OF_RESAMPLED) * volume


def test_a_model_folder_beside_preset_or_classes_is_refused(tmp_path, capsys):
    """--preset/--classes choose the random network; with --model-dir they would be ignored."""
    assert main(["benchmark", "--model-dir", str(tmp_path), "--classes", "4", "--device", "cpu"]) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert said[-1] == "masksam: error: --preset and --classes choose a random network; a --model-dir brings its own"



@pytest.mark.skipif(nnunet_available(), reason="nnU-Net is installed here")
def test_compare_nnunet_with_a_broken_nnunet_is_refused_before_any_timing(tmp_path, capsys, monkeypatch):
    """nnU-Net installed without one of its own dependencies (threadpoolctl, as pip --no-deps
    leaves it) is found before MaskSAM's part runs, in one line naming the missing module."""
    for package, body in [("nnunetv2", ""), ("dynamic_network_architectures", ""),
                          ("nnunetv2/inference", ""), ("dynamic_network_architectures/architectures", ""),
                          ("dynamic_network_architectures/architectures/unet.py", None),
                          ("nnunetv2/inference/predict_from_raw_data.py", "import threadpoolctl_is_missing\n")]:
        path = tmp_path / "site" / package
        if package.endswith(".py"):
            path.write_text(body or "")
        else:
            path.mkdir(parents=True)
            (path / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    out = tmp_path / "bench.json"
    try:
        assert main(["benchmark", "--preset", "tiny", "--shape", "4", "40", "40", "--classes", "3", "--device",
                     "cpu", "--fast", "--compare-nnunet", "--output", str(out)]) == 1
    finally:   # later tests must not find the broken packages imported
        for name in [n for n in sys.modules if n.split(".")[0] in ("nnunetv2", "dynamic_network_architectures")]:
            del sys.modules[name]
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ["masksam: error: --compare-nnunet nnU-Net v2 is installed but "
                    "nnunetv2.inference.predict_from_raw_data cannot be imported (ModuleNotFoundError: "
                    "No module named 'threadpoolctl_is_missing'); nothing was measured"]
    assert not out.exists()
