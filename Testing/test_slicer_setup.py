"""The Slicer module's decisions that need no scene: installed models, first-use requirements,
the device list, command lines, progress text and segment naming."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

import pytest

from MaskSAMCore.terminology import AnatomyTerminology, dataset_label_key
from slicer_support import REPO, add_scalar_volume, distinct_voxel_values, model_json_meta, new_scene, oblique_grid

from MaskSAMCore.errors import ModelAlreadyInstalled, ModelFolderError
from MaskSAMSegmentLib import commands
from MaskSAMSegmentLib.devices import (DeviceChoice, DeviceReport, device_choices, parse_probe_output,
                                       probe_command, unprobed_choices)
from MaskSAMSegmentLib.job_progress import JobProgress
from MaskSAMSegmentLib.job_runner import JobRunner, JobState
from MaskSAMSegmentLib.models import find_models, install_model_folder, install_trained_model, read_model_info
from MaskSAMSegmentLib.requirements_check import REQUIREMENTS, install_plan, missing_requirements
from MaskSAMSegmentLib.training_job import TrainRequest


def write_model(folder: Path, name="Abdomen CT", version="2", labels=None, final=True, **extra) -> Path:
    folder.mkdir(parents=True)
    meta = {**model_json_meta(labels or {"background": 0, "liver": 1, "kidney_left": 2}, {"0": "CT"},
                              preset_name="vit_b", sam={"model_type": "vit_b"}),
            "name": name, "version": version, "modality": "CT", "training": {"preset": "vit_b"}, **extra}
    (folder / "model.json").write_text(json.dumps(meta))
    if final:
        (folder / "checkpoint_final.pt").write_bytes(b"final")
    (folder / "checkpoint_latest.pt").write_bytes(b"resume state")
    return folder


def test_model_summary_shows_labels_modality_and_input_size(tmp_path):
    info = read_model_info(write_model(tmp_path / "m"))
    assert info.display_name == "Abdomen CT (v2)"
    assert info.structures == ["liver", "kidney_left"]
    summary = info.summary()
    assert "Structures (2): liver, kidney_left" in summary
    assert "Modality: CT" in summary and "8 slices x 512 x 512 pixels" in summary


@pytest.mark.parametrize("change, message", [
    ({"format": "something-else"}, "does not describe a MaskSAM model"),
    ({"labels": {"liver": 1}}, "with 0 the background"),
    ({"labels": {"background": 0, "liver": "one"}}, "to the whole numbers 0, 1, 2"),
    ({"channel_names": {}}, "channel_names"),
])
def test_invalid_model_json_gives_one_line_naming_the_file(tmp_path, change, message):
    folder = write_model(tmp_path / "bad")
    meta = json.loads((folder / "model.json").read_text())
    meta.update(change)
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFolderError, match=message) as error:
        read_model_info(folder)
    assert "model.json" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"network_format": 1}, "was trained with an older MaskSAM network (format 1, this MaskSAM reads format 2)"),
    ({"labels": {"background": 0, "liver": 1, "kidney_left": 3}}, "whole numbers 0, 1, 2, ... without gaps"),
    ({"plan": {}}, "plan.transpose_forward must be an order of the axes 0, 1, 2"),
], ids=["old_network_format", "label_gap", "unusable_plan"])
def test_the_model_list_refuses_what_the_command_line_refuses_with_its_message(tmp_path, change, message):
    """The Segment tab must not list a model whose segmentation then fails in the background job:
    it refuses it when the list is made, in the very line `masksam predict` would print."""
    from MaskSAMCore.model_folder import ModelFolder

    folder = write_model(tmp_path / "models" / "old")
    meta = json.loads((folder / "model.json").read_text())
    meta.update(change)
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFolderError) as refused_by_the_command_line:
        ModelFolder.load(folder)
    assert message in str(refused_by_the_command_line.value)
    models, problems = find_models(tmp_path / "models")
    assert models == [] and problems == [str(refused_by_the_command_line.value)]


def test_import_installs_a_checked_copy_and_lists_it(tmp_path):
    root = tmp_path / "models"
    source = write_model(tmp_path / "trained")
    installed = install_model_folder(source, root=root)
    assert installed.folder == root / "Abdomen-CT-v2"
    assert (installed.folder / "checkpoint_final.pt").read_bytes() == b"final"
    assert not (installed.folder / "checkpoint_latest.pt").exists()   # resume state stays behind
    write_model(root / "broken", final=True)
    (root / "broken" / "model.json").write_text("{not json")
    models, problems = find_models(root)
    assert [m.display_name for m in models] == ["Abdomen CT (v2)"]
    assert len(problems) == 1 and "broken" in problems[0] and "not valid JSON" in problems[0]
    with pytest.raises(ModelAlreadyInstalled, match="already installed"):   # the widget asks "Replace it?"
        install_model_folder(source, root=root)
    assert install_model_folder(source, root=root, replace=True).folder == installed.folder
    assert sorted(p.name for p in root.iterdir()) == ["Abdomen-CT-v2", "broken"]   # no temporaries left


def test_a_finished_training_never_replaces_a_model_installed_from_elsewhere(tmp_path):
    root = tmp_path / "models"
    imported = install_model_folder(write_model(tmp_path / "from a colleague", version="1"), root=root)
    trained = write_model(tmp_path / "my training", version="1")
    (trained / "checkpoint_final.pt").write_bytes(b"mine")

    first = install_trained_model(trained, root=root)
    assert first.display_name == "Abdomen CT (v2)" and first.folder == root / "Abdomen-CT-v2"
    assert (imported.folder / "checkpoint_final.pt").read_bytes() == b"final"   # untouched
    # A resumed or repeated run of the same training folder replaces its own copy.
    (trained / "checkpoint_final.pt").write_bytes(b"mine, resumed")
    again = install_trained_model(trained, root=root)
    assert again.folder == first.folder
    assert (again.folder / "checkpoint_final.pt").read_bytes() == b"mine, resumed"
    assert [m.display_name for m in find_models(root)[0]] == ["Abdomen CT (v1)", "Abdomen CT (v2)"]


def test_models_named_in_other_scripts_are_installed_side_by_side(tmp_path):
    """Two models whose names have no Latin letters must not share one folder: the second import
    asked "a model named '腎臓 (v1)' is already installed. Replace it?", and Yes deleted '肝臓'."""
    root = tmp_path / "models"
    liver = install_model_folder(write_model(tmp_path / "liver", name="肝臓", version="1"), root=root)
    kidney = install_model_folder(write_model(tmp_path / "kidney", name="腎臓", version="1"), root=root)
    assert liver.folder != kidney.folder
    assert [m.display_name for m in find_models(root)[0]] == ["肝臓 (v1)", "腎臓 (v1)"]
    # Names that still share a folder: the question names the model that would be replaced.
    install_model_folder(write_model(tmp_path / "a", name="Liver model"), root=root)
    with pytest.raises(ModelFolderError, match=r"a model named 'Liver model \(v2\)' is already installed"):
        install_model_folder(write_model(tmp_path / "b", name="Liver-model"), root=root)


def test_import_refuses_unfinished_or_invalid_folders_and_leaves_nothing(tmp_path):
    root = tmp_path / "models"
    with pytest.raises(ModelFolderError, match="no checkpoint_final.pt"):
        install_model_folder(write_model(tmp_path / "unfinished", final=False), root=root)
    with pytest.raises(ModelFolderError, match="no model.json"):
        install_model_folder(tmp_path, root=root)
    assert not root.exists() or list(root.iterdir()) == []


def test_requirements_plan_uses_pytorch_extension_and_pip_for_the_rest():
    installed = {"numpy", "scipy", "matplotlib", "pydicom"}   # pydicom comes with Slicer
    missing = missing_requirements(lambda name: name in installed)
    assert [r.import_name for r in missing] == ["torch", "segment_anything", "SimpleITK"]
    plan = install_plan(missing, pytorch_extension_available=True)
    assert plan.torch_requirement == ">=2.4"
    assert plan.pip_requirements == ["segment-anything>=1.0", "SimpleITK>=2.2"]
    assert "PyTorch" in plan.question() and "segment-anything" in plan.question()
    blocked = install_plan(missing, pytorch_extension_available=False)
    assert blocked.torch_requirement is None and "Extensions Manager" in blocked.blockers[0]
    assert install_plan([], pytorch_extension_available=False).nothing_to_do


def test_a_too_old_pytorch_counts_as_missing():
    def everything(name):
        return True

    old = missing_requirements(everything, version_of=lambda dist: "2.3.1" if dist == "torch" else "99.0")
    assert [r.import_name for r in old] == ["torch"]
    assert install_plan(old, pytorch_extension_available=True).torch_requirement == ">=2.4"
    recent = {"torch": "2.13.0+cu130"}
    assert missing_requirements(everything, version_of=lambda dist: recent.get(dist, "3.9")) == []


def test_requirement_specifiers_agree_with_pyproject():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    normalised = {dep.lower().replace("_", "-") for dep in dependencies}
    # Both ways: a package the core needs and Slicer would not install breaks jobs at run time.
    assert {requirement.pip_spec.lower() for requirement in REQUIREMENTS} == normalised


def test_device_list_from_probe_output():
    report = parse_probe_output(["noise", '@masksam-devices {"torch": "2.5.0", "cuda": ['
                                 '{"index": 0, "name": "RTX 4090", "memory_gb": 23.6},'
                                 '{"index": 1, "name": "GTX 1060", "memory_gb": 5.9}], "error": null}'])
    choices = device_choices(report)
    assert [c.label for c in choices] == ["Auto (GPU 0: RTX 4090)", "GPU 0: RTX 4090 (24 GB)",
                                          "GPU 1: GTX 1060 (6 GB) - may run out of memory with vit_b", "CPU (slow)"]
    assert choices[2] == DeviceChoice(choices[2].label, "cuda", 1)
    assert [c.device for c in device_choices(None)] == ["auto", "cpu"]
    assert parse_probe_output(["Traceback ..."]) is None


def test_device_probe_runs_in_the_background_and_reports_torch():
    runner = JobRunner(probe_command(sys.executable))
    runner.start()
    assert runner.wait(timeout_s=120) is JobState.SUCCEEDED
    report = parse_probe_output(runner.log_lines)
    assert report is not None and report.torch_version and report.error is None


def test_command_lines_follow_the_cli_contract(tmp_path):
    from MaskSAMCore.cli import build_parser, train_arguments

    parser = build_parser()
    full = commands.predict_arguments("model", "in.nrrd", "out.nrrd", device="cuda", quality="full")
    fast = commands.predict_arguments("model", "in.nrrd", "out.nrrd", quality="fast", sam_checkpoint="sam.pth")
    assert parser.parse_args(full).mirror is True and parser.parse_args(full).step == 0.5
    assert parser.parse_args(fast).fast is True and parser.parse_args(fast).sam_checkpoint == "sam.pth"
    train = commands.train_arguments("ds", "out", preset="tiny", random_init=True, epochs=3, iters_per_epoch=2)
    parsed = parser.parse_args(train)
    assert (parsed.preset, parsed.random_init, parsed.epochs, parsed.iters_per_epoch) == ("tiny", True, 3, 2)
    assert (parsed.optimizer, parsed.lr) == ("adamw", 0.005)   # a workflow trial that learns something
    resumed = commands.train_arguments("ds", "out", preset="tiny", random_init=True, resume=True)
    assert "--optimizer" not in resumed and "--lr" not in resumed   # a resumed run keeps its own
    official = train_arguments(parser.parse_args(commands.train_arguments("ds", "out", sam_checkpoint="vit_b")))
    assert official.optimizer != "adamw"                       # the paper's recipe with SAM's weights
    assert parser.parse_args(commands.download_sam_arguments("vit_b")).model_type == "vit_b"
    command = commands.masksam_command(full, python="/opt/PythonSlicer")
    assert command[:4] == ["/opt/PythonSlicer", "-m", "MaskSAMCore", "--machine-progress"]


def test_job_environment_puts_this_core_first_and_selects_the_gpu():
    env = commands.job_environment({"PYTHONPATH": "/elsewhere"}, gpu_index=1)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in commands.job_environment({}, gpu_index=None)


def test_jobs_start_from_slicers_startup_environment_inside_the_application(monkeypatch):
    """Slicer's own process has its library paths set; a job must start from the environment
    Slicer was started with. Outside the application there is none: jobs use this process's."""
    import slicer

    assert commands.slicer_startup_environment() is None      # slicer-core: no application
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: {"PATH": "/launcher"}, raising=False)
    assert commands.slicer_startup_environment() == {"PATH": "/launcher"}
    env = commands.job_environment(commands.slicer_startup_environment())
    assert env["PATH"] == "/launcher" and env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)


