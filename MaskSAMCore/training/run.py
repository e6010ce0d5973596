"""``masksam train DATASET MODEL_DIR``: plan, preprocess, build, train, and describe the model.

Order of work, chosen so that a bad input leaves nothing behind: arguments and MODEL_DIR are
checked, the dataset is validated (every image and label opened) and planned in memory, and the
SAM checkpoint is found; only then is MODEL_DIR created and written (model.json, plans.json,
dataset.json, splits.json), the cases preprocessed into ``MODEL_DIR/preprocessed/`` and the
training started. ``preprocessed/`` is only needed for training (and `--resume`): delete it
before sharing a model folder; the predictor reads model.json and the checkpoints alone.

``--resume`` takes the run's settings, network and plan from MODEL_DIR (not from the command
line, so a resumed run continues the same schedule) and only the device, the worker count and a
``--sam-checkpoint FILE`` (for SAM weights not in the cache) from the command line. Under
torchrun every rank runs this function; see `distributed`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from MaskSAMCore import torchrun
from MaskSAMCore.atomic import remove_stale_temporaries, write_bytes, write_json
from MaskSAMCore.data.dataset import RawDataset, load_raw_dataset
from MaskSAMCore.data.planning import plan_experiment
from MaskSAMCore.data.preprocess_runner import preprocess_dataset
from MaskSAMCore.data.store import load_case
from MaskSAMCore.errors import Cancelled, MaskSAMError, ModelFolderError, describe_path, list_some
from MaskSAMCore.model.builder import build_masksam
from MaskSAMCore.model.config import MaskSAMConfig, preset
from MaskSAMCore.folder_layout import (DATASET_JSON, LATEST_CHECKPOINT, PLANS_JSON, PREPROCESSED,
                                       never_checkpointed)
from MaskSAMCore.model_folder import ModelFolder, write_model_json
from MaskSAMCore.paths import check_can_create
from MaskSAMCore.progress import EVENT_DONE, emit, print_note, print_warning
from MaskSAMCore.training import checkpoint_io
from MaskSAMCore.training.arguments import TrainArguments
from MaskSAMCore.training.batches import make_batch_source
from MaskSAMCore.training.distributed import (DistributedContext, init_distributed, require_shared_folder,
                                              run_and_agree, shutdown_distributed)
from MaskSAMCore.training.losses import MaskSAMLoss
from MaskSAMCore.training.folder_lock import check_not_running, training_lock
from MaskSAMCore.training.mirroring import lateral_label_names, training_mirror_axes
from MaskSAMCore.training.resume_checks import (check_resumed_dataset, forget_other_cases, ignored_options,
                                                process_count_note, resumed_run_length)
from MaskSAMCore.training.sam_source import SamSource, load_recorded_sam, resolve_sam_source
from MaskSAMCore.training.schedule import DEFAULT_LR, poly_lr
from MaskSAMCore.training.settings import TrainSettings
from MaskSAMCore.training.splits import load_or_create_splits, make_splits, select_fold
from MaskSAMCore.training.stopping import how_to_resume, keep_for_restart, remove_all_but
from MaskSAMCore.training.trainer import Trainer
from MaskSAMCore.training.validation import ValidationCase, Validator


def run_train(args: TrainArguments) -> int:
    """The ``train`` sub-command, also Python's way in (no argparse); returns the exit status
    (errors are raised as MaskSAMError)."""
    check_arguments(args)
    use_cuda = resolve_device_type(args.device) == "cuda"
    context = init_distributed(use_cuda)
    try:
        train(args, context, use_cuda)
    finally:
        shutdown_distributed()
    return 0


def check_arguments(args: TrainArguments) -> None:
    args.check_values()
    args.check_folders()
    model_dir = Path(args.model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise MaskSAMError(f"{describe_path(model_dir)} exists and is not a folder")
    if torchrun.rank() == 0:   # (under torchrun, rank 0 may hold the lock already)
        check_not_running(model_dir)
    if not args.resume and model_dir.is_dir() and any(model_dir.iterdir()) and not never_checkpointed(model_dir):
        raise MaskSAMError(f"model folder {describe_path(model_dir)} is not empty; choose a new "
                           "folder, or add --resume to continue the training in it")
    check_can_create(model_dir, "model folder")
    if args.resume and not (model_dir / LATEST_CHECKPOINT).is_file():
        why = ("the training in it was stopped before its first epoch ended" if never_checkpointed(model_dir)
               else f"no {LATEST_CHECKPOINT}")
        raise MaskSAMError(f"{describe_path(model_dir)}: nothing to resume ({why}); "
                           "start a new training without --resume")


def resolve_device_type(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        raise MaskSAMError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def train(args: TrainArguments, context: DistributedContext, use_cuda: bool) -> None:
    main = context.is_main
    model_dir = Path(args.model_dir)
    device = torch.device("cuda", context.local_rank) if use_cuda else torch.device("cpu")
    dataset = load_raw_dataset(args.dataset, check_images=True, progress=main)
    if args.resume:
        run = load_resumed_run(args, model_dir, dataset, announce=main)
        note = process_count_note(run.resume_payload or {}, context.world_size, run.settings.batch_size)
        if main and note:
            print_note(note)
    else:
        run = plan_new_run(args, dataset, context)
    # nothing is written before here: every check above can still fail
    folder_existed = model_dir.exists()
    if main and not args.resume and folder_existed and never_checkpointed(model_dir):
        print(f"{describe_path(model_dir)} holds a training stopped before its first epoch ended: "
              "starting it again", flush=True)
        forget_other_cases(model_dir, dataset)
    if main:
        model_dir.mkdir(parents=True, exist_ok=True)   # to be locked; removed again if nothing is kept
    # The lock first: a folder another run holds is never cleared below.
    with training_lock(model_dir) if main else contextlib.nullcontext():
        try:
            train_in_folder(args, context, device, dataset, run)
        except (KeyboardInterrupt, Cancelled) as exc:
            if main:
                raise cancelled_run(exc, args, model_dir, folder_existed) from None
            raise
        except BaseException:
            # A new run that failed before its first checkpoint leaves nothing behind, unlike a
            # cancelled one: a failure found this late (a case that cannot be preprocessed, a full
            # disk, out of memory at the first step, a diverged first epoch) most often means other
            # input, options or a new folder next time, and its files would hold space a full disk
            # needs. The folder stays startable again either way (`never_checkpointed`).
            if main and not args.resume and not (model_dir / LATEST_CHECKPOINT).exists():
                discard_model_folder(model_dir, keep_folder=folder_existed)
            raise


def cancelled_run(exc: BaseException, args: TrainArguments, model_dir: Path, folder_existed: bool
                  ) -> Cancelled:
    """The `Cancelled` a cancelled training ends with: after a checkpoint it names the epoch
    checkpoint_latest holds and the --resume command; a new run before its first checkpoint
    keeps what the same command reuses to start again (`stopping.keep_for_restart`), and says so;
    with nothing worth keeping, it leaves nothing behind."""
    message = str(exc) if isinstance(exc, Cancelled) else "cancelled"
    if not args.advise_resume:
        return Cancelled(message)   # the caller removes the folder: nothing to resume or restart from
    if (model_dir / LATEST_CHECKPOINT).is_file():
        return Cancelled(f"{message}; {how_to_resume(args, model_dir)}")
    if not args.resume:
        kept = keep_for_restart(model_dir)
        if kept is not None:
            return Cancelled(f"{message}; {kept}")
        discard_model_folder(model_dir, keep_folder=folder_existed)
    return Cancelled(message)


def discard_model_folder(model_dir: Path, keep_folder: bool, keep: Tuple[str, ...] = ()) -> None:
    """Remove what a run wrote into `model_dir` (the folder itself too, unless it existed before;
    entries named in `keep` stay when the folder does)."""
    if keep_folder:
        remove_all_but(model_dir, keep)
    else:
        shutil.rmtree(model_dir, ignore_errors=True)


def train_in_folder(args: TrainArguments, context: DistributedContext, device: torch.device,
                    dataset: RawDataset, run: "RunDescription") -> None:
    main = context.is_main
    model_dir = Path(args.model_dir)
    settings, config, plan, sam = run.settings, run.config, run.plan, run.sam
    run_and_agree(lambda: start_model_folder(model_dir, dataset, run, new=not args.resume), here=main)
    require_shared_folder(model_dir, context)
    preprocessed = model_dir / PREPROCESSED
    run_and_agree(lambda: preprocess_dataset(dataset, plan, preprocessed, num_workers=_workers(args, default=2),
                                             progress=main), here=main)
    train_names, val_names = training_and_validation_cases(model_dir, dataset, settings.fold, context)
    if main:
        print(describe_training(run, device, context.world_size, len(train_names), len(val_names)), flush=True)

    torch.manual_seed(settings.seed)  # the same initial network on every rank
    model = build_masksam(config, sam_checkpoint=sam.state)
    sam.state = None  # the weights now live in the model
    torch.manual_seed(settings.seed + 1 + context.rank)  # then each rank its own random stream
    class_names = dataset.class_names
    ignore_label = plan.get("ignore_label")
    # validation runs on rank 0 alone: its loss must not wait for the other ranks
    criterion = MaskSAMLoss(len(class_names), settings.loss_weights, settings.num_points, across_ranks=False,
                            ignore_label=ignore_label)
    validator = Validator(load_validation_cases(preprocessed, val_names) if main else [],
                          plan["patch_size"], class_names, criterion, device,
                          structures=dataset.regions.region_classes if dataset.regions is not None else None)
    batches = make_batch_source(preprocessed, train_names, plan, settings, context, device.type,
                                num_workers=_workers(args, default=None))

    def write_description(trainer: Trainer) -> None:
        """model.json with the training's summary so far (after each epoch, and at the end)."""
        write_model_json(model_dir, model_description(dataset, run, trainer.summary()))

    trainer = Trainer(model, settings, batches, validator, str(model_dir), class_names, device,
                      context, on_epoch_end=write_description, ignore_label=ignore_label)
    if run.resume_payload is not None:
        trainer.restore(run.resume_payload)
        run.resume_payload = None
        if main:
            print(f"resuming {describe_path(model_dir)} after epoch {trainer.start_epoch} of "
                  f"{settings.epochs} (settings from checkpoint_latest.pt)", flush=True)
    summary = trainer.fit()
    if main:
        write_description(trainer)
        print(f"done: {summary['finished_epochs']} epoch(s), best epoch {summary['best_epoch']} "
              f"(mean Dice {_dice_text(summary['best_mean_dice'])}), final mean Dice "
              f"{_dice_text(summary['final_mean_dice'])}; model in {describe_path(model_dir)}", flush=True)
        emit(EVENT_DONE, model_dir=str(model_dir), **{k: summary[k] for k in (
            "finished_epochs", "best_epoch", "best_mean_dice", "final_mean_dice")})


