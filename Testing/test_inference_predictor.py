"""`masksam predict` through the real predictor with a tiny random-weight model: the output lies on
exactly the input's grid (oblique, anisotropic, NIfTI and NRRD, smaller than the patch, odd sizes),
folders with several channels, probabilities, and arrays left untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MaskSAMCore.cli import main
from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.image_writing import write_image
from MaskSAMCore.inference.predictor import PredictOptions, Predictor
from MaskSAMCore.inference.random_model import synthetic_plan, write_random_model_folder
from MaskSAMCore.model.config import preset
from MaskSAMCore.progress import enable_machine_lines

CLASSES = 3


def oblique_direction(degrees_z: float = 25.0, degrees_x: float = 12.0) -> tuple:
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


def body_image(shape_zyx, seed=0) -> np.ndarray:
    """A smooth, non-constant 'CT' (HU) of the given shape with an air border."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    body = (y ** 2 + x ** 2 < 0.8).astype(np.float32)
    organ = ((y - 0.2) ** 2 + (x + 0.1) ** 2 + 0.3 * z ** 2 < 0.15).astype(np.float32)
    image = -1000 + body * 1040 + organ * 60 + rng.normal(0, 10, shape_zyx)
    return image.astype(np.float32)


@pytest.fixture(autouse=True)
def machine_lines_off_afterwards():
    """`--machine-progress` switches machine lines on for the whole process; switch them off again."""
    yield
    enable_machine_lines(False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = preset("tiny", num_classes=CLASSES)
    # A target spacing different from every test image's: preprocessing resamples, restore must undo it.
    plan = synthetic_plan(config, target_spacing_zyx=(2.5, 1.2, 1.2))
    return write_random_model_folder(tmp_path_factory.mktemp("models") / "tiny", config, plan)


def write_case(path, size_xyz, spacing, seed=0):
    geometry = ImageGeometry(size_xyz, spacing, (-71.5, 33.25, 402.0), oblique_direction())
    write_image(body_image(geometry.shape_zyx, seed), geometry, path)
    return geometry


CASES = {
    "oblique_anisotropic_nifti": ("case.nii.gz", (40, 36, 6), (0.9, 1.1, 3.7)),
    "oblique_anisotropic_nrrd": ("case.nrrd", (40, 36, 6), (0.9, 1.1, 3.7)),
    "smaller_than_the_patch": ("small.nrrd", (11, 9, 3), (2.0, 2.2, 4.0)),
    "odd_sizes": ("odd.nii.gz", (67, 45, 13), (1.3, 1.7, 2.9)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_output_lies_exactly_on_the_input_grid(model_dir, tmp_path, name):
    filename, size, spacing = CASES[name]
    source = tmp_path / filename
    write_case(source, size, spacing)
    target = tmp_path / "out" / filename.replace("case", "labels")
    assert main(["predict", str(model_dir), str(source), str(target), "--fast", "--device", "cpu"]) == 0
    written, original = sitk.ReadImage(str(target)), sitk.ReadImage(str(source))
    assert written.GetSize() == original.GetSize()
    # NRRD keeps doubles (its spacing x direction text re-splits within 1e-15); NIfTI stores float32.
    tolerance = 1e-12 if filename.endswith(".nrrd") else 1e-6
    np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), rtol=0, atol=tolerance)
    labels = sitk.GetArrayFromImage(written)
    assert labels.dtype == np.uint8 and labels.max() < CLASSES
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporaries left


def test_folder_with_two_channels_and_probabilities(tmp_path):
    config = preset("tiny", num_classes=CLASSES, in_channels=2)
    plan = synthetic_plan(config, (3.0, 1.5, 1.5), channel_names={"0": "CT", "1": "PET"})
    model = write_random_model_folder(tmp_path / "model2", config, plan)
    inputs = tmp_path / "in"
    for case, ending in (("liver_001", ".nii.gz"), ("liver_002", ".mha")):
        geometry = write_case(inputs / f"{case}_0000{ending}", (30, 26, 7), (1.4, 1.4, 3.3))
        write_image(body_image(geometry.shape_zyx, seed=5) + 1000, geometry, inputs / f"{case}_0001{ending}")
    outputs = tmp_path / "out"
    assert main(["--machine-progress", "predict", str(model), str(inputs), str(outputs), "--no-mirror",
                 "--step", "1.0", "--probabilities", "--device", "cpu"]) == 0
    assert sorted(p.name for p in outputs.iterdir()) == [
        "liver_001.nii.gz", "liver_001_probabilities.npz", "liver_002.mha", "liver_002_probabilities.npz"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / "liver_002.mha")))
    with np.load(outputs / "liver_002_probabilities.npz") as saved:
        probabilities = saved["probabilities"].astype(np.float32)
        assert probabilities.shape == (CLASSES, *labels.shape)
        assert list(saved["class_names"]) == ["background", "structure_1", "structure_2"]
        np.testing.assert_allclose(saved["spacing"], (1.4, 1.4, 3.3), rtol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=5e-3)
    # Labels are the argmax of per-class-resampled scores, probabilities those scores normalised:
    # they agree except where two classes (nearly) tie.
    assert (probabilities.argmax(axis=0) == labels).mean() > 0.98