def test_training_progress_follows_the_train_bar_and_epoch_lines():
    progress = JobProgress(clock=lambda: 0.0)   # no time passes: the ETAs as the core gave them
    progress.update({"event": "stage", "stage": "preprocess", "total": 4})
    progress.update({"event": "progress", "stage": "preprocess", "done": 2, "total": 4, "fraction": 0.5})
    assert progress.overall_fraction() == 0.5 and not progress.is_training
    progress.update({"event": "progress", "stage": "train", "done": 30, "total": 100, "fraction": 0.3, "eta_s": 70})
    progress.update({"event": "epoch", "epoch": 1, "epochs": 3, "train_loss": 0.9, "mean_dice": 0.2, "eta_s": 66})
    progress.update({"event": "progress", "stage": "validate", "done": 1, "total": 2, "fraction": 0.5, "eta_s": 1})
    assert progress.overall_fraction() == pytest.approx(0.3)       # validation does not move the bar
    assert progress.status_text(12.0) == "epoch 2/3 · validate 50% · ETA 1:06 · elapsed 0:12"
    progress.update({"event": "done"})
    assert progress.overall_fraction() == 1.0


def test_a_resumed_training_bar_starts_at_the_epochs_already_done():
    progress = JobProgress(clock=lambda: 0.0)
    progress.update({"event": "stage", "stage": "train", "total": 1000, "done": 600})   # after 6 of 10 epochs
    assert progress.overall_fraction() == pytest.approx(0.6)
    progress.update({"event": "progress", "stage": "train", "done": 700, "total": 1000, "fraction": 0.7})
    assert progress.overall_fraction() == pytest.approx(0.7)