def describe_training(run: "RunDescription", device: torch.device, ranks: int, train_cases: int,
                      val_cases: int) -> str:
    """One line saying what is about to be trained, on what, for a person at the console."""
    s, plan = run.settings, run.plan
    backbone = "random SAM weights" if run.sam.random_init else f"SAM {run.sam.model_type} (frozen)"
    where = f"{ranks} x {device.type}" if ranks > 1 else str(device)
    patch = "x".join(str(n) for n in plan["patch_size"])
    spacing = " x ".join(f"{v:.3g}" for v in plan["target_spacing_zyx"])
    return (f"training {run.preset_name} ({backbone}) on {where}: {run.config.num_classes - 1} structure(s), "
            f"{train_cases} training / {val_cases} validation case(s) (fold {s.fold}), patch {patch} at "
            f"{spacing} mm (z x y x x), {s.epochs} epoch(s) x {s.iters_per_epoch} iterations, batch "
            f"{s.batch_size}, {s.optimizer} lr {s.lr:g}")


def _dice_text(value: Optional[float]) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def start_model_folder(model_dir: Path, dataset: RawDataset, run: "RunDescription", new: bool) -> None:
    """A new run writes its plan and description; any run clears temporaries of a killed one."""
    if new:
        model_dir.mkdir(parents=True, exist_ok=True)
        # The folder is empty, or holds a run killed before its first checkpoint (`check_arguments`):
        # start over, keeping preprocessed/, whose cases are redone unless plan and files are unchanged.
        discard_model_folder(model_dir, keep_folder=True, keep=(PREPROCESSED,))
        write_json(model_dir / PLANS_JSON, run.plan)
        write_bytes(model_dir / DATASET_JSON, (dataset.root / DATASET_JSON).read_bytes())
        write_model_json(model_dir, model_description(dataset, run, None))
    remove_stale_temporaries(model_dir)


