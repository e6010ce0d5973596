"""The training loop: epochs of SGD/AdamW steps, validation, checkpoints, log and exact resume.

One epoch: set the poly learning rate, run `iters_per_epoch` steps on patches from the data
stream of (seed, epoch, rank), validate on whole cases (rank 0), update the EMA pseudo-Dice
(0.9 old + 0.1 new, nnU-Net), write checkpoint_latest, then checkpoint_best when it improved,
then training_log.csv, progress.png, the epoch's lines for people and (with --machine-progress)
one ``@masksam {"event": "epoch", ...}`` line.
checkpoint_latest holds everything needed to continue exactly where it was written (optimiser,
GradScaler, every RNG of every rank, log history), so a run killed at any moment resumes from
the last finished epoch and redoes only the interrupted one.

Mixed precision is used on CUDA only: bfloat16 where supported (no loss scaling needed), else
float16 with a GradScaler. Gradients are clipped to norm 12 (nnU-Net); a step whose gradient is
not finite is skipped on every rank alike (the norm is computed after DDP's all-reduce).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from MaskSAMCore.errors import MaskSAMError
from MaskSAMCore.inference import devices
from MaskSAMCore.progress import EVENT_EPOCH, Progress, emit
from MaskSAMCore.training import checkpoint_io
from MaskSAMCore.training.distributed import DistributedContext, gather_objects, mean_across_ranks, run_and_agree
from MaskSAMCore.training.losses import MaskSAMLoss
from MaskSAMCore.training.rng_state import capture_rng_state, restore_rng_state
from MaskSAMCore.training.schedule import GRADIENT_CLIP_NORM, build_optimizer, poly_lr, set_lr
from MaskSAMCore.training.settings import TrainSettings
from MaskSAMCore.training.training_log import EpochRecord, TrainingLog
from MaskSAMCore.training.validation import ValidationResult, Validator

# epoch (0-based) -> an iterable of (image (B, C, T, H, W) float32, seg (B, T, H, W) int) batches
BatchSource = Callable[[int], Iterable[Tuple[Tensor, Tensor]]]
EMA_MOMENTUM = 0.9


class TrainingDiverged(MaskSAMError):
    """Every step of an epoch had a non-finite loss or gradient, or the network it left gives
    non-finite outputs or has non-finite weights."""


def autocast_dtype(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    """bfloat16 / float16 for mixed precision on CUDA (as `devices.autocast_dtype` chooses), None
    (float32) elsewhere or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return devices.autocast_dtype(device)


