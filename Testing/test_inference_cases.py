"""Which files of a folder `masksam predict` takes as which case, and where their label maps go."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from MaskSAMCore.cli import main
from MaskSAMCore.errors import InputError, describe_path
from MaskSAMCore.inference.cases import find_cases
from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.config import preset


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def _write_random_images(folder, *names, seed):
    """Small random float images (6 x 16 x 16) named `names` in a new `folder`."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for name in names:
        sitk.WriteImage(sitk.GetImageFromArray((rng.random((6, 16, 16)) * 100).astype(np.float32)), str(folder / name))


def _outputs(cases):
    return {case.name: (tuple(p.name for p in case.channel_files), case.output_file.name) for case in cases}


def test_numbered_one_channel_scans_are_cases_of_their_own_names(tmp_path):
    # AMOS names its scans amos_0001.nii.gz, ...: for a one-channel model these are scans, not
    # channels _0001, _0002 of one case "amos" (nnU-Net's channel files always include _0000).
    _touch(tmp_path / "in", "amos_0001.nii.gz", "amos_0002.nii.gz", "liver_007_0000.nii.gz", "plain.nrrd")
    cases = find_cases(tmp_path / "in", tmp_path / "out", num_channels=1)
    assert _outputs(cases) == {
        "amos_0001": (("amos_0001.nii.gz",), "amos_0001.nii.gz"),
        "amos_0002": (("amos_0002.nii.gz",), "amos_0002.nii.gz"),
        "liver_007": (("liver_007_0000.nii.gz",), "liver_007.nii.gz"),
        "plain": (("plain.nrrd",), "plain.nrrd"),
    }
    # One such file into an output folder keeps its number: amos_0002 must not overwrite amos_0001.
    (tmp_path / "out").mkdir()
    single = find_cases(tmp_path / "in" / "amos_0002.nii.gz", tmp_path / "out", num_channels=1)
    assert single[0].output_file == tmp_path / "out" / "amos_0002.nii.gz"


def test_channel_files_with_a_0000_stay_one_case_and_a_wrong_model_is_refused(tmp_path):
    _touch(tmp_path / "two", "pat_0000.nii.gz", "pat_0001.nii.gz")
    assert _outputs(find_cases(tmp_path / "two", tmp_path / "out", num_channels=2)) == {
        "pat": (("pat_0000.nii.gz", "pat_0001.nii.gz"), "pat.nii.gz")}
    with pytest.raises(InputError, match=r"case pat has channel file\(s\) _0000, _0001 but the model needs 1"):
        find_cases(tmp_path / "two", tmp_path / "out", num_channels=1)
    # For a two-channel model, numbered files are still missing their _0000 channel.
    _touch(tmp_path / "numbered", "amos_0001.nii.gz", "amos_0002.nii.gz")
    with pytest.raises(InputError, match="case amos has channel file"):
        find_cases(tmp_path / "numbered", tmp_path / "out", num_channels=2)


def test_every_case_missing_a_channel_is_named_in_one_line(tmp_path):
    """Two cases of a folder lack their _0001 file: both are named at once, not one per run."""
    _touch(tmp_path / "in", "a_0000.nii.gz", "b_0000.nii.gz", "c_0000.nii.gz", "c_0001.nii.gz")
    with pytest.raises(InputError) as error:
        find_cases(tmp_path / "in", tmp_path / "out", num_channels=2)
    message = str(error.value)
    assert message.startswith(f"2 of 3 cases in {describe_path(tmp_path / 'in')} cannot be segmented: ")
    assert "case a has channel file(s) _0000 but the model needs 2" in message
    assert "case b has channel file(s) _0000 but the model needs 2" in message and "\n" not in message


def test_a_long_numbered_series_is_summarised_in_the_error(tmp_path):
    _touch(tmp_path / "in", *(f"scan_{i:04d}.nii.gz" for i in range(40)))
    with pytest.raises(InputError) as error:
        find_cases(tmp_path / "in", tmp_path / "out", num_channels=1)
    assert "_0000, _0001, _0002, _0003, _0004, ... (40 files)" in str(error.value)
    assert "_0039" not in str(error.value)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    config = preset("tiny", num_classes=3)
    return write_random_model_folder(tmp_path_factory.mktemp("models") / "tiny", config,
                                     synthetic_plan(config, (2.5, 1.2, 1.2)))


