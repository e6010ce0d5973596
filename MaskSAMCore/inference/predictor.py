"""The predictor: a trained model folder applied to whole images, back on their own grid.

    predictor = Predictor.from_model_folder("models/abdomen", device="auto")
    predictor.predict_file(["ct_0000.nii.gz"], "ct_labels.nii.gz")
    labels = predictor.predict_array(image, geometry)          # image (C, z, y, x) -> (z, y, x)

Per case: check -> `preprocess_case` (exactly as in training) -> sliding window (step 0.5,
Gaussian weights, every flip combination over the axes training mirrored - 8 for all three axes,
4 when training kept left and right apart - on CUDA batched into one forward in bf16, on the CPU
one flip per forward) -> back to the input's grid:
the scores are resampled to it slab by slab on the device as windows finish and only the argmax
goes to the host (`restore_sink.py`; the same result as the data layer's `restore_scores_argmax`),
or, when preprocessing did not resample, the argmax on the device + `restore_label_map` -> the
label map written with the input's exact geometry. `--probabilities` keeps every class's scores
(float16) on the host as well, beside that same label map (`sinks.ScoresAndLabelsSink`). A region
model (`data/regions.py`) then paints each class with the value of its last region, as nnU-Net
writes region predictions.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from MaskSAMCore.data.dicom_series import DicomSeries
from MaskSAMCore.data.image_io import ImageGeometry, read_case
from MaskSAMCore.data.preprocessing import preprocess_case, restore_label_map
from MaskSAMCore.data.regions import RegionScheme
from MaskSAMCore.data.slicer_segmentation import is_segmentation_file, write_segmentation
from MaskSAMCore.errors import InputError, MaskSAMError, ModelFolderError, describe_path, first_line
from MaskSAMCore.folder_layout import MODEL_JSON
from MaskSAMCore.inference import devices
from MaskSAMCore.inference.dicom_seg import is_seg_output, seg_structures, write_dicom_seg
from MaskSAMCore.inference.export import (probabilities_path, remove_stale_probabilities, write_labels,
                                          write_probabilities)
from MaskSAMCore.inference.input_checks import check_fits_host_memory, check_image, intensity_warnings
from MaskSAMCore.inference.mirroring import mirrored_predict
from MaskSAMCore.inference.restore_sink import finish_labels
from MaskSAMCore.inference.sliding_window import (NonFiniteScores, OutOfMemory, WindowJob, WindowSettings,
                                                  predict_with_fallback)
from MaskSAMCore.inference.windows import WindowGrid
from MaskSAMCore.progress import EVENT_MESSAGE, emit, print_message, print_warning
from MaskSAMCore.paths import environment_flag

COMPILE_ENV = "MASKSAM_COMPILE"


@dataclass
class PredictOptions:
    """User-facing settings. `fast` = no mirroring and step 1.0 (about 16x less work)."""

    step: float = 0.5
    mirror: bool = True
    window_batch: Optional[int] = None      # None: automatic (1 on the CPU, from memory on CUDA)
    compile: bool = field(default_factory=lambda: environment_flag(COMPILE_ENV))
    show_progress: bool = True

    @classmethod
    def fast(cls, **overrides: Any) -> "PredictOptions":
        return cls(**{"step": 1.0, "mirror": False, **overrides})


@dataclass
class PreparedCase:
    """A case read and preprocessed: data (C, T', H', W') float32 on the network grid."""

    name: str
    data: np.ndarray
    properties: Dict[str, Any]
    geometry: ImageGeometry
    seconds: float
    source: Optional[Path] = None   # the image file (channel 0) it was read from, if any
    series: Optional[DicomSeries] = None   # or the DICOM series
    warnings: List[str] = field(default_factory=list)   # about the image, for the caller to show


@dataclass
class PredictionResult:
    """labels (z, y, x) on the input grid; per-stage seconds; the window settings used."""

    labels: np.ndarray
    timings: Dict[str, float]
    settings: WindowSettings
    windows: int


def describe_case(paths: Sequence["os.PathLike[str] | str | DicomSeries"], name: Optional[str] = None) -> str:
    """How messages name a case: its file when it has one channel, else "case NAME" (a problem
    of the whole case, such as its spacing, belongs to no single channel file). Shared by the
    check of every header before any work and by preprocessing, so both name a case alike."""
    return describe_path(paths[0]) if len(paths) == 1 else f"case {name or Path(paths[0]).name}"


class Predictor:
    def __init__(self, model: torch.nn.Module, plan: Dict[str, Any], class_names: Sequence[str],
                 device: torch.device, options: Optional[PredictOptions] = None, name: str = "model",
                 mirror_axes: Sequence[int] = (0, 1, 2), regions: Optional[RegionScheme] = None,
                 modality: str = "unknown") -> None:
        self.model = model.eval()
        self.config = model.config
        self.plan = plan
        self.class_names = list(class_names)
        self.regions = regions   # a region model paints its regions into the label map it writes
        self.device = torch.device(device)
        self.options = options or PredictOptions()
        if self.device.type == "cuda" and self.options.window_batch is None:
            devices.gpu_budget_gb()  # a bad MASKSAM_GPU_MEMORY_GB is refused before any case is read
        self.name = name
        self.modality = modality   # model.json's: "CT", or the channel names (e.g. "T2+ADC")
        # Test-time mirroring flips only the patch axes training mirrored (model.json
        # training.mirror_axes): flipping left-right would swap left and right structures.
        self.mirror_axes = tuple(sorted({int(a) for a in mirror_axes if int(a) in (0, 1, 2)}))
        self.patch = (int(self.config.num_slices), *(int(s) for s in self.config.image_hw))
        planned = plan.get("patch_size")
        if planned is not None and tuple(int(p) for p in planned) != self.patch:
            raise ModelFolderError(f"{name}: the plan's patch {list(planned)} differs from the network's "
                                   f"(T, H, W) = {list(self.patch)}")
        self.amp_dtype = devices.autocast_dtype(self.device)
        self._segment: Callable[[torch.Tensor], torch.Tensor] = self.model.segment
        if self.options.compile:
            # Block by block: identical blocks share one compiled graph (about a minute the first
            # time, cached on disk after), where compiling the whole network took over 3 minutes.
            self.model.compile_blocks()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch shapes: autotuned convolutions pay
        self.settings: Optional[WindowSettings] = None

    @classmethod
    def from_model_folder(cls, model_dir: "os.PathLike[str] | str", device: str = "auto",
                          checkpoint: str = "final", sam_checkpoint: Optional[str] = None,
                          options: Optional[PredictOptions] = None) -> "Predictor":
        from MaskSAMCore.model_folder import ModelFolder

        folder = ModelFolder.load(model_dir)
        note = folder.outdated_final_note() if checkpoint == "final" else None
        if note:
            print_warning(note)
        torch_device = devices.resolve_device(device)
        try:
            model = folder.build_model(which=checkpoint, device=torch_device, sam_checkpoint=sam_checkpoint)
        except MaskSAMError:
            raise
        except (TypeError, ValueError) as exc:
            # model.json's check should refuse every network torch cannot build; should one slip
            # through, the user still gets the file, not a traceback from a layer's constructor
            raise ModelFolderError(f"{describe_path(folder.path / MODEL_JSON)} has an invalid network: "
                                   f"{first_line(exc)}") from None
        mirror_axes = (folder.meta.get("training") or {}).get("mirror_axes", (0, 1, 2))
        return cls(model, folder.plan, folder.class_names, torch_device, options, name=folder.name,
                   mirror_axes=mirror_axes, regions=folder.regions, modality=folder.modality)

    # -- the network ---------------------------------------------------------------------------
    def network(self, patches: torch.Tensor) -> torch.Tensor:
        """(M, C, T, H, W) -> (M, K, T, H, W) class scores, under autocast on CUDA."""
        return self._forward(patches, self.amp_dtype)

    def network_in(self, amp_dtype: Optional[torch.dtype]) -> Callable[[torch.Tensor], torch.Tensor]:
        """`network` under autocast to `amp_dtype` instead (None: float32), for the retry of a
        case whose scores overflowed in half precision; the next case uses `amp_dtype` again."""
        return functools.partial(self._forward, amp_dtype=amp_dtype)

    def _forward(self, patches: torch.Tensor, amp_dtype: Optional[torch.dtype]) -> torch.Tensor:
        """(M, C, T, H, W) -> (M, K, T, H, W) class scores, under autocast to `amp_dtype` on CUDA."""
        with devices.autocast_context(self.device, amp_dtype):
            return self._segment(patches)

    def window_settings(self) -> WindowSettings:
        """The settings for every case: chosen once (measuring one forward on CUDA), then kept.

        The automatic window batch is planned for the memory budget alone, never for the first
        case's window count: a small first case must not slow every later case of a folder."""
        if self.settings is not None:
            return dataclasses.replace(self.settings)
        base = WindowSettings(step=self.options.step, mirror=self.options.mirror and bool(self.mirror_axes),
                              window_batch=self.options.window_batch or 1,
                              pad_last_batch=self.options.compile, mirror_axes=self.mirror_axes)
        if self.options.window_batch is None and self.device.type == "cuda":
            base = self._automatic_batch(base)
        elif self.device.type == "cpu":
            # A CPU gains nothing from large batches, and 8 vit_b flips in one forward would need
            # about 24 GB of RAM: one flip per forward keeps a vit_b window near 3 GB.
            base = dataclasses.replace(base, flips_per_forward=1)
        self.settings = base
        return dataclasses.replace(base)

    def _automatic_batch(self, base: WindowSettings) -> WindowSettings:
        """Measure one forward (all flips of one window, fewer if that alone runs out of memory)
        and plan the window batch for the GPU memory budget (see `devices`)."""
        sample = torch.zeros((1, self.config.in_channels, *self.patch), device=self.device)
        flips = base.flips
        per_forward = len(flips)
        while True:
            try:
                with torch.inference_mode():
                    def forward() -> object:
                        return mirrored_predict(self.network, sample, flips[:per_forward])

                    # The first call autotunes cuDNN (large temporary workspaces): measure the second.
                    devices.measure_forward_bytes(forward, self.device)
                    peak = devices.measure_forward_bytes(forward, self.device)
                break
            except RuntimeError as error:  # torch.OutOfMemoryError is one
                if not devices.is_out_of_memory(error):
                    raise
            torch.cuda.empty_cache()  # after the except block: see predict_with_fallback
            if per_forward == 1:
                raise OutOfMemory(f"{self.name}: one {self.patch[0]}-slice window does not fit in GPU memory; "
                                  "use --device cpu")
            per_forward //= 2
        step_slices = max(1, int(round(self.patch[0] * base.step)))
        slab = 4 * self.config.num_classes * step_slices * self.patch[1] * self.patch[2]
        budget = devices.gpu_budget_bytes(self.device)
        batch, chunk = devices.plan_window_batch(peak / per_forward, slab, budget, len(flips))
        emit(EVENT_MESSAGE, message=f"window batch {batch}, {chunk or len(flips)} flips per forward: one forward of "
                                f"{per_forward} flip(s) needs {devices.describe_bytes(peak)}, "
                                f"budget {devices.describe_bytes(budget)}")
        return dataclasses.replace(base, window_batch=batch, flips_per_forward=chunk)

    # -- cases ---------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, geometry: ImageGeometry, name: str = "image",
                owned: bool = False, channel_files: Optional[Sequence[str]] = None,
                probabilities: bool = False) -> PreparedCase:
        """Check and preprocess one image (C, z, y, x) exactly as training did.

        owned: the caller will not use `image` again, so preprocessing may work in its memory
        (normalisation is done in place where no resampling copies the data first).
        probabilities: they will be written too (their memory is part of the check)."""
        start = time.perf_counter()
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        check_image(image, geometry, self.config.in_channels, name, channel_files)
        check_fits_host_memory(geometry, self.plan, self.config.in_channels, name, devices.available_host_bytes(),
                               probabilities, self.config.num_classes)
        warnings = intensity_warnings(image, self.plan, name, channel_files)
        image = image.astype(np.float32, copy=not owned)
        data, _, properties = preprocess_case(image, geometry, self.plan)
        return PreparedCase(name, data, properties, geometry, time.perf_counter() - start, warnings=warnings)

    def prepare_files(self, paths: Sequence["os.PathLike[str] | str | DicomSeries"],
                      name: Optional[str] = None, probabilities: bool = False) -> PreparedCase:
        """Read a case's channel files (or DICOM series) and preprocess it (safe to call in a
        background thread)."""
        start = time.perf_counter()
        image, geometry = read_case([p if isinstance(p, DicomSeries) else Path(p) for p in paths])
        files = [describe_path(p) for p in paths]
        prepared = self.prepare(image, geometry, describe_case(paths, name), owned=True, channel_files=files,
                                probabilities=probabilities)
        prepared.name = name or files[0]
        prepared.seconds = time.perf_counter() - start
        prepared.series = paths[0] if isinstance(paths[0], DicomSeries) else None
        prepared.source = None if prepared.series is not None else Path(paths[0])
        return prepared

    def predict_prepared(self, case: PreparedCase, output_path: Optional["os.PathLike[str] | str"] = None,
                         probabilities: bool = False,
                         should_cancel: Optional[Callable[[], bool]] = None) -> PredictionResult:
        """Run the network on a prepared case; restore (and write) the labels on its own grid."""
        properties = case.properties
        resampled = list(properties["shape_after_resampling"]) != list(properties["shape_after_transpose"])
        # Only labels travel back: the argmax on the device, after resampling slab by slab when
        # preprocessing resampled. Probabilities need every class's scores on the host as well;
        # the labels still come from the float32 argmax, so --probabilities never changes them.
        label_output = "restored" if resampled else "labels"
        output = f"scores+{label_output}" if probabilities else label_output
        grid = WindowGrid(tuple(case.data.shape[1:]), self.patch, self.options.step)
        settings = self.window_settings()
        start = time.perf_counter()
        restore_shape = properties["shape_after_transpose"] if resampled else None
        result, settings = self._sliding_window(case, settings, output, should_cancel, restore_shape)
        network_seconds = time.perf_counter() - start
        self.settings = settings  # what worked (after any out-of-memory fallback) for the next case
        case.data = np.empty((0,), np.float32)  # the preprocessed image is no longer needed

        start = time.perf_counter()
        scores = None
        if probabilities:
            scores, result = result
        if resampled:
            labels = finish_labels(result, properties)
        else:
            labels = restore_label_map(result, properties, self.plan)
        if self.regions is not None:
            labels = self.regions.to_output(labels)
        if output_path is not None:
            if scores is not None:
                write_probabilities(scores, properties, self.class_names, probabilities_path(output_path),
                                    then=lambda: self._write_labels(labels, case, output_path), regions=self.regions)
            else:
                self._write_labels(labels, case, output_path)
                self._remove_stale_probabilities(output_path)
        export_seconds = time.perf_counter() - start
        timings = {"preprocess_s": case.seconds, "network_s": network_seconds, "export_s": export_seconds}
        return PredictionResult(labels, timings, settings, len(grid))

    def _remove_stale_probabilities(self, output_path: "os.PathLike[str] | str") -> None:
        """An earlier run's probabilities beside the label map just replaced no longer match it."""
        removed = remove_stale_probabilities(output_path)
        if removed is not None:
            message = (f"removed {describe_path(removed)}, an earlier run's probabilities, which no longer match "
                       "the new label map (--probabilities writes new ones)")
            print_message(message, event=True)

    def _write_labels(self, labels: np.ndarray, case: PreparedCase, path: "os.PathLike[str] | str") -> None:
        """The label map as an image file on the input's grid, as a 3D Slicer segmentation
        (``.seg.nrrd``), or as a DICOM SEG (``.dcm``) referring to the series it was predicted from."""
        if is_segmentation_file(path):
            structures = [(s.name, s.values) for s in seg_structures(self.class_names, self.regions)]
            write_segmentation(labels, case.geometry, structures, path)
        elif not is_seg_output(path):
            write_labels(labels, case.geometry, path, case.source)
        elif case.series is None:
            raise InputError(f"{describe_path(path)}: a DICOM SEG needs a DICOM series as input; "
                             f"{case.name} is not one")
        else:
            write_dicom_seg(labels, case.series, seg_structures(self.class_names, self.regions), path, self.name)

    def _sliding_window(self, case: PreparedCase, settings: WindowSettings, output: str,
                        should_cancel: Optional[Callable[[], bool]], restore_shape: Optional[Sequence[int]]):
        """`predict_with_fallback` on the case's data; a case whose half-precision scores are not
        finite is predicted again in float32. Returns (result, the settings that worked)."""
        job = WindowJob(case.data, self.network, self.patch, self.config.num_classes, self.device, output,
                        progress_stage="predict" if self.options.show_progress else None,
                        should_cancel=should_cancel, restore_shape=restore_shape, case_name=case.name)
        result, finite, used = predict_with_fallback(job, settings)
        if finite:
            return result, used
        if self.amp_dtype is None:
            raise NonFiniteScores(f"{case.name}: the network produced NaN/Inf scores (a corrupt checkpoint?)")
        # Half precision overflowed somewhere: redo this case in float32 rather than guess.
        message = f"{case.name}: NaN/Inf scores in {self.amp_dtype}; predicting this case again in float32"
        print_message(message, event=True)
        result, finite, used = predict_with_fallback(dataclasses.replace(job, network=self.network_in(None)), used)
        if not finite:
            raise NonFiniteScores(f"{case.name}: the network produced NaN/Inf scores even in float32")
        return result, used

    def predict_array(self, image: np.ndarray, geometry: ImageGeometry, name: str = "image") -> np.ndarray:
        """Labels (z, y, x) on `geometry` for image (C, z, y, x) or (z, y, x)."""
        return self.predict_prepared(self.prepare(image, geometry, name)).labels

    def predict_file(self, input_paths: Sequence["os.PathLike[str] | str"], output_path: "os.PathLike[str] | str",
                     probabilities: bool = False) -> PredictionResult:
        """Segment one case given as its channel files and write the label map (and probabilities)."""
        return self.predict_prepared(self.prepare_files(input_paths, probabilities=probabilities), output_path,
                                     probabilities)


def describe_settings(settings: WindowSettings) -> str:
    flips = len(settings.flips)
    per_forward = settings.flips_per_forward or flips
    return (f"step {settings.step:g}, {flips} flip(s) ({per_forward} per forward), "
            f"window batch {settings.window_batch}"
            f"{', host accumulation' if settings.accumulate_on_host else ''}")
