"""Intensity normalisation per channel, as nnU-Net does it.

Two schemes, chosen per channel by its name in dataset.json:

- ``"ct"`` (channel name "CT", any case): Hounsfield units mean the same in every scan, so one
  dataset-wide rule is used: clip to the 0.5 / 99.5 percentiles of foreground (label > 0) voxels
  pooled over the training cases, then subtract their mean and divide by their standard deviation.
- ``"zscore"`` (anything else, e.g. MR): intensities are arbitrary per scan, so each image is
  z-scored with its own mean and standard deviation; over its non-zero voxels only when the
  dataset's images have a zero background (``use_nonzero_mask``, nnU-Net's use_mask_for_norm),
  the background then staying 0.

A plan's ``normalization`` list holds one dict per channel (see `ct_scheme`, `zscore_scheme`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from MaskSAMCore.errors import InputError

SCHEMES = ("ct", "zscore")
_SCHEMES_SHOWN = " or ".join(f'"{name}"' for name in SCHEMES)
_MIN_STD = 1e-8

# Darker than this (HU), every CT of a body holds something: air around the body, in the lungs or
# the bowel lies near -1000 HU. A "CT" without it is not in Hounsfield units (a DICOM export that
# lost its rescale intercept has air at 0), and the dataset-wide clipping above would misread it.
AIR_HU = -500.0
NOT_HOUNSFIELD_CAUSES = "a lost rescale intercept? not a CT?"


def cannot_be_hounsfield(darkest: float, darkest_structure: float = AIR_HU) -> bool:
    """Whether a CT channel whose darkest voxel is `darkest` cannot be in Hounsfield units: it
    holds nothing as dark as air, nor as the darkest structure a model learnt (when known)."""
    return darkest > max(AIR_HU, darkest_structure)


def is_ct(channel_name: str) -> bool:
    return channel_name.strip().lower() == "ct"


def ct_scheme(channel_name: str, foreground: np.ndarray, source: str = "foreground") -> Dict[str, object]:
    """The plan entry for a CT channel from pooled intensity samples (1D array, HU)."""
    samples = np.asarray(foreground, dtype=np.float64)
    if samples.size == 0:
        raise ValueError("no intensity samples for a CT channel")
    low, high = np.percentile(samples, [0.5, 99.5])
    return {
        "channel": channel_name,
        "scheme": "ct",
        "clip_low": float(low),
        "clip_high": float(high),
        "mean": float(samples.mean()),
        "std": float(samples.std()),
        "median": float(np.median(samples)),
        "statistics_from": source,  # "foreground" normally; "all voxels" if no case had a label
    }


def scheme_problems(scheme: Dict[str, Any], where: str) -> List[str]:
    """What makes one plan entry (`ct_scheme`, `zscore_scheme`; named `where` in messages) unusable:
    a missing or non-numeric CT statistic would fail in preprocessing's worker thread, and a zero
    std would turn the whole image into one value, segmented as background without a word."""
    kind = scheme.get("scheme")
    if kind not in SCHEMES:
        return [f"{where}.scheme must be {_SCHEMES_SHOWN}, not {json.dumps(kind)}"]
    if kind == "zscore":
        mask = scheme.get("use_nonzero_mask", False)
        return [] if isinstance(mask, bool) else [f"{where}.use_nonzero_mask must be true or false"]
    problems = [f"{where}.{key} must be a number" for key in ("clip_low", "clip_high", "mean", "std")
                if not (isinstance(scheme.get(key), (int, float)) and not isinstance(scheme.get(key), bool)
                        and math.isfinite(scheme[key]))]
    if problems:
        return problems
    if scheme["std"] <= 0:
        problems.append(f"{where}.std must be positive, not {scheme['std']}")
    if scheme["clip_low"] >= scheme["clip_high"]:
        problems.append(f"{where}.clip_low ({scheme['clip_low']}) must be below clip_high ({scheme['clip_high']})")
    return problems


def zscore_scheme(channel_name: str, use_nonzero_mask: bool) -> Dict[str, object]:
    """The plan entry for a per-image z-scored channel."""
    return {"channel": channel_name, "scheme": "zscore", "use_nonzero_mask": bool(use_nonzero_mask)}


def image_statistics(channel: np.ndarray, scheme: Dict[str, object],
                     nonzero_mask: Optional[np.ndarray] = None) -> Tuple[float, float]:
    """(mean, std) that normalise this channel (z, y, x): the dataset's for CT, the image's own
    (over `nonzero_mask` when the scheme asks for it) otherwise. Computed on the original
    voxels, before resampling, so interpolation does not bias them."""
    if scheme.get("scheme") == "ct":
        return float(scheme["mean"]), float(scheme["std"])
    if scheme.get("scheme") != "zscore":
        # a model.json's plan is checked (`scheme_problems`) before this; a plan from elsewhere is not
        raise InputError(f"unknown normalisation scheme {scheme.get('scheme')!r}; MaskSAM knows {_SCHEMES_SHOWN}")
    values = channel[nonzero_mask] if scheme.get("use_nonzero_mask") and nonzero_mask is not None else channel
    if values.size == 0:
        return 0.0, 1.0
    values = values.astype(np.float64, copy=False)
    return float(values.mean()), float(values.std())


def normalize_channel(channel: np.ndarray, scheme: Dict[str, object], mean: float, std: float,
                      nonzero_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Normalise one channel (z, y, x) in place when it is float32; returns the float32 result.
    `nonzero_mask` (same shape, bool) marks the voxels to keep when the scheme z-scores the
    non-zero region only; everything else becomes 0."""
    out = channel if channel.dtype == np.float32 else channel.astype(np.float32)
    if scheme["scheme"] == "ct":
        np.clip(out, float(scheme["clip_low"]), float(scheme["clip_high"]), out=out)
    out -= np.float32(mean)
    out /= np.float32(max(std, _MIN_STD))
    if scheme["scheme"] == "zscore" and scheme.get("use_nonzero_mask") and nonzero_mask is not None:
        out[~nonzero_mask] = 0.0
    return out