class Trainer:
    """Trains `model` in place.

    Args:
        model: a `MaskSAM` (SAM frozen); moved to `device`.
        settings: the run's settings.
        batches: the training data stream per epoch (see `BatchSource`).
        validator: validation on whole cases (used on rank 0 only).
        model_dir: where checkpoints and the log go (written by rank 0 only).
        class_names: all K class names in label order (index 0 background).
        device: the training device of this rank.
        context: the DDP context (single process by default).
        on_epoch_end: called on rank 0 after each epoch's files are written (e.g. model.json).
        ignore_label: the label value of unannotated voxels (sparse annotations), or None.
    """

    def __init__(self, model: nn.Module, settings: TrainSettings, batches: BatchSource,
                 validator: Optional[Validator], model_dir: str, class_names: Sequence[str],
                 device: torch.device, context: DistributedContext = DistributedContext(),
                 on_epoch_end: Optional[Callable[["Trainer"], None]] = None,
                 ignore_label: Optional[int] = None) -> None:
        self.model = model.to(device)
        self.settings = settings
        self.batches = batches
        self.validator = validator
        self.model_dir = model_dir
        self.class_names = list(class_names)
        self.device = device
        self.context = context
        self.on_epoch_end = on_epoch_end
        self.network: nn.Module = self.model
        if context.is_distributed:
            # On CPUs the depthwise adapters' weight gradient (C, 1, 3, 3, 3) comes back from oneDNN
            # with another stride on its size-1 axis than the weight; DDP compares strides and warns
            # that copying "may impair performance", but no memory layout differs.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            prompt_mode = getattr(getattr(model, "config", None), "prompt_mode", "mask_avg_box")
            self.network = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None,
                # ablation prompt modes leave some trainable layers without gradient
                find_unused_parameters=prompt_mode != "mask_avg_box")
        self.criterion = MaskSAMLoss(len(self.class_names), settings.loss_weights, settings.num_points,
                                     ignore_label=ignore_label)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.trainable, settings.optimizer, settings.lr)
        self.amp_dtype = autocast_dtype(device, settings.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # one Dice column per structure the validation scores (classes, or a region dataset's regions)
        scored = list(validator.structures) if validator is not None else self.class_names[1:]
        self.log = TrainingLog(model_dir, scored)
        self.start_epoch = 0
        self.ema_dice: Optional[float] = None
        self.best_ema_dice: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.best_mean_dice: Optional[float] = None

    # -- resume ----------------------------------------------------------------------------------
    def restore(self, payload: Dict[str, Any]) -> None:
        """Continue from a checkpoint_latest payload (see `checkpoint_io.resume_payload`)."""
        checkpoint_io.load_network_weights(self.model, payload)
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["grad_scaler"])
        rng = payload["rng"]
        states = rng if isinstance(rng, list) else [rng]
        if self.context.rank < len(states):
            restore_rng_state(states[self.context.rank])
        else:  # more ranks than when the checkpoint was written: a fresh, distinct stream
            torch.manual_seed(self.settings.seed + 1000 * self.context.rank + int(payload["epoch"]))
        self.log.restore(payload["history"])
        self.start_epoch = int(payload["epoch"])
        self.ema_dice = payload["ema_dice"]
        self.best_ema_dice = payload["best_ema_dice"]
        self.best_epoch = payload.get("best_epoch")
        best = [r for r in self.log.records if r.epoch == self.best_epoch]
        self.best_mean_dice = best[0].mean_dice if best else None
        if self.context.is_main:
            # the process may have died between checkpoint_latest and the CSV: the checkpoint's
            # history is the truth, and a run resumed after its last epoch writes no other row
            self.log.write_csv()
            self.log.write_plot()
            # killed between checkpoint_latest and checkpoint_best: latest's weights are the best
            best_missing = checkpoint_io.stored_epoch(self.model_dir, "best") != self.best_epoch
            if self.best_epoch == self.start_epoch and best_missing:
                self._write_best(self.start_epoch)

    def _write_best(self, epoch: int) -> None:
        """checkpoint_best from the network as it is after `epoch` (the best epoch)."""
        checkpoint_io.write(self.model_dir, "best", checkpoint_io.weights_payload(
            self.model, self.settings.weights_scope, epoch, {"ema_dice": self.best_ema_dice}))

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train the remaining epochs; returns `summary()`."""
        s = self.settings
        main = self.context.is_main
        bar = Progress("train", total=s.epochs * s.iters_per_epoch, enabled=main,
                       done_before=min(self.start_epoch, s.epochs) * s.iters_per_epoch) if main else None
        epoch_times: List[float] = []
        for epoch in range(self.start_epoch, s.epochs):
            started = time.monotonic()
            lr = poly_lr(s.lr, epoch, s.epochs)
            set_lr(self.optimizer, lr)
            train_loss = self.train_epoch(epoch, bar)
            if bar is not None:
                bar.end_line()  # the epoch summary gets its own line in a terminal
            result = self.validate(epoch)
            self._stop_if_diverged(epoch, result)
            epoch_times.append(time.monotonic() - started)
            self.end_epoch(epoch, lr, train_loss, result, epoch_times)
        if bar is not None and bar.done < (bar.total or 0):
            bar.close()  # (a completed bar has already drawn its last line)
        run_and_agree(lambda: checkpoint_io.write(self.model_dir, "final",
                                                  checkpoint_io.weights_payload(self.model, s.weights_scope, s.epochs)),
                      here=main)
        return self.summary()

    def train_epoch(self, epoch: int, bar: Optional[Progress]) -> float:
        """Run one epoch of steps; returns the mean loss over steps (and ranks)."""
        s = self.settings
        self.network.train()
        total, finite_steps = 0.0, 0
        stream = iter(self.batches(epoch))
        try:
            for _ in range(s.iters_per_epoch):
                image, seg = next(stream)
                loss = self.train_step(image, seg)
                if loss is not None:
                    total += loss
                    finite_steps += 1
                if bar is not None:
                    bar.set_postfix(f"epoch {epoch + 1}/{s.epochs}, loss {total / max(finite_steps, 1):.3f}")
                    bar.advance()
        finally:  # stops the loader's worker processes, also on Ctrl-C / SIGTERM
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        # Every rank decides on the same numbers: a rank raising alone would leave the others
        # waiting for it at the next gradient all-reduce forever.
        loss_sum, steps = mean_across_ranks(torch.tensor([total, float(finite_steps)], dtype=torch.float64,
                                                         device=self.device)).tolist()
        if steps == 0:
            raise TrainingDiverged(self._diverged(f"every step of epoch {epoch + 1} gave a non-finite loss"))
        return loss_sum / steps

    def _stop_if_diverged(self, epoch: int, result: Optional[ValidationResult]) -> None:
        """Stop before a diverged network becomes checkpoint_best or checkpoint_latest: its
        training steps may all have been finite while the weights they left (a learning rate far
        too high) give NaN outputs. Every rank decides alike (rank 0 alone validates)."""
        outputs_bad = result is not None and not result.finite
        weights_bad = not all(bool(torch.isfinite(p).all()) for p in self.trainable)
        flag = torch.tensor([float(outputs_bad or weights_bad)], dtype=torch.float64, device=self.device)
        if float(mean_across_ranks(flag)) > 0:
            what = "weights" if weights_bad else "outputs in validation"
            raise TrainingDiverged(self._diverged(f"after epoch {epoch + 1} the network's {what} are not finite"))

    def _diverged(self, what: str) -> str:
        # --resume keeps the run's learning rate, so the way out is a new training.
        return (f"training diverged: {what}; train again in a new model folder with a lower learning rate "
                f"(--lr, now {self.settings.lr:g}; --resume would keep it)")

    def train_step(self, image: Tensor, seg: Tensor) -> Optional[float]:
        """One optimiser step; returns the loss, or None when the step was skipped (non-finite)."""
        image = image.to(self.device, non_blocking=True)
        seg = seg.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            output = self.network(image)
            result = self.criterion(output, seg)
        self.scaler.scale(result.total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, GRADIENT_CLIP_NORM)
        finite_gradient = bool(torch.isfinite(grad_norm))
        if self.scaler.is_enabled():
            # float16: inf gradients are expected while the scaler searches its scale; it skips
            # those steps itself and the loss still counts
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif finite_gradient:
            self.optimizer.step()
        loss = float(result.total.detach())
        if not math.isfinite(loss) or not (finite_gradient or self.scaler.is_enabled()):
            return None
        return loss

    def validate(self, epoch: int) -> Optional[ValidationResult]:
        """Validation on rank 0 (the other ranks wait); None on the other ranks.

        ``val_cases_per_epoch`` limits the cases of every epoch but the last, which validates on
        all of them."""
        last = epoch == self.settings.epochs - 1
        # the last epoch sees every validation case, so the final Dice is over the whole fold
        max_cases = None if last else self.settings.val_cases_per_epoch
        return run_and_agree(lambda: self.validator.run(self.model, epoch, max_cases, autocast_dtype=self.amp_dtype),
                             here=self.context.is_main)

    def end_epoch(self, epoch: int, lr: float, train_loss: float, result: Optional[ValidationResult],
                  epoch_times: List[float]) -> None:
        """EMA, checkpoints, log and the epoch line (files on rank 0 only)."""
        s = self.settings
        # every rank's RNG goes into checkpoint_latest; gathering is collective, so all ranks join
        rng_states = gather_objects(capture_rng_state())
        if not self.context.is_main or result is None:
            return
        finished = epoch + 1
        new = result.mean_dice if not math.isnan(result.mean_dice) else 0.0
        self.ema_dice = new if self.ema_dice is None else EMA_MOMENTUM * self.ema_dice + (1 - EMA_MOMENTUM) * new
        improved = self.best_ema_dice is None or self.ema_dice > self.best_ema_dice
        if improved:
            self.best_ema_dice, self.best_epoch, self.best_mean_dice = self.ema_dice, finished, result.mean_dice
        record = EpochRecord(epoch=finished, train_loss=train_loss, val_loss=result.loss, dice=result.dice,
                             mean_dice=result.mean_dice, ema_dice=self.ema_dice, lr=lr,
                             epoch_time_s=epoch_times[-1])
        self.log.add(record)
        # checkpoint_latest first: a process killed between the two writes then leaves no
        # checkpoint_best of an epoch that checkpoint_latest and the log never had; `restore`
        # writes the best one that latest names from latest's own weights.
        checkpoint_io.write(self.model_dir, "latest", checkpoint_io.resume_payload(
            self.model, s.weights_scope, finished, self.optimizer, self.scaler, self.log.to_state(),
            self.ema_dice, self.best_ema_dice, self.best_epoch, s.to_dict(), rng_states))
        if improved:
            self._write_best(finished)
        self.log.write_csv()
        self.log.write_plot()
        eta = sum(epoch_times) / len(epoch_times) * (s.epochs - finished)
        print(record.describe(s.epochs, eta), flush=True)
        emit(EVENT_EPOCH, epoch=finished, epochs=s.epochs, train_loss=_number(train_loss),
             val_loss=_number(result.loss), mean_dice=_number(result.mean_dice),
             dice={k: _number(v) for k, v in result.dice.items()}, ema_dice=_number(self.ema_dice),
             lr=lr, epoch_time_s=round(epoch_times[-1], 2), eta_s=round(eta, 1))
        if self.on_epoch_end is not None:
            self.on_epoch_end(self)

    def summary(self) -> Dict[str, Any]:
        """The "training" entry of model.json."""
        last = self.log.records[-1] if self.log.records else None
        return {
            "epochs": self.settings.epochs,
            "finished_epochs": last.epoch if last else self.start_epoch,
            "best_epoch": self.best_epoch,
            "best_mean_dice": self.best_mean_dice,
            "best_ema_dice": self.best_ema_dice,
            "final_mean_dice": last.mean_dice if last else None,
            **{k: v for k, v in self.settings.to_dict().items() if k != "loss_weights"},
            "loss_weights": self.settings.loss_weights.to_dict(),
        }


def _number(value: float) -> Optional[float]:
    """Rounded for the epoch line; None (JSON null) for NaN, e.g. a class absent from validation."""
    return None if math.isnan(value) else round(value, 5)