def test_the_eta_counts_down_between_the_cores_estimates():
    """A vit_b window on a CPU takes minutes: between two progress lines the ETA must not stand still."""
    now = [100.0]
    progress = JobProgress(clock=lambda: now[0])
    progress.update({"event": "progress", "stage": "predict", "done": 1, "total": 10, "fraction": 0.1, "eta_s": 540})
    now[0] += 60
    progress.update({"event": "message", "message": "still working"})   # carries no estimate
    assert progress.status_text(120.0) == "predict 10% · ETA 8:00 · elapsed 2:00"
    now[0] += 600
    assert progress.eta_s() == 0.0   # late: never negative
    progress.update({"event": "progress", "stage": "predict", "done": 9, "total": 10, "fraction": 0.9, "eta_s": 70})
    assert progress.eta_s() == 70.0


def test_malformed_progress_values_are_ignored_rather_than_raised():
    progress = JobProgress()
    progress.update({"event": "progress", "stage": "predict", "fraction": "half", "total": "x", "eta_s": None})
    progress.update({"event": "epoch", "epoch": None, "epochs": "many", "eta_s": float("nan")})
    assert progress.epoch == 1 and progress.epochs is None and progress.stage_fraction is None
    assert progress.status_text(3.0) == "predict · elapsed 0:03"