def settings_from_arguments(args: TrainArguments) -> TrainSettings:
    return TrainSettings(
        epochs=args.epochs or TrainSettings.epochs, iters_per_epoch=args.iters_per_epoch,
        batch_size=args.batch_size or TrainSettings.batch_size, optimizer=args.optimizer,
        lr=args.lr if args.lr is not None else DEFAULT_LR[args.optimizer], seed=args.seed,
        fold=str(args.fold), amp=not args.no_amp, val_cases_per_epoch=args.val_cases_per_epoch)


def broadcast_plan(dataset: RawDataset, config: MaskSAMConfig, context: DistributedContext) -> Dict[str, Any]:
    """Rank 0 plans (it reads every case); the others receive the plan."""
    from MaskSAMCore.training.distributed import broadcast_from_main

    plan = run_and_agree(lambda: plan_experiment(dataset, config, progress=True), here=context.is_main)
    return broadcast_from_main(plan)


def training_and_validation_cases(model_dir: Path, dataset: RawDataset, fold: str,
                                  context: DistributedContext) -> Tuple[List[str], List[str]]:
    """Case names of the fold (rank 0 writes splits.json first; every rank then reads it)."""
    names = [case.name for case in dataset.training_cases]
    if fold == "all":
        return select_fold([], fold, names)
    run_and_agree(lambda: load_or_create_splits(model_dir, names, write=True), here=context.is_main)
    return select_fold(load_or_create_splits(model_dir, names, write=False), fold, names)


