"""The preprocessing plan of a dataset: target spacing, axis order, normalisation, patch size.

Rules follow nnU-Net v2's "3d_fullres" planner so that results on public datasets stay comparable:

- **Target spacing**: per-axis median of the cases' spacings. When the largest median spacing is
  more than 3x the smallest (thick slices: the anisotropic case) that axis takes the 10th
  percentile of its spacings instead (but never finer than the other axes), so thin-slice scans
  are not thrown away by resampling to the median. (nnU-Net additionally requires the axis to
  have few voxels; we use the spacing rule alone.)
- **Transposition**: the axis with the largest target spacing (ties: array axis 0 = z) becomes
  axis 0, the network's slice axis T; ``transpose_forward`` maps the (z, y, x) array to that
  order and ``transpose_backward`` undoes it. ``target_spacing`` is given in the transposed order.
- **Normalisation**: see `MaskSAMCore.data.normalization`; CT statistics come from foreground
  voxels of the training cases (at most 10^5 random voxels per case).
- **Resampling**: images cubic; along an anisotropic slice axis linear ("separate z"); labels as
  one-hot masks with linear interpolation, nearest neighbour along an anisotropic slice axis.
- **Patch**: ``[config.num_slices, *config.image_hw]`` (T, H, W).
- **Voxel order**: ``reorient_to_lps`` (always true in new plans; absent in plans made before it,
  which keep their voxel order): preprocessing brings every case to LPS voxel order (array axes
  z, y, x along the patient's superior, posterior, left; `MaskSAMCore.data.orientation`) by
  transposing and reversing axes, so cases stored with an axis reversed (left-handed grids, RAS
  storage) or in another axis order (sagittally, coronally) look alike to the network. Planning
  sees each case's spacing and shape in that order too (``original_spacing_median``,
  ``original_median_shape``, ``target_spacing_zyx`` are of the reoriented arrays), so the slice
  axis is the same for a sagittally stored case as for its axially stored twin.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from MaskSAMCore.data.cropping import bbox_shape, nonzero_bbox
from MaskSAMCore.data.dataset import RawDataset
from MaskSAMCore.data.image_io import read_case
from MaskSAMCore.data.normalization import ct_scheme, is_ct, scheme_problems, zscore_scheme
from MaskSAMCore.data.orientation import Reorientation, lps_reorientation
from MaskSAMCore.data.resampling import coarsest_axis, is_anisotropic, resampled_shape
from MaskSAMCore.errors import DatasetError, describe_path
from MaskSAMCore.progress import Progress

PLAN_FORMAT = "masksam-plan"
PLAN_VERSION = 1
ANISOTROPY_THRESHOLD = 3.0
FOREGROUND_SAMPLES_PER_CASE = 100_000
NONZERO_MASK_THRESHOLD = 0.75  # crop keeps < 3/4 of the voxels -> the images have a zero background
_TIE_TOLERANCE = 1e-3          # spacings within 0.1 % count as equal when choosing the slice axis


def _checked_ct_scheme(dataset: RawDataset, index: int, name: str, samples: np.ndarray,
                       source: str) -> Dict[str, Any]:
    """`ct_scheme` of channel `index`, refused when its samples have no spread: a trained model
    with that plan would be refused when loaded (`scheme_problems`), after all the training."""
    scheme = ct_scheme(name, samples, source)
    if scheme_problems(scheme, "normalization"):
        what = "labelled voxel" if source == "foreground" else "voxel"
        raise DatasetError(f"{describe_path(dataset.root)}: every {what} of channel {index} ({name!r}) has the value "
                           f"{scheme['median']:g} (or nearly every one), so CT normalisation has no spread to learn "
                           f"from; is channel {index} really a CT, or are the images' voxels all one value?")
    return scheme


def plan_experiment(dataset: RawDataset, config: Any, progress: bool = True) -> Dict[str, Any]:
    """The JSON-able preprocessing plan of `dataset` for a network `config` (a `MaskSAMConfig`;
    only ``num_slices`` and ``image_hw`` are read). Reads every training case once."""
    reorient = True   # new plans bring cases to LPS voxel order: plan on them as preprocessing sees them
    fingerprint = dataset_fingerprint(dataset, progress=progress, reorient_to_lps=reorient)
    spacings = np.array(fingerprint["spacings"], dtype=np.float64)          # (cases, 3) z, y, x
    cropped_shapes = np.array(fingerprint["cropped_shapes"], dtype=np.float64)

    target_zyx, slice_axis, anisotropic = target_spacing(spacings)
    forward = [slice_axis] + [a for a in range(3) if a != slice_axis]
    backward = [int(i) for i in np.argsort(forward)]
    target = [float(target_zyx[a]) for a in forward]
    shapes_after = np.array([resampled_shape(s, sp, target_zyx) for s, sp in zip(cropped_shapes, spacings)])
    median_shape = [int(v) for v in np.median(shapes_after, axis=0)[forward].round()]

    normalization = []
    use_nonzero = float(np.median(fingerprint["kept_fractions"])) < NONZERO_MASK_THRESHOLD
    for index, name in enumerate(dataset.channel_list):
        if is_ct(name):
            samples = fingerprint["foreground"][index]
            source = "foreground"
            if samples.size == 0:
                samples, source = fingerprint["all_voxels"][index], "all voxels"
            normalization.append(_checked_ct_scheme(dataset, index, name, samples, source))
        else:
            normalization.append(zscore_scheme(name, use_nonzero))

    return {
        "format": PLAN_FORMAT,
        "format_version": PLAN_VERSION,
        "dataset_name": dataset.name,
        "labels": dict(dataset.labels),
        "num_classes": dataset.num_classes,
        # only sparsely annotated datasets have the key, so every other plan stays as it was;
        # it is the value of unannotated voxels in the preprocessed label maps: K, one above the
        # classes (the dataset's own value, except for region datasets, whose values are remapped)
        **({"ignore_label": dataset.num_classes} if dataset.ignore_label is not None else {}),
        # region datasets only: their label maps become class maps in preprocessing
        **({"regions": dataset.regions.to_dict()} if dataset.regions is not None else {}),
        "channel_names": dict(dataset.channel_names),
        "modality": dataset.modality,
        "file_ending": dataset.file_ending,
        "num_training_cases": len(dataset.training_cases),
        "original_spacing_median": [float(v) for v in np.median(spacings, axis=0)],
        "original_median_shape": [int(v) for v in np.median(cropped_shapes, axis=0).round()],
        "target_spacing": target,
        "target_spacing_zyx": [float(v) for v in target_zyx],
        "transpose_forward": forward,
        "transpose_backward": backward,
        "anisotropic": bool(anisotropic),
        "crop_to_nonzero": True,
        "reorient_to_lps": reorient,
        "patch_size": [int(config.num_slices), *(int(s) for s in config.image_hw)],
        "median_shape": median_shape,
        "image_resampling": {"order": 3, "order_z": 1, "separate_z": bool(anisotropic)},
        "label_resampling": {"method": "one_hot_linear", "order": 1, "order_z": 0 if anisotropic else 1,
                             "separate_z": bool(anisotropic)},
        "normalization": normalization,
    }


def plan_problems(plan: Any, channels: int) -> List[str]:
    """What makes `plan` unusable for preprocessing (a hand-edited or damaged model.json): one
    phrase per problem, empty when the fields preprocessing reads are all there and sane."""
    if not isinstance(plan, dict):
        return ["the plan is not a mapping"]
    # json reads NaN and Infinity: a NaN mean would run the whole network on NaN voxels, an
    # infinite spacing would be blamed on the image's header
    problems = [f"{where} must be a finite number, not {json.dumps(value)}"
                for where, value in _non_finite(plan, "plan")]
    for key in ("transpose_forward", "transpose_backward"):
        order = plan.get(key)
        if not (isinstance(order, list) and all(_is_whole(v, 0) for v in order) and sorted(order) == [0, 1, 2]):
            problems.append(f"plan.{key} must be an order of the axes 0, 1, 2")
    for key in ("target_spacing", "target_spacing_zyx"):
        spacing = plan.get(key, [1.0, 1.0, 1.0] if key == "target_spacing_zyx" else None)   # zyx: benchmark only
        if not (isinstance(spacing, list) and len(spacing) == 3 and all(_is_positive(v) for v in spacing)):
            problems.append(f"plan.{key} must be three positive numbers (mm)")
    patch = plan.get("patch_size", [1, 1, 1])   # plans written by hand for tests may leave it out
    if not (isinstance(patch, list) and len(patch) == 3 and all(_is_whole(v, 1) for v in patch)):
        problems.append("plan.patch_size must be three positive whole numbers (T, H, W)")
    normalization = plan.get("normalization")
    if not (isinstance(normalization, list) and len(normalization) == channels
            and all(isinstance(scheme, dict) for scheme in normalization)):
        problems.append(f"plan.normalization must give one scheme per channel ({channels})")
    else:
        problems += [problem for index, scheme in enumerate(normalization)
                     for problem in scheme_problems(scheme, f"plan.normalization[{index}]")]
    if not isinstance(plan.get("anisotropic"), bool):
        problems.append("plan.anisotropic must be true or false")
    if not isinstance(plan.get("reorient_to_lps", False), bool):
        problems.append("plan.reorient_to_lps must be true or false")
    resampling = plan.get("image_resampling", {})
    orders = [resampling.get(key, 1) for key in ("order", "order_z")] if isinstance(resampling, dict) else [None]
    if not all(_is_whole(order, 0) and order <= 5 for order in orders):   # scipy's spline orders
        problems.append("plan.image_resampling must give spline orders (order, order_z) from 0 to 5")
    return problems


def _is_whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _non_finite(value: Any, where: str) -> List[Tuple[str, float]]:
    """(field, value) of every NaN or infinite number in `value`, a JSON tree."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [(where, value)]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _non_finite(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in _non_finite(item, f"{where}[{index}]")]
    return []


