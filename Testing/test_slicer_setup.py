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
from MaskSAMSegmentLib.training_job import TrainRequest, epochs_argument


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


def make_dataset(folder: Path, cases: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1},
                                                     "channel_names": {"0": "CT"}, "numTraining": cases,
                                                     "file_ending": ".nii.gz"}))
    return folder


def test_start_training_problems_name_each_missing_piece(tmp_path, monkeypatch):
    from MaskSAMSegmentLib.training_job import automatic_fold, train_problems

    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    assert train_problems(TrainRequest("", "")) == [
        "Choose a dataset folder (nnU-Net raw format), or build one from the scene.",
        "Choose an output folder for the trained model.",
        "Choose a SAM vit_b checkpoint: 'Download' the official one, or pick a .pth file."]
    dataset = make_dataset(tmp_path / "Dataset1", cases=3)
    assert automatic_fold(str(dataset)) == "all" and automatic_fold(str(make_dataset(tmp_path / "D5", 5))) == "0"
    bom = make_dataset(tmp_path / "WindowsEdited", cases=3)   # Notepad starts UTF-8 files with a byte order mark
    (bom / "dataset.json").write_text((bom / "dataset.json").read_text(), encoding="utf-8-sig")
    assert automatic_fold(str(bom)) == "all"
    assert train_problems(TrainRequest(str(dataset), str(tmp_path / "new"), preset="tiny")) == []
    cache = tmp_path / "home" / "sam_checkpoints"
    cache.mkdir(parents=True)
    (cache / "sam_vit_b_renamed.pth").write_bytes(b"weights")  # not the file the core looks for
    assert train_problems(TrainRequest(str(dataset), str(tmp_path / "new"), preset="vit_b")) == [
        "Choose a SAM vit_b checkpoint: 'Download' the official one, or pick a .pth file."]
    (cache / "sam_vit_b_01ec64.pth").write_bytes(b"weights")
    assert train_problems(TrainRequest(str(dataset), str(tmp_path / "new"), preset="vit_b")) == []
    assert train_problems(TrainRequest(str(dataset), str(tmp_path / "new"), preset="vit_h")) == [
        "Choose a SAM vit_h checkpoint: 'Download' the official one, or pick a .pth file."]
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "checkpoint_latest.pt").write_bytes(b"state")
    assert "tick Resume" in train_problems(TrainRequest(str(dataset), str(earlier), preset="tiny"))[0]
    assert train_problems(TrainRequest(str(dataset), str(earlier), preset="vit_h", resume=True)) == []
    assert "Nothing to resume" in train_problems(TrainRequest(str(dataset), str(tmp_path / "x"), resume=True))[0]
    # a training killed before its first checkpoint (SIGKILL, out of memory) left only what it
    # writes first: Start begins it again, Resume explains why there is nothing to continue
    killed = tmp_path / "killed"
    (killed / "preprocessed").mkdir(parents=True)
    (killed / "model.json").write_text('{"format": "masksam-model"}')
    (killed / "plans.json").write_text("{}")
    assert train_problems(TrainRequest(str(dataset), str(killed), preset="tiny")) == []
    assert "stopped before the first epoch ended" in train_problems(
        TrainRequest(str(dataset), str(killed), preset="tiny", resume=True))[0]
    (killed / "notes.txt").write_text("mine")
    assert "is not empty" in train_problems(TrainRequest(str(dataset), str(killed), preset="tiny"))[0]


def test_resume_passes_epochs_only_to_train_a_run_longer(tmp_path):
    """Resume keeps the run's own length unless Epochs asks for more: the spin box may still show
    a default far below a long run's, which must not cut that run short."""
    from MaskSAMCore.cli import build_parser

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"format": "masksam-model", "training": {"epochs": 300}}))
    parser = build_parser()

    def given_epochs(epochs, resume=True, folder=run):
        request = TrainRequest("ds", str(folder), preset="tiny", epochs=epochs, resume=resume)
        arguments = commands.train_arguments("ds", str(folder), epochs=epochs_argument(request), resume=resume)
        return parser.parse_args(arguments).epochs

    assert given_epochs(100, resume=False) == 100
    assert given_epochs(100) is None and given_epochs(300) is None   # the run's own 300
    assert given_epochs(400) == 400
    assert given_epochs(400, folder=tmp_path / "unreadable") is None   # the core explains