def test_dataset_label_keys_unify_spelling_variants():
    assert dataset_label_key("Left kidney") == dataset_label_key("left_kidney") == "left_kidney"
    # Names in other scripts or with accents stay apart and keep their letters.
    keys = [dataset_label_key(name) for name in ("Lésion", "Läsion", "Cœur", "肝臓", "脾臓")]
    assert keys == ["lésion", "läsion", "cœur", "肝臓", "脾臓"]
    assert dataset_label_key("Lésion") == "lésion"   # an accent typed as two characters
    terminology = AnatomyTerminology()
    assert terminology.style(dataset_label_key("Left kidney"), 2).name == "Left kidney"


def test_full_quality_on_the_cpu_warns_before_it_takes_hours(tmp_path):
    """A clinician without a GPU who clicks Segment at full quality with a SAM-sized model would
    wait hours: the Segment button's tooltip (and the log, on the click) says so beforehand."""
    from MaskSAMSegmentLib.action_states import Activity, action_states
    from MaskSAMSegmentLib.segment_job import SegmentRequest, cpu_speed_note

    volume = add_scalar_volume(new_scene(), distinct_voxel_values(), oblique_grid())
    vit_b = read_model_info(write_model(tmp_path / "vit_b"))
    tiny = read_model_info(write_model(tmp_path / "tiny", training={"preset": "tiny"}))
    auto_on_cpu, cpu = device_choices(None)
    auto_on_gpu, gpu, _ = device_choices(DeviceReport("2.5.0", ((0, "H100", 79.6),)))
    train = TrainRequest(str(tmp_path / "none"), str(tmp_path / "out"), preset="tiny")
    for device in (auto_on_cpu, cpu):
        request = SegmentRequest([volume], vit_b, device=device, quality="full")
        assert "Full quality predicts every window up to 8 times" in cpu_speed_note(request)
        state = action_states([], request, train, [], "", Activity())["segmentButton"]
        assert state.enabled and state.tooltip.splitlines() == [
            "Segment the input volume with the selected model.", cpu_speed_note(request)]
    quiet = [SegmentRequest([volume], vit_b, device=cpu, quality="fast"),
             SegmentRequest([volume], tiny, device=cpu, quality="full"),
             *(SegmentRequest([volume], vit_b, device=device, quality="full")
               for device in (auto_on_gpu, gpu, unprobed_choices()[0]))]
    assert [cpu_speed_note(request) for request in quiet] == [None] * 5
    state = action_states([], quiet[0], train, [], "", Activity())["segmentButton"]
    assert state.tooltip == "Segment the input volume with the selected model."
