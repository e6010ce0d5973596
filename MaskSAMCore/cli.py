"""The `masksam` command line (also `python -m MaskSAMCore`).

Each sub-command is a thin parser here plus a `run_*(args) -> int` function (named in `HANDLERS`)
in the module that does the work, imported only when that sub-command runs (so `masksam --help`
is instant and a CPU-only install never imports what it does not use). ``train``, ``predict``,
``evaluate``, ``benchmark`` and ``demo`` get a plain dataclass of their options (`command_arguments`),
not the parsed namespace, so Python code can run them too.

Errors a user can fix are `MaskSAMError`s: printed as one line ``masksam: error: ...`` on stderr,
exit status 1, and (through the atomic writers) nothing half-written left behind. Ctrl-C and
SIGTERM exit with status 130 after the same clean-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.metadata
import sys
from typing import Any, Callable, Dict, List, NoReturn, Optional

from MaskSAMCore import MINIMUM_TORCH, __version__, version_tuple
from MaskSAMCore.argument_types import (PHANTOM_MIN_SIZE, SEED_MAXIMUM, at_least, each_at_least, positive_number,
                                        user_path, whole_number, window_step)
from MaskSAMCore.errors import Cancelled, MaskSAMError, RankFailed, describe_path, first_line
from MaskSAMCore.inference.arguments import (BenchmarkArguments, DemoArguments, EvaluateArguments,
                                            PredictArguments)   # (no torch)
from MaskSAMCore.failure_lines import out_of_memory_line, peer_failure_line, speaks_for_the_job
from MaskSAMCore.model.config import PRESET_NAMES   # (no torch: the parser is built before torch is imported)
from MaskSAMCore.progress import EVENT_ERROR, emit, enable_machine_lines, install_signal_handlers
from MaskSAMCore.paths import SAM_CHECKPOINT_FILES, environment_flag
from MaskSAMCore.training.arguments import RUN_OPTIONS, TrainArguments   # (no torch either)

# sub-command -> "module:function" that runs it
HANDLERS: Dict[str, str] = {
    "info": "MaskSAMCore.model.report:run_info",
    "download-sam": "MaskSAMCore.model.sam_checkpoints:run_download",
    "make-phantoms": "MaskSAMCore.data.phantoms:run_make_phantoms",
    "train": "MaskSAMCore.training.run:run_train",
    "predict": "MaskSAMCore.inference.run:run_predict",
    "evaluate": "MaskSAMCore.inference.evaluate:run_evaluate",
    "benchmark": "MaskSAMCore.inference.benchmark:run_benchmark",
    "demo": "MaskSAMCore.inference.demo:run_demo",
}


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"),
        help="where to run (default auto: the first CUDA GPU if there is one, else the CPU)",
    )


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes as every other error: one ``masksam: error:`` line (exit status 2), not
    argparse's usage block, so people and the Slicer module read them the same way."""

    def error(self, message: str) -> "NoReturn":
        command = self.prog[len("masksam"):].strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"masksam: error: {where}{message} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        # argparse reports a sub-command's unknown option from the top-level parser, which would
        # point to 'masksam --help'; the sub-command's own parser names itself and its help.
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            parser = command_parsers(self).get(getattr(namespace, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{parser.suggestion(unknown)}")
        return namespace

    def suggestion(self, unknown: List[str]) -> str:
        """"; did you mean --no-mirror?" for a misspelt option of this parser ("" when none is close)."""
        # (argparse keeps its option strings in a private table; Python 3.14's own suggestions
        # need it too)
        known = list(self._option_string_actions)
        guesses = [difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.75)
                   for word in unknown if word.startswith("--")]
        named = [guess[0] for guess in guesses if guess]
        return f"; did you mean {' / '.join(named)}?" if named else ""


def build_parser() -> argparse.ArgumentParser:
    """The `masksam` parser: global options here, each sub-command's in its own `_add_*` function."""
    parser = OneLineErrorParser(
        prog="masksam",
        description="MaskSAM: fully automatic CT/MRI segmentation with a frozen Segment Anything "
        "model, 3D adapters, self-generated prompts and named masks.",
    )
    parser.add_argument("--version", action="version", version=f"masksam {__version__}")
    parser.add_argument(
        "--machine-progress", action="store_true",
        help="also print '@masksam {json}' progress lines on stdout (used by the Slicer module)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add_command in (_add_info, _add_download_sam, _add_make_phantoms, _add_train, _add_predict, _add_evaluate,
                        _add_benchmark, _add_demo):
        add_command(sub)
    return parser


def command_parsers(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    """Sub-command name -> its parser (argparse keeps them in its sub-parsers action)."""
    return next((dict(a.choices) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _add_info(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("info", help="build a model and print its parameter table (no weights needed)")
    p.add_argument("--preset", default="vit_b", choices=PRESET_NAMES,
                   help="network: SAM ViT-B, -L or -H with adapters, or tiny (toy widths; default vit_b)")
    p.add_argument("--classes", type=at_least(2), default=16, help="number of classes incl. background (default 16)")
    p.add_argument("--channels", type=at_least(1), default=1, help="number of image channels (default 1)")
    p.add_argument("--forward", action="store_true", help="also run one forward pass on random input")


def _add_download_sam(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("download-sam", help="download an official SAM checkpoint (SHA-256 checked)")
    p.add_argument("model_type", choices=list(SAM_CHECKPOINT_FILES))
    p.add_argument("--cache-dir", type=user_path, default=None,
                   help="folder to store it in (default: MASKSAM_HOME cache)")
    p.add_argument("--url", default=None,
                   help="download from this mirror, or copy this local file, instead of the official address "
                        "(default; the hash is checked either way)")


def _add_make_phantoms(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("make-phantoms", help="write a synthetic labelled abdominal CT dataset (nnU-Net format)")
    p.add_argument("output", type=user_path, help="dataset folder to create")
    p.add_argument("--cases", type=at_least(1), default=12, help="number of training cases (default 12)")
    p.add_argument("--test-cases", type=at_least(0), default=0,
                   help="number of extra cases in imagesTs/labelsTs (default 0)")
    p.add_argument("--seed", type=at_least(0, SEED_MAXIMUM), default=0,
                   help="random seed: the same seed gives the same phantoms (default 0)")
    p.add_argument("--size", type=whole_number, nargs=3, action=each_at_least(PHANTOM_MIN_SIZE), default=None,
                   metavar=("X", "Y", "Z"),
                   help="voxels per case along x, y, z, at least "
                        f"{' '.join(map(str, PHANTOM_MIN_SIZE))} (default: a small varied size)")
    p.add_argument("--file-ending", default=".nii.gz", choices=(".nii.gz", ".nrrd", ".mha", ".nii"),
                   help="image and label file format (default .nii.gz)")
    p.add_argument("--annotate-every", type=at_least(1), default=1, metavar="N",
                   help="sparse training labels: only every N-th axial slice annotated, the others "
                        "marked with nnU-Net's 'ignore' label (default 1: every slice)")


def _add_train(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("train", help="fine-tune MaskSAM on a dataset in nnU-Net raw format")
    # The run options (RUN_OPTIONS) default to None, "not typed": `train_arguments` records the
    # typed ones and leaves the others at TrainArguments' defaults, which these help texts name.
    p.add_argument("dataset", type=user_path, help="dataset folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("model_dir", type=user_path, help="model folder to create (or continue with --resume)")
    p.add_argument("--preset", default=None, choices=PRESET_NAMES,
                   help="network: SAM ViT-B, -L or -H with adapters, or tiny (toy widths; default vit_b)")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--sam-checkpoint", type=user_path, default=None,
                      help="SAM checkpoint file, or vit_b/vit_l/vit_h to use the downloaded one (default: "
                           "the downloaded one of --preset's type; see download-sam)")
    init.add_argument("--random-init", action="store_true", default=None,
                      help="no SAM weights: random frozen backbone (tests, demos, the tiny preset)")
    p.add_argument("--epochs", type=at_least(1), default=None,
                   help="epochs of --iters-per-epoch iterations (default 1000, the paper's for AMOS "
                        "and Synapse; it used 500 for ACDC); with --resume: the run's new length, to "
                        "train a finished run longer (the poly learning rate follows the new length)")
    p.add_argument("--iters-per-epoch", type=at_least(1), default=None,
                   help="optimiser steps per epoch (default 250, as nnU-Net)")
    p.add_argument("--val-cases-per-epoch", type=at_least(1), default=None,
                   help="validate on at most this many cases each epoch (default: all)")
    p.add_argument("--batch-size", type=at_least(1), default=None,
                   help="patches per step on each GPU: G GPUs train on G times as many (default 2, "
                        "the paper's batch size, which it trained on 2 GPUs; vit_b then needs about "
                        "14 GiB of GPU memory: use 1 on smaller GPUs)")
    p.add_argument("--fold", default=None, choices=("0", "1", "2", "3", "4", "all"),
                   help="fold of splits.json (0-4) or 'all' (default 0)")
    p.add_argument("--optimizer", default=None, choices=("sgd", "adamw"),
                   help="sgd (momentum 0.99, the paper's) or adamw (default sgd)")
    p.add_argument("--lr", type=positive_number, default=None,
                   help="initial learning rate (default: 0.01 with sgd, 1e-3 with adamw)")
    p.add_argument("--num-workers", type=at_least(0), default=None,
                   help="worker processes for preprocessing (default 2) and for batches (default: none on "
                        "the CPU; on a GPU the cores less one, at most 8, shared by a machine's GPUs)")
    p.add_argument("--seed", type=at_least(0, SEED_MAXIMUM), default=None,
                   help="random seed of the initial weights and the batches (default 12345; the folds are "
                        "nnU-Net's, whatever the seed)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint_latest in MODEL_DIR")
    p.add_argument("--no-amp", action="store_true", default=None, help="train in float32 even on CUDA")
    _add_device(p)


def train_arguments(args: argparse.Namespace) -> TrainArguments:
    """The parsed ``train`` command line as `TrainArguments`; `given` names the run options typed
    (their parser default is None), the others keep TrainArguments' defaults."""
    given = frozenset(name for name in RUN_OPTIONS if getattr(args, name) is not None)
    others = ("dataset", "model_dir", "sam_checkpoint", "epochs", "num_workers", "resume", "device")
    return TrainArguments(**{name: getattr(args, name) for name in (*others, *given)}, given=given)


def _add_predict(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("predict", help="segment an image or a folder of images")
    p.add_argument("model_dir", type=user_path, help="a trained MaskSAM model folder")
    p.add_argument("input", type=user_path,
                   help="an image file, a folder of images (*_0000.nii.gz etc. for multi-channel), "
                        "a folder of DICOM files (one series), or a folder of such folders (a case each)")
    p.add_argument("output", type=user_path,
                   help="output label-map file (.seg.nrrd: a 3D Slicer segmentation, named and coloured segments; "
                        ".dcm: a DICOM SEG, for DICOM input), or a folder (existing, or ending in /; always when "
                        "INPUT is a folder of images)")
    p.add_argument("--series", default=None, metavar="NUMBER|UID",
                   help="with a DICOM folder holding several series: the one to segment (its Series Number "
                        "or Series Instance UID; default: the folder's only series, or the only one forming a "
                        "volume beside scouts; in every folder of a cohort)")
    p.add_argument("--all-series", action="store_true",
                   help="segment every DICOM image series forming a volume in INPUT or its subfolders (a PACS "
                        "or CD export); OUTPUT is a folder: OUTPUT/<series folder>/series_<number>.nii.gz; "
                        "series forming no volume (scouts) or of another modality than the model's are "
                        "named and left out")
    p.add_argument("--sam-checkpoint", type=user_path, default=None,
                   help="SAM checkpoint file (default: the one the model names, found by its hash in the cache)")
    p.add_argument("--checkpoint", default="final", choices=("final", "best", "latest"),
                   help="which weights: final (end of training; default), best (highest smoothed (EMA) "
                        "validation Dice, as nnU-Net) or latest (the last epoch saved, while a run goes on)")
    mirror = p.add_mutually_exclusive_group()
    mirror.add_argument("--mirror", dest="mirror", action="store_true", default=True,
                        help="average every flip combination per window (default; 8, or 4 for a model "
                             "trained without left-right flips because its labels are lateral)")
    mirror.add_argument("--no-mirror", dest="mirror", action="store_false",
                        help="one pass per window (8x less work, 4x for a lateral-label model; slightly less accurate)")
    p.add_argument("--step", type=window_step, default=None,
                   help="window step as a fraction of the patch size (default 0.5; 1.0 with --fast)")
    p.add_argument("--fast", action="store_true",
                   help="CPU-friendly: no mirroring and step 1.0 unless --step is given (about 16x less work; "
                        "see benchmarks/README.md)")
    p.add_argument("--window-batch", type=at_least(1), default=None, help="windows per forward (default: automatic)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write CASE_probabilities.npz: (K, z, y, x) float16 on the input's grid, one "
                        "channel per class of the model, summing to 1 per voxel; label_values[k] is the label "
                        "channel k is written as (k for a class model; a region model's classes are painted "
                        "with their regions' values, and its 'regions' names each region's channels)")
    p.add_argument("--output-ending", default=None,
                   help="file ending for folder output (default: the input's; .seg.nrrd: 3D Slicer segmentation; "
                        ".dcm: DICOM SEG, for DICOM input)")
    p.add_argument("--continue", dest="continue_run", action="store_true",
                   help="skip the cases whose output (and probabilities file, with --probabilities, not older "
                        "than the label map) is there already, as after an interrupted run (outputs are written "
                        "whole or not at all), unless it is older than the case's image or the model's checkpoint, "
                        "or cannot be read (cut short, not an image)")
    _add_device(p)


def _add_evaluate(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("evaluate", help="per-class (or per-region) Dice and HD95 of predictions against ground truth",
                       description="Per-class Dice and HD95 (mm) as JSON. HD95 is the larger of the two directed "
                                   "95th percentiles of surface-voxel distances (MONAI's convention; MedPy/nnU-Net "
                                   "v1 pool both directions); the report's 'conventions' has the empty-mask rules.")
    p.add_argument("prediction", type=user_path,
                   help="a label map or a folder of them (or 3D Slicer segmentations, .seg.nrrd)")
    p.add_argument("ground_truth", type=user_path,
                   help="a label map or a folder of them (or 3D Slicer segmentations, .seg.nrrd, whose segments "
                        "are matched to the labels by name)")
    p.add_argument("--dataset-json", type=user_path, default=None,
                   help="dataset.json for class names (default: the one of the dataset GT lies in; the model "
                        "folder's for .seg.nrrd files outside a dataset)")
    p.add_argument("--output", type=user_path, default=None, help="write the JSON report here (default: stdout only)")


def _add_benchmark(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("benchmark", help="speed and memory of inference on a synthetic volume")
    # No defaults here: a model folder brings its own network, and is refused beside these.
    p.add_argument("--preset", default=None, choices=PRESET_NAMES,
                   help="random-weight network: SAM ViT-B, -L or -H with adapters, or tiny (default vit_b)")
    p.add_argument("--model-dir", type=user_path, default=None,
                   help="benchmark this model folder instead of a random network (default: a random "
                        "network of --preset)")
    p.add_argument("--shape", type=at_least(2), nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"),
                   help="synthetic volume size (default 300 512 512)")
    p.add_argument("--classes", type=at_least(2), default=None,
                   help="number of classes incl. background of the random network (default 16)")
    mirror = p.add_mutually_exclusive_group()
    mirror.add_argument("--mirror", dest="mirror", action="store_true", default=True,
                        help="every flip combination per window, as predict (default)")
    mirror.add_argument("--no-mirror", dest="mirror", action="store_false", help="one pass per window")
    p.add_argument("--step", type=window_step, default=None, help="as predict --step (default 0.5; 1.0 with --fast)")
    p.add_argument("--fast", action="store_true",
                   help="no mirroring and step 1.0 unless --step is given (as predict --fast)")
    p.add_argument("--window-batch", type=at_least(1), default=None,
                   help="windows per forward (default: automatic, as predict)")
    p.add_argument("--compare-nnunet", action="store_true",
                   help="also time nnU-Net v2's predictor (3d_fullres-like network) on the same volume")
    p.add_argument("--repeat", type=at_least(1), default=1, help="timed repetitions after one warm-up (default 1)")
    p.add_argument("--resample", action="store_true",
                   help="make preprocessing resample, as for most real CTs: the volume lies 0.8/0.82 finer "
                        "in-plane than the model's spacing and the scores are resampled back to it slab by slab "
                        "before the argmax (without it, the volume lies on the model's grid and the argmax "
                        "is taken directly)")
    p.add_argument("--max-windows", type=at_least(1), default=None,
                   help="time only this many windows and extrapolate the network seconds (slow CPUs; "
                        "default: every window)")
    p.add_argument("--output", type=user_path, default=None, help="write the JSON result here (default: print it only)")
    _add_device(p)


def _add_demo(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("demo", help="the whole path on synthetic data: phantoms, training, prediction, Dice, a PNG")
    p.add_argument("output", type=user_path, nargs="?", default="demo_output",
                   help="folder for everything the demo writes: new, empty, or an earlier demo's, whose "
                        "results are replaced (default: demo_output)")
    p.add_argument("--minutes", type=positive_number, default=4.0,
                   help="time to aim for (default 4), 70%% of it for training steps (the rest covers "
                        "preprocessing, validation and prediction); it never trains less than 6 epochs "
                        "of 100 steps (the phantom learning test's budget) nor more than 30 epochs")
    p.add_argument("--cases", type=at_least(5), default=12, help="training phantoms (default 12; fold 0 of 5 needs 5)")
    _add_device(p)

def resolve_handler(command: str) -> Callable[[Any], int]:
    module_name, function_name = HANDLERS[command].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def check_torch_version(installed: Optional[str] = None) -> None:
    """One clear line instead of an AttributeError deep inside the network on an old PyTorch."""
    if installed is None:
        try:
            installed = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:  # no package metadata: ask the module itself
            try:
                installed = importlib.import_module("torch").__version__
            except ImportError:
                raise MaskSAMError("PyTorch is not installed; install it first (README.md, 'PyTorch build')") from None
    found = version_tuple(installed)
    if found and found < MINIMUM_TORCH:
        needed = ".".join(map(str, MINIMUM_TORCH))
        raise MaskSAMError(f"PyTorch {installed} is too old; MaskSAM needs {needed} or newer")


CANCELLED_EXIT_STATUS = 130   # what shells report for Ctrl-C


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.command, command_arguments(args), machine_progress=args.machine_progress)


# sub-command -> the dataclass its handler takes (the others take the parsed namespace)
ARGUMENT_TYPES: Dict[str, type] = {"predict": PredictArguments, "evaluate": EvaluateArguments,
                                   "benchmark": BenchmarkArguments, "demo": DemoArguments}


def command_arguments(args: argparse.Namespace) -> Any:
    """What the handler of `args.command` takes: `TrainArguments` for train, the command's
    `ARGUMENT_TYPES` dataclass (its fields named as the parser's destinations) for predict,
    evaluate, benchmark and demo, the namespace itself for the small commands."""
    if args.command == "train":
        return train_arguments(args)
    kind = ARGUMENT_TYPES.get(args.command)
    if kind is None:
        return args
    return kind(**{field.name: getattr(args, field.name) for field in dataclasses.fields(kind)})


def run_command(command: str, arguments: Any, machine_progress: bool = False) -> int:
    """Run a sub-command's handler on its arguments as the command line does: every error, cancel
    and out-of-memory as one ``masksam:`` line and an exit status (also for `masksam demo`'s
    steps, which pass arguments built in Python)."""
    # Set for this call either way, so one in-process call never leaks into the next.
    enable_machine_lines(machine_progress or environment_flag("MASKSAM_MACHINE_PROGRESS"))
    install_signal_handlers()
    try:
        check_torch_version()
        return int(resolve_handler(command)(arguments) or 0)
    except (KeyboardInterrupt, Cancelled) as exc:
        # Under torchrun every rank is cancelled; rank 0 speaks for the job (`distributed`).
        if not getattr(exc, "reported", False) and speaks_for_the_job():
            message = str(exc) if isinstance(exc, Cancelled) else "cancelled"
            print(f"masksam: {message}", file=sys.stderr)
            emit(EVENT_ERROR, message=message, cancelled=True)
        return CANCELLED_EXIT_STATUS
    except MaskSAMError as exc:
        if isinstance(exc, RankFailed) and not speaks_for_the_job():
            return 1   # another rank's error, relayed (`distributed.run_and_agree`): rank 0 prints it
        message = first_line(exc)
    except OSError as exc:  # the machine's problem, not MaskSAM's: a full disk, a vanished folder, ...
        message = f"{describe_path(exc.filename)}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    except (MemoryError, RuntimeError) as exc:
        message = out_of_memory_line(exc, command) or peer_failure_line(exc)
        if message is None:
            raise
    print(f"masksam: error: {message}", file=sys.stderr)
    emit(EVENT_ERROR, message=message)
    return 1


if __name__ == "__main__":
    # `python -m MaskSAMCore.cli` runs as `python -m MaskSAMCore` does (`__main__.run`: a Ctrl-C while
    # the commands import is a cancel, not a traceback), not `main` bare.
    from MaskSAMCore.__main__ import run
    sys.exit(run())