def test_predict_segments_a_folder_of_numbered_scans(model, tmp_path):
    inputs = tmp_path / "imagesTs"
    _write_random_images(inputs, "amos_0001.nii.gz", "amos_0002.nii.gz", seed=0)
    outputs = tmp_path / "predictions"
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu"]) == 0
    assert sorted(p.name for p in outputs.iterdir()) == ["amos_0001.nii.gz", "amos_0002.nii.gz"]


def test_a_folder_input_with_an_image_file_name_as_output_is_refused(model, tmp_path, capsys):
    _touch(tmp_path / "in", "ct_0000.nii.gz")
    output = tmp_path / "labels.nii.gz"
    assert main(["predict", str(model), str(tmp_path / "in"), str(output), "--device", "cpu"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam: error:")]
    assert len(errors) == 1 and "labels.nii.gz: the input is a folder, so the output must be a folder too" in errors[0]
    assert not output.exists()   # no folder named like a label map
    # An existing folder of any name is fine.
    (tmp_path / "odd.nrrd").mkdir()
    assert find_cases(tmp_path / "in", tmp_path / "odd.nrrd", num_channels=1)[0].output_file == \
        tmp_path / "odd.nrrd" / "ct.nii.gz"


def test_label_maps_are_never_written_among_the_images_they_segment(tmp_path):
    """case.nii.gz beside case_0000.nii.gz would be taken for an image by the next run."""
    _touch(tmp_path / "imagesTs", "case_0000.nii.gz")
    for output in (tmp_path / "imagesTs", tmp_path / "imagesTs" / ".." / "imagesTs"):
        with pytest.raises(InputError, match="would be written among the images they segment"):
            find_cases(tmp_path / "imagesTs", output, num_channels=1)
    assert find_cases(tmp_path / "imagesTs", tmp_path / "predTs", num_channels=1)[0].output_file == \
        tmp_path / "predTs" / "case.nii.gz"


def test_a_single_file_into_a_folder_that_does_not_exist_yet(tmp_path):
    _touch(tmp_path, "ct_0000.nii.gz")
    # "out/" is a folder to create; "out" without the slash and without an ending is ambiguous
    case, = find_cases(tmp_path / "ct_0000.nii.gz", f"{tmp_path / 'out'}/", num_channels=1)
    assert case.output_file == tmp_path / "out" / "ct.nii.gz"
    with pytest.raises(InputError, match="needs an image file ending such as .nii.gz .or end it with /"):
        find_cases(tmp_path / "ct_0000.nii.gz", tmp_path / "out", num_channels=1)


def test_an_output_ending_beside_an_output_file_name_is_refused(tmp_path):
    """`predict ct.nii.gz labels.nii.gz --output-ending .nrrd`: which one was meant?"""
    _touch(tmp_path, "ct.nii.gz")
    with pytest.raises(InputError, match="OUTPUT names the file, so --output-ending .nrrd does not apply"):
        find_cases(tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz", num_channels=1, output_ending=".nrrd")
    case, = find_cases(tmp_path / "ct.nii.gz", f"{tmp_path / 'out'}/", num_channels=1, output_ending=".nrrd")
    assert case.output_file == tmp_path / "out" / "ct.nrrd"
    case, = find_cases(tmp_path / "ct.nii.gz", f"{tmp_path / 'out'}/", num_channels=1, output_ending=".MHA")
    assert case.output_file == tmp_path / "out" / "ct.mha"    # as ITK can write it


def test_continue_segments_only_the_cases_an_interrupted_run_left(model, tmp_path, capsys):
    inputs, outputs = tmp_path / "imagesTs", tmp_path / "predictions"
    _write_random_images(inputs, "a.nii.gz", "b.nii.gz", "c.nii.gz", seed=1)
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu"]) == 0
    (outputs / "b.nii.gz").unlink()                           # as if the run had stopped at b
    kept = {name: (outputs / name).read_bytes() for name in ("a.nii.gz", "c.nii.gz")}
    (inputs / "c.nii.gz").write_bytes(b"no longer an image")   # finished cases are not read again ...
    _make_older(inputs / "c.nii.gz", than=outputs / "c.nii.gz")   # ... when their output is newer
    capsys.readouterr()

    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu", "--continue"]) == 0
    err = capsys.readouterr().err
    assert "--continue: 2 of 3 case(s) have their output already and are skipped (a, c)" in err
    assert "b -> " in err and "a -> " not in err
    assert sorted(p.name for p in outputs.iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert {name: (outputs / name).read_bytes() for name in kept} == kept

    # Asking for probabilities now: no case has its probabilities file, so all are segmented again...
    (inputs / "c.nii.gz").unlink()
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu", "--continue",
                 "--probabilities"]) == 0
    assert (outputs / "a_probabilities.npz").is_file() and (outputs / "b_probabilities.npz").is_file()
    # ... and once every output is there, nothing is.
    capsys.readouterr()
    assert main(["predict", str(model), str(inputs), str(outputs), "--continue", "--probabilities"]) == 0
    assert "2 of 2 case(s) have their output already" in capsys.readouterr().err


def test_continue_segments_again_what_is_older_than_its_image_or_the_model(model, tmp_path, capsys):
    """As `make` judges: a scan exported again since its label map was written, or a model
    trained further, makes that output outdated."""
    inputs, outputs = tmp_path / "imagesTs", tmp_path / "predictions"
    _write_random_images(inputs, "a.nii.gz", "b.nii.gz", seed=2)
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu"]) == 0
    _make_older(outputs / "b.nii.gz", than=inputs / "b.nii.gz")
    capsys.readouterr()
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu", "--continue"]) == 0
    err = capsys.readouterr().err
    assert "--continue: 1 of 2 case(s) have their output already and are skipped (a)" in err
    assert "1 case(s) have an output older than their image or the model's checkpoint_final.pt and are " \
           "segmented again (b)" in err
    assert "b -> " in err and "a -> " not in err

    for name in ("a.nii.gz", "b.nii.gz"):
        _make_older(outputs / name, than=model / "checkpoint_final.pt")
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu", "--continue"]) == 0
    err = capsys.readouterr().err
    assert "2 case(s) have an output older than" in err and "have their output already" not in err


def test_continue_segments_again_an_output_that_is_cut_short_or_no_image(model, tmp_path, capsys):
    """An output left cut short (copied in by hand, damaged since) or not an image at all is not
    taken as done: only what reads whole is skipped."""
    inputs, outputs = tmp_path / "imagesTs", tmp_path / "predictions"
    _write_random_images(inputs, "a.nii.gz", "b.nii.gz", "c.nii.gz", seed=3)
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu"]) == 0
    whole = (outputs / "b.nii.gz").read_bytes()
    (outputs / "b.nii.gz").write_bytes(whole[:len(whole) // 2])
    (outputs / "c.nii.gz").write_text("not a label map")
    capsys.readouterr()
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu", "--continue"]) == 0
    err = capsys.readouterr().err
    assert "--continue: 1 of 3 case(s) have their output already and are skipped (a)" in err
    assert "2 case(s) have an output label map that cannot be read (cut short, or not an image) and are " \
           "segmented again (b, c)" in err
    assert "b -> " in err and "c -> " in err and "a -> " not in err
    assert sitk.ReadImage(str(outputs / "b.nii.gz")).GetSize() == sitk.ReadImage(str(inputs / "b.nii.gz")).GetSize()


def test_a_label_map_never_stands_beside_the_probabilities_of_another_run(model, tmp_path, capsys):
    """A run without --probabilities replacing a label map removes the probabilities an earlier
    run left beside it (saying so), and `--continue --probabilities` does not take a probabilities
    file older than its label map (left so by an interrupted or older run) as that label map's."""
    inputs, outputs = tmp_path / "imagesTs", tmp_path / "predictions"
    inputs.mkdir()
    image = (np.random.default_rng(3).random((6, 16, 16)) * 100).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(inputs / "a.nii.gz"))
    run = ["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu"]
    assert main([*run, "--probabilities"]) == 0
    earlier = (outputs / "a_probabilities.npz").read_bytes()
    written = (outputs / "a_probabilities.npz").stat().st_mtime
    capsys.readouterr()
    assert main(run) == 0
    assert sorted(p.name for p in outputs.iterdir()) == ["a.nii.gz"]
    assert f"removed {describe_path(outputs / 'a_probabilities.npz')}, an earlier run's probabilities" in \
        capsys.readouterr().err
    (outputs / "a_probabilities.npz").write_bytes(earlier)   # the first run's, as an interrupted run leaves it
    os.utime(outputs / "a_probabilities.npz", (written, written))
    assert main([*run, "--probabilities", "--continue"]) == 0
    err = capsys.readouterr().err
    assert "1 case(s) have a probabilities file older than their label map (another run's) and are segmented " \
           "again (a)" in err and "a -> " in err
    assert (outputs / "a_probabilities.npz").stat().st_mtime >= (outputs / "a.nii.gz").stat().st_mtime
    assert main([*run, "--probabilities", "--continue"]) == 0    # a pair written together is finished
    assert "1 of 1 case(s) have their output already" in capsys.readouterr().err


def _make_older(path, than):
    """Dates PATH a minute before THAN (file systems keep modification times coarsely)."""
    import os

    earlier = than.stat().st_mtime - 60
    os.utime(path, (earlier, earlier))


def test_scans_in_one_folder_per_patient_are_pointed_at_not_silently_left_out(tmp_path, capsys):
    for patient in ("pat1", "pat2"):
        _touch(tmp_path / "cohort" / patient, "ct.nii.gz")
    with pytest.raises(InputError, match=r"cohort: no image files and no DICOM files found in it \(known image "
                                         r"endings: .*\); image files lie in its subfolder\(s\) pat1, pat2: give "
                                         r"one of them as the input"):
        find_cases(tmp_path / "cohort", tmp_path / "out", num_channels=1)

    _touch(tmp_path / "cohort", "top.nrrd")   # one scan beside them: segmented, the others named
    cases = find_cases(tmp_path / "cohort", tmp_path / "out", num_channels=1)
    assert [case.name for case in cases] == ["top"]
    assert ("masksam: warning: " + describe_path(tmp_path / "cohort") +
            ": its subfolder(s) pat1, pat2 hold image files too, which are not segmented") in capsys.readouterr().err

    # The output folder of an earlier run, inside the input folder, holds label maps, not scans.
    _touch(tmp_path / "cohort2", "a.nii.gz")
    _touch(tmp_path / "cohort2" / "labels", "a.nii.gz")
    find_cases(tmp_path / "cohort2", tmp_path / "cohort2" / "labels", num_channels=1)
    assert "warning" not in capsys.readouterr().err


def test_a_final_checkpoint_older_than_the_extended_training_is_warned_about(tmp_path, capsys):
    """`train --resume --epochs 40` on a finished 2-epoch run, stopped at epoch 5: checkpoint_final
    is still epoch 2's, and predicting with it must not go without a word."""
    config = preset("tiny", num_classes=3)
    model = write_random_model_folder(tmp_path / "model", config, synthetic_plan(config, (2.5, 1.2, 1.2)))
    scan = tmp_path / "scan.nii.gz"
    hounsfield = np.random.default_rng(2).random((6, 16, 16)) * 1200 - 1000
    sitk.WriteImage(sitk.GetImageFromArray(hounsfield.astype(np.float32)), str(scan))
    meta = json.loads((model / "model.json").read_text())
    meta["training"] = {**meta.get("training", {}), "epochs": 40, "finished_epochs": 5}
    (model / "model.json").write_text(json.dumps(meta))

    assert main(["predict", str(model), str(scan), str(tmp_path / "labels.nii.gz"), "--fast", "--device", "cpu"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masksam: warning:")]
    assert warnings == [f"masksam: warning: {describe_path(model / 'checkpoint_final.pt')} is the end of an earlier, "
                        "shorter training: this one was extended to 40 epochs and stopped after 5; finish it with "
                        "masksam train ... --resume, or predict with --checkpoint latest for its newest weights"]
    meta["training"]["finished_epochs"] = 40   # finished: nothing to say
    (model / "model.json").write_text(json.dumps(meta))
    assert main(["predict", str(model), str(scan), str(tmp_path / "labels.nii.gz"), "--fast", "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("where", ["prepare_files", "predict_prepared"])
def test_running_out_of_memory_on_a_case_of_a_folder_names_that_case(model, tmp_path, capsys, monkeypatch, where):
    """Which scan of a cohort was too large for the machine, while it was read or segmented."""
    from MaskSAMCore.inference.predictor import Predictor

    inputs, outputs = tmp_path / "imagesTs", tmp_path / "predictions"
    _write_random_images(inputs, "a.nii.gz", "b.nii.gz", seed=4)
    original = getattr(Predictor, where)

    def failing_on_b(self, *args, **kwargs):
        case_name = args[1] if where == "prepare_files" else args[0].name
        if case_name == "b":
            raise MemoryError()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, where, failing_on_b)
    assert main(["predict", str(model), str(inputs), str(outputs), "--fast", "--device", "cpu"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == ["masksam: error: b: out of memory: the machine cannot hold what this asks for; close other "
                      "programs, leave out --probabilities if given, or use a machine with more memory"]
    assert sorted(p.name for p in outputs.iterdir()) == ["a.nii.gz"]