def test_the_training_job_resumes_with_the_runs_own_length_unless_epochs_asks_for_more(tmp_path, monkeypatch):
    from MaskSAMSegmentLib import training_job

    started = []

    class Recorder:
        def __init__(self, command, **kwargs):
            self.command = command

        def start(self):
            started.append(self.command)

    monkeypatch.setattr(training_job, "JobRunner", Recorder)
    dataset = make_dataset(tmp_path / "Dataset1", cases=3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"format": "masksam-model", "training": {"epochs": 300}}))
    (run / "checkpoint_latest.pt").write_bytes(b"resume state")
    for epochs in (100, 400):
        request = TrainRequest(str(dataset), str(run), preset="tiny", epochs=epochs, resume=True)
        training_job.TrainingJob(request).start()
    assert [command[command.index("--epochs") + 1] if "--epochs" in command else None for command in started] \
        == [None, "400"]
    assert all("--resume" in command for command in started)


def test_button_states_follow_what_is_running_and_what_is_missing(tmp_path, monkeypatch):
    from MaskSAMSegmentLib.action_states import Activity, action_states
    from MaskSAMSegmentLib.segment_job import SegmentRequest

    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    train = TrainRequest(str(make_dataset(tmp_path / "ds", 6)), str(tmp_path / "out"), preset="tiny")
    idle = action_states([], SegmentRequest([], None), train, [], "", Activity())
    assert not idle["segmentButton"].enabled and "Select an input volume." in idle["segmentButton"].tooltip
    assert idle["startTrainingButton"].enabled and not idle["stopTrainingButton"].enabled
    assert not idle["downloadSamButton"].enabled and "uses no SAM weights" in idle["downloadSamButton"].tooltip
    assert idle["buildDatasetButton"].tooltip.splitlines() == [
        "Add at least one volume + segmentation pair.", "Choose a folder for the new dataset."]
    busy = action_states([], SegmentRequest([], None), train, [], "", Activity(training=True))
    assert not busy["startTrainingButton"].enabled and busy["stopTrainingButton"].enabled
    missing = action_states(["PyTorch"], SegmentRequest([], None), train, [], "", Activity())
    assert not missing["startTrainingButton"].enabled
    assert missing["startTrainingButton"].tooltip.startswith("Install the missing Python packages first (PyTorch).")


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


def test_training_a_sam_sized_preset_on_the_cpu_warns_that_it_takes_days(tmp_path, monkeypatch):
    from MaskSAMSegmentLib.action_states import Activity, action_states
    from MaskSAMSegmentLib.segment_job import SegmentRequest
    from MaskSAMSegmentLib.training_job import cpu_training_note

    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    dataset, output = str(make_dataset(tmp_path / "ds", 6)), str(tmp_path / "out")
    auto_on_cpu, cpu = device_choices(None)
    auto_on_gpu = device_choices(DeviceReport("2.5.0", ((0, "H100", 79.6),)))[0]
    for device in (auto_on_cpu, cpu):
        train = TrainRequest(dataset, output, preset="vit_b", random_init=True, device=device)
        assert "training the vit_b preset takes days" in cpu_training_note(train)
        state = action_states([], SegmentRequest([], None), train, [], "", Activity())["startTrainingButton"]
        assert state.enabled and state.tooltip.splitlines() == [
            "Start training in the background.", cpu_training_note(train)]
    assert cpu_training_note(TrainRequest(dataset, output, preset="tiny", device=cpu)) is None
    assert cpu_training_note(TrainRequest(dataset, output, preset="vit_b", device=auto_on_gpu)) is None


def test_the_modules_logic_loads_in_a_slicer_without_pytorch():
    """A fresh Slicer has no PyTorch until the module installs it: every logic file (and the core
    code it uses, such as the SAM checkpoint lookup) must import without it."""
    import subprocess
    import textwrap

    from slicer_support import MODULE_DIR

    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        sys.modules["torch"] = None          # 'import torch' now raises ImportError
        sys.path[:0] = [{str(MODULE_DIR)!r}, {str(REPO)!r}]
        import MaskSAMSegmentLib
        for found in pkgutil.iter_modules(MaskSAMSegmentLib.__path__):
            importlib.import_module("MaskSAMSegmentLib." + found.name)
        print("imported", len(list(pkgutil.iter_modules(MaskSAMSegmentLib.__path__))))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("imported ")
