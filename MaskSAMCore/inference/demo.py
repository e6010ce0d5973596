"""`masksam demo [OUTPUT]`: the whole MaskSAM path on synthetic data, in one command.

1. writes a phantom abdominal CT dataset (`make-phantoms`, with held-out test cases);
2. fine-tunes the ``tiny`` preset from random weights (`masksam train`): at least the learning
   test's 600 steps, more when ``--minutes`` leaves room;
3. predicts the held-out phantoms (`masksam predict`, default quality: mirrored windows);
4. scores them against their labels (`masksam evaluate`: per-class Dice, HD95);
5. draws the test slice with the most foreground: image, ground truth, prediction (PNG).

Every step runs through the same command-line entry points a user would type, so the demo
exercises exactly the shipped code. OUTPUT is created; a folder left by an earlier demo (it
holds a ``.masksam-demo`` marker) is replaced, any other non-empty folder is refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from MaskSAMCore.atomic import folders_made, write_text, write_with
from MaskSAMCore.data.dataset_json import read_dataset_meta
from MaskSAMCore.errors import Cancelled, InputError, MaskSAMError, describe_path, list_some
from MaskSAMCore.inference import devices
from MaskSAMCore.inference.arguments import DemoArguments
from MaskSAMCore.paths import check_can_create

MARKER = ".masksam-demo"
TEST_CASES = 3
# Fraction of the time budget given to training steps; the rest covers preprocessing,
# per-epoch validation and checkpoints.
TRAINING_SHARE = 0.7


# What a demo run writes into its folder: a later run replaces these and nothing else.
DEMO_ENTRIES = (MARKER, "dataset", "model", "predictions", "evaluation.json", "prediction_overlay.png")


def check_output(output: Path) -> None:
    """`output` may take a demo run: a new folder, an empty one, or an earlier demo's (whose
    results the run replaces). A folder holding anything the demo did not write is refused, so
    no file of the user's is ever deleted."""
    if output.exists() and not output.is_dir():
        raise InputError(f"{describe_path(output)}: exists and is not a folder")
    check_can_create(output, "demo folder")
    entries = sorted(path.name for path in output.iterdir()) if output.is_dir() else []
    if entries and MARKER not in entries:
        raise InputError(f"{describe_path(output)}: is not empty and was not written by the demo; "
                         "choose another folder")
    foreign = [name for name in entries if name not in DEMO_ENTRIES]
    if foreign:
        raise InputError(f"{describe_path(output)}: holds an earlier demo and files it did not write "
                         f"({list_some(foreign)}); move them or choose another folder")


def remove_demo_results(output: Path) -> None:
    """Remove what a demo run wrote into `output` (the entries of `DEMO_ENTRIES`), nothing else."""
    for name in DEMO_ENTRIES:
        path = output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def seconds_per_step(device: torch.device, batch_size: int = 2) -> float:
    """Time a few forward+backward steps of the tiny network on a patch batch (calibration)."""
    from MaskSAMCore.model.builder import build_masksam
    from MaskSAMCore.model.config import preset

    config = preset("tiny", num_classes=6)
    model = build_masksam(config).to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1e-3)
    batch = torch.randn((batch_size, 1, config.num_slices, *config.image_hw), device=device)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        out = model(batch)
        (out.mask_logits.float().mean() + out.class_logits.float().mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings[1:]))


# The phantom learning test's budget (Testing/test_training_learning.py): 6 epochs of 100 steps
# reach a mean validation Dice of about 0.88 (2-3 minutes on 2 CPU cores). The demo never trains
# less, and trains longer when `--minutes` leaves room for more.
MIN_EPOCHS, MIN_ITERATIONS = 6, 100