def test_a_failure_while_writing_probabilities_leaves_neither_file(model_dir, tmp_path, monkeypatch):
    """Labels and probabilities appear together or not at all (a cancel or a full disk half-way
    must not leave a label map without its npz, or beside the npz of an earlier run)."""
    import MaskSAMCore.inference.export as export

    source = tmp_path / "case.nii.gz"
    write_case(source, (24, 20, 6), (1.25, 1.25, 2.5))
    outputs = tmp_path / "out"
    outputs.mkdir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_class_on_original_grid", interrupted)
    assert main(["predict", str(model_dir), str(source), str(outputs / "case.nii.gz"), "--no-mirror",
                 "--step", "1.0", "--probabilities", "--device", "cpu"]) == 130   # Ctrl-C's status
    assert list(outputs.iterdir()) == []
    monkeypatch.undo()
    assert main(["predict", str(model_dir), str(source), str(outputs / "case.nii.gz"), "--no-mirror",
                 "--step", "1.0", "--probabilities", "--device", "cpu"]) == 0
    assert sorted(p.name for p in outputs.iterdir()) == ["case.nii.gz", "case_probabilities.npz"]


def test_predict_array_leaves_the_input_untouched_and_matches_the_file_path(model_dir, tmp_path):
    source = tmp_path / "case.nrrd"
    geometry = write_case(source, (24, 20, 6), (1.25, 1.25, 2.5))  # = target spacing: no resampling
    image = body_image(geometry.shape_zyx)
    predictor = Predictor.from_model_folder(model_dir, device="cpu",
                                            options=PredictOptions(mirror=False, step=1.0, show_progress=False))
    predictor.plan = dict(predictor.plan, target_spacing=[2.5, 1.25, 1.25])
    copy = image.copy()
    labels = predictor.predict_array(image, geometry)
    np.testing.assert_array_equal(image, copy)
    assert labels.shape == geometry.shape_zyx
    from_file = predictor.predict_file([source], tmp_path / "labels.nrrd")
    np.testing.assert_array_equal(from_file.labels, labels)
    assert set(from_file.timings) == {"preprocess_s", "network_s", "export_s"}


def test_machine_progress_lines_report_each_case(model_dir, tmp_path, capfd):
    source = tmp_path / "case.nii.gz"
    write_case(source, (20, 20, 5), (1.2, 1.2, 2.5))
    assert main(["--machine-progress", "predict", str(model_dir), str(source), str(tmp_path / "l.nii.gz"),
                 "--fast", "--device", "cpu"]) == 0
    events = [json.loads(line.split(" ", 1)[1]) for line in capfd.readouterr().out.splitlines()
              if line.startswith("@masksam ")]
    kinds = [e["event"] for e in events]
    assert "progress" in kinds and kinds[-1] == "done"
    case = next(e for e in events if e["event"] == "case")
    assert case["case"] == "case" and case["output"].endswith("l.nii.gz")


def test_mirroring_keeps_left_and_right_apart_when_training_did(model_dir, tmp_path):
    """A model trained without left-right flips (lateral labels) is never flipped left-right."""
    import shutil

    folder = tmp_path / "lateral"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["training"]["mirror_axes"] = [0, 1]  # W (patch axis 2) was the left-right axis
    (folder / "model.json").write_text(json.dumps(meta))
    lateral = Predictor.from_model_folder(folder, device="cpu")
    flips = lateral.window_settings().flips
    assert len(flips) == 4 and all(4 not in flip for flip in flips)
    assert len(Predictor.from_model_folder(model_dir, device="cpu").window_settings().flips) == 8


@pytest.mark.parametrize("extra, expected", [(["--fast"], "no mirroring, step 1"),
                                             (["--fast", "--step", "0.5"], "no mirroring, step 0.5")])
def test_fast_keeps_an_explicit_step(model_dir, tmp_path, capsys, extra, expected):
    """--fast is step 1.0 unless --step is given, 0.5 included (it used to read as "not given")."""
    source = tmp_path / "case.nii.gz"
    write_case(source, (20, 20, 5), (1.2, 1.2, 2.5))
    assert main(["predict", str(model_dir), str(source), str(tmp_path / "l.nii.gz"), "--device", "cpu",
                 *extra]) == 0
    assert f"1 case(s), {expected}\n" in capsys.readouterr().err


def test_a_sam_sized_network_mirrored_on_the_cpu_gets_a_note_about_fast(model_dir, tmp_path, capsys):
    """Mirroring a SAM encoder on the CPU takes hours (benchmarks (b)): the run says so and names
    --fast up front; the tiny network, or --fast, runs without the note."""
    config = preset("tiny", num_classes=CLASSES)
    config.backbone.sam_type = "vit_b"   # the note goes by the backbone; the tiny widths keep the test fast
    sam_sized = write_random_model_folder(tmp_path / "sam_sized", config, synthetic_plan(config))
    source = tmp_path / "case.nii.gz"
    write_case(source, (20, 20, 5), (1.2, 1.2, 2.5))
    note = "masksam: note: on the CPU a vit_b network takes tens of seconds per forward and mirroring makes 8 forwards"
    runs = [(sam_sized, [], True), (sam_sized, ["--fast"], False), (model_dir, [], False)]
    for folder, extra, expected in runs:
        assert main(["predict", str(folder), str(source), str(tmp_path / "l.nii.gz"), "--device", "cpu", *extra]) == 0
        err = capsys.readouterr().err
        assert (note in err) == expected, err
        assert ("--fast (one forward per window, step 1.0) takes minutes" in err) == expected