def load_validation_cases(preprocessed: Path, names: List[str]) -> List[ValidationCase]:
    """The fold's validation cases, memory-mapped: a fold of a CT dataset holds gigabytes, which
    must not stay in rank 0's memory for the whole training (the page cache keeps them warm)."""
    cases = []
    for name in names:
        case = load_case(preprocessed, name, mmap=True)
        cases.append(ValidationCase(name=name, image=case.data, labels=case.seg))
    return cases


def model_description(dataset: RawDataset, run: "RunDescription", summary: Optional[Dict[str, Any]]
                      ) -> Dict[str, Any]:
    """The content of model.json (see docs/INTERNALS.md)."""
    settings, sam = run.settings, run.sam
    training = dict(summary) if summary else {"epochs": settings.epochs, "finished_epochs": 0}
    training.update(dataset=dataset.name, fold=settings.fold, preset=run.preset_name)
    return {
        "name": dataset.name,
        "version": "1",
        "description": f"MaskSAM ({run.preset_name}) trained on {dataset.name}, fold {settings.fold}",
        "labels": dict(dataset.labels),
        **({"regions": dataset.regions.to_dict()} if dataset.regions is not None else {}),
        "channel_names": dict(dataset.channel_names),
        "modality": dataset.modality,
        "network": run.config.to_dict(),
        "plan": run.plan,
        "sam": {"model_type": sam.model_type, "sha256": sam.sha256, "random_init": sam.random_init},
        "training": training,
    }


@dataclass
class RunDescription:
    """What a run trains: settings, network, plan, SAM weights and the preset's name."""

    settings: TrainSettings
    config: MaskSAMConfig
    plan: Dict[str, Any]
    sam: SamSource
    preset_name: str
    resume_payload: Optional[Dict[str, Any]] = None   # checkpoint_latest when resuming


def plan_new_run(args: TrainArguments, dataset: RawDataset, context: DistributedContext) -> RunDescription:
    """A new run from the command line: its settings, SAM weights and network, and the plan
    (made on rank 0 and sent to every rank); checks the folds can be made before any work."""
    settings = settings_from_arguments(args)
    sam = resolve_sam_source(args.preset, args.sam_checkpoint, args.random_init)
    settings.weights_scope = "all" if sam.random_init else "trainable"
    config = preset(args.preset, num_classes=dataset.num_classes, in_channels=dataset.num_channels)
    if settings.fold != "all":
        # Fewer than 5 cases cannot make the folds: say so now, not after planning and preprocessing.
        make_splits([case.name for case in dataset.training_cases], dataset=dataset.root)
    plan = broadcast_plan(dataset, config, context)
    settings.mirror_axes = training_mirror_axes(dataset.labels, dataset.geometries, plan)
    lateral = lateral_label_names(dataset.labels)
    if lateral and context.is_main:
        print(f"labels {list_some(lateral, shown=4)} are lateral: "
              f"augmentation mirrors patch axes {settings.mirror_axes} only (not left-right)", flush=True)
    return RunDescription(settings, config, plan, sam, args.preset)


