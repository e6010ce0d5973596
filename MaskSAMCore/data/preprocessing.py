"""From an image on its own grid to the network's grid, and from predictions back again.

Forward (`preprocess_case`), for an image (C, z, y, x) with its `ImageGeometry` and a plan:

0. with ``plan["reorient_to_lps"]`` (plans made since it exists): bring the array to LPS voxel
   order (`MaskSAMCore.data.orientation.lps_reorientation`: array axes z, y, x become the voxel
   axes closest to the patient's superior, posterior and left, each pointing that way), by
   transposing and reversing axes only. The network works in voxel order: otherwise a case
   stored with an axis reversed (a left-handed grid, RAS storage) would reach it mirrored (the
   liver on the left, left and right structures swapped), and one stored in another axis order
   (sagittally, coronally) turned;
1. crop to the bounding box of voxels that are non-zero in any channel;
2. transpose so that the plan's slice axis becomes axis 0 (``plan["transpose_forward"]``);
3. resample to ``plan["target_spacing"]``: images cubic, linear along an anisotropic slice axis;
   labels as one-hot masks (linear, nearest along an anisotropic slice axis) + argmax;
4. normalise each channel (`MaskSAMCore.data.normalization`).

The returned ``properties`` (JSON-able) record every step, so that `restore_label_map` and
`restore_scores_argmax` put a prediction back on exactly the original grid: resample to the
cropped shape, transpose back, paste into the full extent (background outside the crop), undo
the reorientation. The original geometry is kept in ``properties["original_geometry"]`` for
writing the result.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from MaskSAMCore.data.cropping import bbox_shape, bbox_slices, nonzero_bbox, paste_into
from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.normalization import image_statistics, normalize_channel
from MaskSAMCore.data.orientation import plan_reorientation, undo_reorientation
from MaskSAMCore.data.resampling import (argmax_of_resampled, coarsest_axis, image_orders, is_anisotropic,
                                         resample_array, resample_labels, resampled_shape)

# Bump when the output of preprocessing changes for the same plan (invalidates cached cases).
PREPROCESSING_VERSION = 1
# Plan keys that change preprocessed arrays; their hash marks a cached case as up to date.
_PLAN_KEYS_FOR_HASH = ("target_spacing", "transpose_forward", "anisotropic", "crop_to_nonzero",
                       "image_resampling", "label_resampling", "normalization")


def plan_hash(plan: Dict[str, Any]) -> str:
    """A short hash of everything in `plan` that changes preprocessed arrays."""
    relevant = {key: plan.get(key) for key in _PLAN_KEYS_FOR_HASH}
    if plan.get("reorient_to_lps"):   # only then: the cached cases of plans made before it stay valid
        relevant["reorient_to_lps"] = True
    if plan.get("ignore_label") is not None:   # foreground locations leave unannotated voxels out
        relevant["ignore_label"] = plan["ignore_label"]
    if plan.get("regions"):   # label values become classes
        relevant["regions"] = plan["regions"]
    relevant["preprocessing_version"] = PREPROCESSING_VERSION
    text = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def preprocess_case(image: np.ndarray, geometry: ImageGeometry, plan: Dict[str, Any],
                    label: Optional[np.ndarray] = None
                    ) -> Tuple[np.ndarray, Optional[np.ndarray], Dict[str, Any]]:
    """Bring one case to the network's grid.

    image: (C, z, y, x) float, on `geometry`; label: (z, y, x) integer or None.
    Returns (data (C, T', H', W') float32, seg (T', H', W') int16 or None, properties)."""
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"expected an image (C, z, y, x), got shape {image.shape}")
    if tuple(image.shape[1:]) != geometry.shape_zyx:
        raise ValueError(f"image shape {image.shape[1:]} does not match its geometry {geometry.shape_zyx}")
    if label is not None and tuple(np.shape(label)) != tuple(image.shape[1:]):
        raise ValueError(f"label shape {np.shape(label)} differs from image shape {image.shape[1:]}")
    channels = image.shape[0]
    if len(plan["normalization"]) != channels:
        raise ValueError(f"the plan normalises {len(plan['normalization'])} channel(s), the image has {channels}")

    reorientation = plan_reorientation(plan, geometry)
    image = reorientation.apply(image)   # views: nothing is copied here
    label = None if label is None else reorientation.apply(np.asarray(label))
    spacing_zyx = reorientation.order(geometry.spacing_zyx)   # of the reoriented array

    box = nonzero_bbox(image) if plan.get("crop_to_nonzero", True) else [[0, n] for n in image.shape[1:]]
    cropped = image[(slice(None),) + bbox_slices(box)]
    forward = list(plan["transpose_forward"])
    transposed = np.transpose(cropped, [0] + [a + 1 for a in forward])
    spacing = [spacing_zyx[a] for a in forward]
    target = plan["target_spacing"]
    new_shape = resampled_shape(transposed.shape[1:], spacing, target)
    separate_z = bool(plan["anisotropic"]) or (is_anisotropic(spacing) and coarsest_axis(spacing) == 0)
    nonzero = np.any(transposed != 0, axis=0)
    needs_mask = any(s.get("use_nonzero_mask") for s in plan["normalization"])
    resampled_mask = None
    if needs_mask:
        resampled_mask = resample_labels(nonzero, new_shape, separate_z, classes=(0, 1)).astype(bool)

    data = np.empty((channels,) + tuple(new_shape), dtype=np.float32)
    stats = []
    resampling = plan.get("image_resampling", {})
    orders = image_orders(separate_z, int(resampling.get("order", 3)), int(resampling.get("order_z", 1)))
    for c in range(channels):
        scheme = plan["normalization"][c]
        mean, std = image_statistics(transposed[c], scheme, nonzero)
        stats.append({"mean": mean, "std": std})
        data[c] = normalize_channel(resample_array(transposed[c], new_shape, orders), scheme, mean, std,
                                    resampled_mask)

    seg = None
    if label is not None:
        label_t = np.transpose(np.asarray(label)[bbox_slices(box)], forward)
        seg = resample_labels(label_t, new_shape, separate_z)

    properties = {
        "original_geometry": geometry.to_dict(),
        "reorientation": reorientation.to_dict(),
        "shape_before_cropping": [int(n) for n in image.shape[1:]],
        "bbox": [[int(a), int(b)] for a, b in box],
        "shape_after_cropping": list(bbox_shape(box)),
        "transpose_forward": forward,
        "transpose_backward": [int(i) for i in np.argsort(forward)],
        "shape_after_transpose": [int(n) for n in transposed.shape[1:]],
        "spacing_after_transpose": [float(s) for s in spacing],
        "target_spacing": [float(s) for s in target],
        "shape_after_resampling": [int(n) for n in new_shape],
        "separate_z": separate_z,
        "normalization_stats": stats,
    }
    if seg is not None:
        properties["classes_present"] = [int(v) for v in np.unique(seg)]
    return data, seg, properties


def restore_label_map(labels: Any, properties: Dict[str, Any], plan: Dict[str, Any]) -> np.ndarray:
    """A label map on the network's grid (T', H', W') back on the original grid (z, y, x):
    uint8 when the values fit, else int16; background (0) outside the crop."""
    labels = _to_numpy(labels)
    _check_network_shape(labels.shape, properties)
    cropped_t = resample_labels(labels, properties["shape_after_transpose"], bool(properties["separate_z"]))
    return _back_to_original(cropped_t, properties, plan)


def restore_scores_argmax(scores: Any, properties: Dict[str, Any], plan: Dict[str, Any]) -> np.ndarray:
    """Class scores (K, T', H', W') (logits or probabilities, NumPy or torch) to the label map
    on the original grid (z, y, x): each class's score is resampled linearly to the cropped
    shape and a running maximum picks the winner, so memory holds about two cropped-size
    arrays, never K of them."""
    if len(np.shape(scores)) != 4:
        raise ValueError(f"expected scores (K, T, H, W), got shape {tuple(np.shape(scores))}")
    _check_network_shape(tuple(np.shape(scores))[1:], properties)
    target = properties["shape_after_transpose"]
    scored = ((_to_numpy(scores[k]).astype(np.float32, copy=False), k) for k in range(np.shape(scores)[0]))
    cropped_t = argmax_of_resampled(scored, target, (1, 1, 1))
    return _back_to_original(cropped_t, properties, plan)


# -- helpers ---------------------------------------------------------------------------------------

def to_original_grid(cropped_t: np.ndarray, properties: Dict[str, Any], fill: float = 0,
                     transpose_backward: Optional[Sequence[int]] = None) -> np.ndarray:
    """An array on the cropped, transposed grid (T', H', W') at the input's spacing -> the input's
    own grid (z, y, x): transpose back, paste into the full extent (`fill` outside the crop), undo
    the reorientation to LPS voxel order. Every way back (labels, the restoring sink,
    probabilities) ends here, so none can miss a step."""
    backward = properties["transpose_backward"] if transpose_backward is None else transpose_backward
    cropped = np.transpose(cropped_t, backward)
    full = paste_into(cropped, properties["bbox"], properties["shape_before_cropping"], fill=fill)
    return undo_reorientation(full, properties)


def _back_to_original(cropped_t: np.ndarray, properties: Dict[str, Any], plan: Dict[str, Any]) -> np.ndarray:
    out_dtype = np.uint8 if cropped_t.size == 0 or (cropped_t.min() >= 0 and cropped_t.max() <= 255) else np.int16
    return to_original_grid(cropped_t.astype(out_dtype), properties,
                            transpose_backward=properties.get("transpose_backward", plan.get("transpose_backward")))


def _check_network_shape(shape: Tuple[int, ...], properties: Dict[str, Any]) -> None:
    expected = tuple(properties["shape_after_resampling"])
    if tuple(shape) != expected:
        raise ValueError(f"prediction shape {tuple(shape)} does not match the preprocessed shape {expected}")


def _to_numpy(array: Any) -> np.ndarray:
    """NumPy view of a NumPy array or a torch tensor (on any device)."""
    if hasattr(array, "detach"):
        array = array.detach()
        half = str(array.dtype) in ("torch.float16", "torch.bfloat16")
        if getattr(array, "is_floating_point", lambda: False)() and half:
            array = array.float()
        array = array.cpu().numpy()
    return np.asarray(array)