def target_spacing(spacings: np.ndarray) -> tuple:
    """(target spacing (z, y, x), slice axis, anisotropic) from the cases' spacings (cases, 3)."""
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.median(spacings, axis=0)
    slice_axis = coarsest_axis(target, _TIE_TOLERANCE)
    others = [a for a in range(3) if a != slice_axis]
    anisotropic = is_anisotropic(target, ANISOTROPY_THRESHOLD)
    if anisotropic:
        # Thick slices: the 10th percentile keeps the thinner-slice scans' resolution.
        finer = float(np.percentile(spacings[:, slice_axis], 10))
        target[slice_axis] = max(finer, float(target[others].max()))
    return target, slice_axis, anisotropic


def dataset_fingerprint(dataset: RawDataset, progress: bool = True, reorient_to_lps: bool = True
                        ) -> Dict[str, Any]:
    """What planning needs from the pixels: per case spacing (z, y, x), shape after cropping to
    non-zero, the fraction of voxels the crop keeps, and per channel pooled intensity samples
    of foreground voxels (and of all voxels, as a fallback for unlabelled data).

    reorient_to_lps: spacings and shapes in LPS voxel order (`lps_reorientation` of each case), as
    preprocessing with ``plan["reorient_to_lps"]`` will see them; otherwise in the stored order."""
    spacings: List[List[float]] = []
    cropped_shapes: List[List[int]] = []
    kept: List[float] = []
    channels = dataset.num_channels
    foreground: List[List[np.ndarray]] = [[] for _ in range(channels)]
    everything: List[List[np.ndarray]] = [[] for _ in range(channels)]
    bar = Progress("plan", total=len(dataset.training_cases), unit="case", enabled=progress)
    for number, case in enumerate(dataset.training_cases):
        image, geometry = read_case(case.image_files)
        label, _ = dataset.read_label(case.label_file)
        box = nonzero_bbox(image)
        shape = bbox_shape(box)
        reorientation = lps_reorientation(geometry) if reorient_to_lps else Reorientation()
        spacings.append(list(reorientation.order(geometry.spacing_zyx)))
        cropped_shapes.append(list(reorientation.order(shape)))
        kept.append(float(np.prod(shape)) / float(np.prod(image.shape[1:])))
        # A fixed seed per case makes the plan reproducible.
        rng = np.random.default_rng([20240611, number])
        fg_index = np.flatnonzero(foreground_mask(label, dataset.ignore_label).ravel())
        fg_index = _subsample(fg_index, rng)
        all_index = _subsample(np.arange(label.size), rng, FOREGROUND_SAMPLES_PER_CASE // 10)
        for c in range(channels):
            flat = image[c].ravel()
            foreground[c].append(flat[fg_index])
            everything[c].append(flat[all_index])
        bar.advance()
    bar.close()
    return {
        "spacings": spacings,
        "cropped_shapes": cropped_shapes,
        "kept_fractions": kept,
        "foreground": [np.concatenate(parts) for parts in foreground],
        "all_voxels": [np.concatenate(parts) for parts in everything],
    }


def foreground_mask(labels: np.ndarray, ignore_label: Optional[int]) -> np.ndarray:
    """Voxels of a structure: neither background (0) nor unannotated (`ignore_label`)."""
    mask = labels > 0
    if ignore_label is not None:
        mask &= labels != ignore_label
    return mask


def _subsample(index: np.ndarray, rng: np.random.Generator, limit: int = FOREGROUND_SAMPLES_PER_CASE) -> np.ndarray:
    if index.size <= limit:
        return index
    return np.sort(rng.choice(index, size=limit, replace=False))