def training_schedule(minutes: float, step_seconds: float) -> Tuple[int, int]:
    """(epochs, iterations per epoch): at least the learning test's budget, more to fill `minutes`."""
    budget_steps = int(minutes * 60.0 * TRAINING_SHARE / max(step_seconds, 1e-3))
    steps = max(MIN_EPOCHS * MIN_ITERATIONS, budget_steps)
    epochs = int(min(30, max(MIN_EPOCHS, steps // MIN_ITERATIONS)))
    return epochs, steps // epochs


def _run(argv: List[str], advise_resume: bool = True) -> None:
    """One step, run as `masksam ARGV...` would be; `advise_resume=False` for the training step: a
    cancelled demo removes its folder, so its training must not advise resuming from it."""
    from MaskSAMCore.cli import CANCELLED_EXIT_STATUS, build_parser, command_arguments, run_command

    print(f"\n$ masksam {' '.join(argv)}", file=sys.stderr, flush=True)
    arguments = command_arguments(build_parser().parse_args(argv))
    if not advise_resume:
        arguments = dataclasses.replace(arguments, advise_resume=False)   # (a TrainArguments)
    status = run_command(argv[0], arguments)
    if status == CANCELLED_EXIT_STATUS:
        raise Cancelled(reported=True)   # the step has said so; the demo exits 130 as well
    if status != 0:
        raise MaskSAMError(f"the demo step 'masksam {argv[0]}' failed (exit status {status})")


def slice_with_most_foreground(labels: np.ndarray) -> int:
    return int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(axis=1)))


def write_overlay_png(image_file: Path, truth_file: Path, prediction_file: Path, png: Path,
                      class_names: Dict[int, str], title: str) -> int:
    """Three panels of one axial slice: CT, ground truth, prediction. Returns the slice index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from MaskSAMCore.data.image_io import read_image, read_label

    image, geometry = read_image(image_file)
    truth, _ = read_label(truth_file)
    prediction, _ = read_label(prediction_file)
    index = slice_with_most_foreground(truth)
    sy, sx = geometry.spacing_zyx[1:]
    colours = ListedColormap(plt.get_cmap("tab10").colors[: max(len(class_names), 2)])
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.6), layout="constrained")
    panels = (("CT", None), ("ground truth", truth), ("MaskSAM prediction", prediction))
    for axis, (name, labels) in zip(axes, panels):
        axis.imshow(np.clip(image[index], -200, 300), cmap="gray", aspect=sy / sx)
        if labels is not None:
            shown = np.ma.masked_equal(labels[index], 0)
            axis.imshow(shown, cmap=colours, vmin=0, vmax=colours.N - 1, alpha=0.55, aspect=sy / sx,
                        interpolation="nearest")
        axis.set_title(name)
        axis.axis("off")
    handles = [Patch(facecolor=colours(v), label=class_names[v]) for v in sorted(class_names) if v > 0]
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    figure.suptitle(f"{title} - slice {index}")
    write_with(png, lambda path: figure.savefig(path, dpi=110, format="png"))
    plt.close(figure)
    return index


def run_demo(args: DemoArguments) -> int:
    args.check_values()
    output = Path(args.output)
    device = devices.resolve_device(args.device)
    check_output(output)
    with folders_made(output):   # a failed first run leaves none of the folders it made
        remove_demo_results(output)
        write_text(output / MARKER, "written by `masksam demo`; the next demo run here replaces what it wrote\n")
        try:
            return _run_steps(args, output, device)
        except BaseException:
            # Cancelled or failed: leave no half-made demo behind (as every other command).
            remove_demo_results(output)
            raise


def _run_steps(args: DemoArguments, output: Path, device: torch.device) -> int:
    dataset, model_dir, predictions = output / "dataset", output / "model", output / "predictions"
    started = time.perf_counter()

    _run(["make-phantoms", str(dataset), "--cases", str(args.cases), "--test-cases", str(TEST_CASES),
          "--seed", "0"])
    epochs, iterations = training_schedule(args.minutes, seconds_per_step(device))
    # The recipe of the phantom learning test (Testing/test_training_learning.py): AdamW learns
    # these few minutes far faster than the paper's SGD schedule, which is meant for 1000 epochs.
    _run(["train", str(dataset), str(model_dir), "--preset", "tiny", "--random-init", "--epochs", str(epochs),
          "--iters-per-epoch", str(iterations), "--optimizer", "adamw", "--lr", "0.005", "--batch-size", "2",
          "--val-cases-per-epoch", "1", "--device", device.type], advise_resume=False)
    # Default (full) quality: with the tiny network the mirrored windows take well under a minute.
    _run(["predict", str(model_dir), str(dataset / "imagesTs"), str(predictions), "--device", device.type])
    report_file = output / "evaluation.json"
    from MaskSAMCore.inference.evaluate import evaluate

    report = evaluate(predictions, dataset / "labelsTs", dataset / "dataset.json")
    write_text(report_file, json.dumps(report, indent=2) + "\n")

    labels = read_dataset_meta(dataset)["labels"]
    names = {int(v): k for k, v in labels.items()}
    first = report["cases"][0]["case"]
    png = output / "prediction_overlay.png"
    write_overlay_png(dataset / "imagesTs" / f"{first}_0000.nii.gz", dataset / "labelsTs" / f"{first}.nii.gz",
                      predictions / f"{first}.nii.gz", png, names,
                      f"{first}: mean Dice {report['cases'][0]['mean_dice']:.3f}")
    minutes = (time.perf_counter() - started) / 60.0
    print("\nMaskSAM demo - held-out phantoms", file=sys.stderr)
    for name, entry in report["per_class"].items():
        dice = "n/a" if entry["dice"] is None else f"{entry['dice']:.3f}"
        print(f"  {name:>14s}  Dice {dice}", file=sys.stderr)
    mean = report["mean_dice"]
    print(f"  {'mean':>14s}  Dice {mean:.3f}  over {len(report['cases'])} test cases "
          f"({epochs} epochs x {iterations} iterations, {minutes:.1f} min in total on {device.type})",
          file=sys.stderr)
    print(f"  model: {model_dir}\n  predictions: {predictions}\n  scores: {report_file}\n  picture: {png}",
          file=sys.stderr)
    return 0