def load_resumed_run(args: TrainArguments, model_dir: Path, dataset: RawDataset,
                     announce: bool = True) -> RunDescription:
    """The stored description of the run in MODEL_DIR (the command line's settings are ignored,
    and said to be when given); the dataset must be the one the run started with."""
    folder = ModelFolder.load(model_dir)
    payload = checkpoint_io.read_for_resume(model_dir)
    settings = TrainSettings.from_dict(payload["settings"])
    if folder.labels != dict(dataset.labels) or folder.regions != dataset.regions:
        raise ModelFolderError(f"{describe_path(model_dir)} was trained with other labels than "
                               f"{describe_path(dataset.root)} has")
    trained_sparse = folder.plan.get("ignore_label") is not None
    if trained_sparse != (dataset.ignore_label is not None):
        # the run's loss judges every voxel, or leaves the ignore label's out: it cannot switch
        raise ModelFolderError(f"{describe_path(model_dir)} was trained {'with' if trained_sparse else 'without'} "
                               f"an 'ignore' label (unannotated voxels), {describe_path(dataset.root)}'s "
                               f"dataset.json {'has none' if trained_sparse else 'has one'}; resume with the "
                               "dataset.json the run started with, or train a new model folder")
    if folder.channel_names != dict(dataset.channel_names):
        # the stored plan normalises the stored channels; another set would fail in preprocessing
        raise ModelFolderError(f"{describe_path(model_dir)} was trained with other image channels "
                               f"({', '.join(folder.channel_names.values())}) than {describe_path(dataset.root)} "
                               f"has ({', '.join(dataset.channel_list)})")
    changed = check_resumed_dataset(model_dir, dataset)
    planned, finished = settings.epochs, int(payload["epoch"])
    settings.epochs = resumed_run_length(args.epochs, planned, finished, model_dir)
    if announce and settings.epochs != planned:
        then = (f"the poly learning rate follows the new length (the next epoch's: "
                f"{poly_lr(settings.lr, finished, settings.epochs):.3g})" if settings.epochs > finished
                else "it ends now, with its last finished epoch as the final model")
        print_note(f"the run now lasts {settings.epochs} epoch(s) instead of {planned}; {then}")
    if announce and changed:
        print_warning(f"{len(changed)} case(s) changed since the run started ({list_some(changed)}): "
                      "they are preprocessed again and the training goes on with the new files")
    preset_name = str(folder.meta.get("training", {}).get("preset") or folder.sam_type)
    ignored = ignored_options(args, _run_values(settings, preset_name, folder.random_init))
    if announce and ignored:
        print_note(f"a resumed run keeps its own settings; ignored here: {', '.join(ignored)}")
    if folder.random_init:
        sam = SamSource(path=None, model_type=folder.sam_type, sha256=None, random_init=True)
    else:
        given = args.sam_checkpoint if args.sam_checkpoint and os.path.isfile(args.sam_checkpoint) else None
        sam = load_recorded_sam(folder.resolve_sam_checkpoint(given), folder.sam_type or "vit_b",
                                folder.sam_sha256)
    return RunDescription(settings, folder.config, folder.plan, sam, preset_name, payload)


def _run_values(settings: TrainSettings, preset_name: str, random_init: bool) -> Dict[str, Any]:
    """A stored run's own values of the command line's run options, by option name."""
    return {"preset": preset_name, "iters_per_epoch": settings.iters_per_epoch, "batch_size": settings.batch_size,
            "optimizer": settings.optimizer, "lr": settings.lr, "seed": settings.seed, "fold": settings.fold,
            "no_amp": not settings.amp, "random_init": random_init,
            "val_cases_per_epoch": settings.val_cases_per_epoch or "all"}


def _workers(args: TrainArguments, default: Optional[int]) -> Optional[int]:
    return args.num_workers if args.num_workers is not None else default
