"""Refusing images the network cannot segment meaningfully, with one line that names the case.

Reading (`MaskSAMCore.data.image_io`) already rejects missing, corrupt, 2D, 4D, vector and
NaN/Inf files. These checks cover what reading accepts but prediction cannot use, and arrays
handed in directly (the Slicer module passes arrays, not files).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.normalization import NOT_HOUNSFIELD_CAUSES, cannot_be_hounsfield
from MaskSAMCore.data.orientation import plan_reorientation
from MaskSAMCore.data.resampling import resampled_shape
from MaskSAMCore.errors import InputError, by_x

# Peak host memory of a prediction in float32 copies of the resampled volume per channel
# (the input, its resampled copy, the scores restored slab by slab; measured 4.4 on the
# 600 x 512 x 512 benchmark in benchmarks/README.md), rounded up.
HOST_COPIES_OF_RESAMPLED = 5
# What --probabilities holds at once while it writes the npz (export.write_probabilities): every
# class's float16 scores on the network grid (sinks.HostScoreSink: 2 bytes per class per voxel),
# and per voxel of the input's grid the resampled total over classes, one class on its way to the
# file and the label map: 18 bytes measured with tracemalloc, rounded up. 600 x 512 x 512 voxels and 16
# classes: 7.4 GiB asked, 7.8 GiB measured peak resident memory, torch's 0.4 GiB included.
SCORE_BYTES_PER_CLASS = 2
EXPORT_BYTES_PER_INPUT_VOXEL = 20
# Resampling that makes this many times the input's voxels is taken for a spacing misread (50 mm
# slices for 5): an image resampled to a model's spacing rarely even doubles.
PLAUSIBLE_GROWTH = 4


def check_image(image: np.ndarray, geometry: ImageGeometry, channels: int, name: str,
                channel_files: Optional[Sequence[str]] = None) -> None:
    """image: (C, z, y, x). Raises `InputError` naming `name` (or, for a problem of one channel,
    that channel's entry of `channel_files`) for anything unusable."""
    if image.ndim != 4:
        raise InputError(f"{name}: expected a 3D volume per channel, got an array of shape {image.shape}")
    if image.shape[0] != channels:
        raise InputError(f"{name}: the model needs {channels} channel(s), the image has {image.shape[0]}")
    if tuple(image.shape[1:]) != geometry.shape_zyx:
        raise InputError(f"{name}: array shape {image.shape[1:]} does not match its geometry {geometry.shape_zyx}")
    _check_not_flat(geometry, name)
    if not np.issubdtype(image.dtype, np.number):
        raise InputError(f"{name}: has non-numeric voxels ({image.dtype})")
    if np.issubdtype(image.dtype, np.floating):
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        if bad:
            raise InputError(f"{name}: contains {bad} NaN/Inf voxel(s)")
    for channel in range(image.shape[0]):
        low, high = float(image[channel].min()), float(image[channel].max())
        if low == high:
            which = f"channel {channel}" if image.shape[0] > 1 else "the image"
            where = channel_files[channel] if channel_files else name
            raise InputError(f"{where}: {which} is constant (every voxel is {low:g}); there is nothing to segment")
    if any(s <= 0 or not np.isfinite(s) for s in geometry.spacing):
        raise InputError(f"{name}: invalid voxel spacing {geometry.spacing}")


def _check_not_flat(geometry: ImageGeometry, name: str) -> None:
    """A 2D image saved as a 3D file: said as such, before its spacing is judged (where it
    would read as "too few voxels" and send the user to check a spacing that is right)."""
    thin = [axis for axis, n in zip("zyx", geometry.shape_zyx) if n < 2]
    if thin:
        size = "x".join(str(n) for n in geometry.size)
        raise InputError(f"{name}: has a single voxel along {', '.join(thin)} (size {size}); "
                         "MaskSAM segments 3D volumes")


def intensity_warnings(image: np.ndarray, plan: Dict[str, Any], name: str,
                       channel_files: Optional[Sequence[str]] = None) -> List[str]:
    """Warnings for CT channels whose values cannot be Hounsfield units; image: (C, z, y, x).

    A CT model clips to the HU window of the structures it learnt; an image on another scale
    (a DICOM export that lost its rescale intercept: air at 0, organs near 1050; an MR or an
    8-bit picture given to a CT model) is then clipped almost whole and segmented as nonsense
    without any error. Such an image has nothing dark: no voxel below the darkest of the trained
    structures, nor below air's -500 HU where those reach lower. A CT cropped inside one organ
    would warn too, which is rare enough, and a warning, not a refusal.
    """
    warnings = []
    for channel, scheme in enumerate(plan.get("normalization", [])):
        if scheme.get("scheme") != "ct" or channel >= image.shape[0]:
            continue
        darkest = float(image[channel].min())
        if cannot_be_hounsfield(darkest, float(scheme["clip_low"])):
            where = channel_files[channel] if channel_files else name
            which = (f"the darkest voxel of channel {channel} ({scheme['channel']})" if image.shape[0] > 1
                     else "its darkest voxel")
            warnings.append(
                f"{where}: {which} is {darkest:g}, yet a CT in Hounsfield units holds air near "
                f"-1000 and the structures this model learnt reach down to {float(scheme['clip_low']):g}: the "
                f"image may not be in Hounsfield units ({NOT_HOUNSFIELD_CAUSES}); its labels may be meaningless")
    return warnings


def check_fits_host_memory(geometry: ImageGeometry, plan: Dict[str, Any], channels: int, name: str,
                           available: Optional[int], probabilities: bool = False, classes: int = 1) -> None:
    """Refuse, before any work, an image whose prediction would need more host memory than is
    `available` (bytes; None: unknown, no check): its resampling to the model's spacing and, with
    `probabilities` (--probabilities, a model of `classes` classes), their npz. A wrong spacing in a
    header (50 mm slices instead of 5) would otherwise make a huge volume, and a large CT's
    probabilities outgrow a small machine: minutes of work, then the out-of-memory killer. Also
    refused: an image that would shrink to a single voxel along an axis (a spacing given in
    micrometres, read as millimetres). Needs the header only, so `predict` checks every case of a
    folder with it before segmenting the first."""
    _check_not_flat(geometry, name)
    shape, spacing, target, new_shape = _network_grid(geometry, plan)
    becomes = (f"{name}: at the model's spacing ({by_x(target)} mm) this {by_x(shape)}-voxel image of spacing "
               f"{by_x(spacing)} mm becomes {by_x(new_shape)} voxels")
    if min(new_shape) < 2:
        raise InputError(f"{becomes}, too few to segment; check the voxel spacing (and its unit) in its header")
    if available is None:
        return
    # Python integers: a spacing of 1e30 mm in a damaged header must not overflow int64.
    voxels, network_voxels = math.prod(shape), math.prod(new_shape)
    preprocessing = HOST_COPIES_OF_RESAMPLED * 4 * channels * network_voxels
    export = (SCORE_BYTES_PER_CLASS * classes * network_voxels + EXPORT_BYTES_PER_INPUT_VOXEL * voxels
              if probabilities else 0)
    needed = max(preprocessing, export)   # the preprocessed image is gone before the npz is written
    if needed <= available:
        return
    memory = f"about {needed / 2 ** 30:.4g} GiB of memory ({available / 2 ** 30:.1f} GiB available)"
    if preprocessing <= available:
        raise InputError(f"{name}: writing its probabilities (--probabilities: {classes} classes of "
                         f"{by_x(shape)} voxels) needs {memory}; leave out --probabilities, free memory or use a "
                         "machine with more")
    if network_voxels > PLAUSIBLE_GROWTH * voxels:
        raise InputError(f"{becomes}, needing {memory}; check the voxel spacing in its header")
    # A plausible spacing: the image is simply large for this machine, and its header is not to blame.
    without = f" ({preprocessing / 2 ** 30:.4g} GiB without --probabilities)" if export > preprocessing else ""
    raise InputError(f"{name}: segmenting this {by_x(shape)}-voxel image needs {memory}{without}: free memory or "
                     "use a machine with more (--fast does not help: it saves time, not memory)")


def _network_grid(geometry: ImageGeometry, plan: Dict[str, Any]
                  ) -> Tuple[List[int], List[float], List[float], List[int]]:
    """(shape, spacing, the model's spacing, resampled shape) of the image, in the axis order
    preprocessing gives it (reoriented, then transposed)."""
    forward = list(plan["transpose_forward"])
    reorientation = plan_reorientation(plan, geometry)
    spacing_zyx, shape_zyx = reorientation.order(geometry.spacing_zyx), reorientation.order(geometry.shape_zyx)
    spacing = [spacing_zyx[a] for a in forward]
    shape = [shape_zyx[a] for a in forward]
    target = [float(t) for t in plan["target_spacing"]]
    return shape, spacing, target, list(resampled_shape(shape, spacing, target))
