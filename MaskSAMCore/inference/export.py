"""Writing a prediction back on the input's grid: the label map, and optionally probabilities.

The label map is written with `write_label` (atomic; exact size, spacing, origin, direction of
the input); with probabilities, inside the npz's own atomic write, so the pair appears together.
Probabilities (`--probabilities`) go to ``CASE_probabilities.npz`` beside it:

- ``probabilities``: (K, z, y, x) float16 on the input's own grid (array order as SimpleITK's
  ``GetArrayFromImage``), channel k = the model's class k, summing to 1 over k at every voxel. They are
  the network's class scores (sum over queries of softmax(class) x sigmoid(mask), averaged over
  windows and flips), resampled to the input's grid exactly as for the label map and then divided
  by their sum over classes, so at every voxel the label map's class has the highest probability
  up to float16 rounding: the label map is the argmax of the float32 scores (the one a run without
  probabilities writes, `sinks.ScoresAndLabelsSink`), while these come from the scores kept on the
  host in float16, so where two classes lie within that rounding of each other ``argmax`` of the
  probabilities may name the other one (or a lower class, the two being equal). Outside
  the cropped non-zero region, and where no class has any score, the background has probability 1.
- ``class_names`` (K,); ``label_values`` (K,): the value the label map holds where channel k's
  class wins - k itself for a class model; for a region model (`data/regions.py`) the value of the
  last region the class belongs to, as predictions are painted (so channel k is not label value k);
- for a region model only, ``regions``: a JSON text (``json.loads(str(npz["regions"]))``) naming
  each region's ``channels`` (its probability is their sum, regions being unions of classes),
  its ``label_values`` in dataset.json (the label map's voxels holding any of them are the region)
  and the value it is ``written_as`` (``regions_class_order``);
- the grid in ITK order: ``size``, ``spacing``, ``origin``, ``direction``.

The npz is written one class at a time straight into the zip member, so memory holds one class
on the original grid at a time, not K of them.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from MaskSAMCore.atomic import atomic_path
from MaskSAMCore.data.image_io import ImageGeometry
from MaskSAMCore.data.image_writing import write_label
from MaskSAMCore.data.nifti_transforms import keeps_own_placement
from MaskSAMCore.data.preprocessing import to_original_grid
from MaskSAMCore.data.regions import RegionScheme
from MaskSAMCore.data.resampling import resample_array
from MaskSAMCore.inference.cases import split_output_ending


def probabilities_path(label_path: "os.PathLike[str] | str") -> Path:
    """``out/case_probabilities.npz`` for ``out/case.nii.gz`` (or a DICOM SEG ``out/case.dcm``)."""
    label_path = Path(label_path)
    stem, _ = split_output_ending(label_path)
    return label_path.with_name(f"{stem}_probabilities.npz")


def remove_stale_probabilities(label_path: "os.PathLike[str] | str") -> Optional[Path]:
    """Remove the probabilities file beside a label map just written without probabilities: it
    belongs to the label map of an earlier run, and a label map must never stand beside the
    probabilities of another run (`--continue --probabilities` would take the pair as finished).
    Returns the path removed, or None."""
    path = probabilities_path(label_path)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def write_labels(labels: np.ndarray, geometry: ImageGeometry, path: "os.PathLike[str] | str",
                 source: "Optional[os.PathLike[str] | str]" = None) -> None:
    """Write labels (z, y, x) on `geometry` atomically; the shapes must agree exactly. `source`:
    the image segmented; when it is a NIfTI file placed otherwise than by ITK's reading alone
    (qform and sform disagree, the sform's voxel size is not pixdim's, or neither is set), a
    NIfTI label map gets its placement fields, so every program overlays the two."""
    if tuple(labels.shape) != geometry.shape_zyx:
        raise ValueError(f"label map shape {labels.shape} is not the input's {geometry.shape_zyx}")
    own = source is not None and keeps_own_placement(source, geometry)
    write_label(labels, geometry, path, placement_from=source if own else None)


def _class_on_original_grid(score: np.ndarray, total: np.ndarray, background: bool,
                            properties: Dict[str, Any]) -> np.ndarray:
    """One class's score (T', H', W') and the resampled total over classes (the cropped,
    transposed grid, ``shape_after_transpose``) -> its probability (z, y, x) float16 on the
    original grid."""
    # Resample first, normalise second: the label map is the argmax of the resampled scores
    # (`restore_scores_argmax`, the same linear resampling), and dividing every class by the same
    # total keeps that argmax. Normalising on the network grid first would weight each network
    # voxel by its own total, and where that total varies the argmax moves away from the labels.
    resampled = resample_array(score, properties["shape_after_transpose"], (1, 1, 1))
    # No score at all (every class underflowed to 0 in float16): the label map says background.
    nothing = np.full_like(total, 1.0 if background else 0.0)
    cropped_t = np.divide(resampled, total, out=nothing, where=total > 0)
    return to_original_grid(np.clip(cropped_t, 0.0, 1.0).astype(np.float16), properties,
                            fill=1.0 if background else 0.0)


def channel_description(class_names: Sequence[str], regions: Optional[RegionScheme]) -> Dict[str, np.ndarray]:
    """The npz entries saying what the K channels are: ``class_names``, ``label_values`` and, for
    a region model, ``regions`` (see the module docstring), so that the file is read without the
    model folder, and a region model's channel is never taken for a label value."""
    described = {"class_names": np.asarray(list(class_names), dtype=str),
                 "label_values": (np.arange(len(class_names)) if regions is None else regions.output_lookup())}
    if regions is not None:
        channels = regions.region_classes
        described["regions"] = np.asarray(json.dumps({
            name: {"channels": channels[name], "label_values": list(values), "written_as": written}
            for (name, values), written in zip(regions.regions.items(), regions.class_order)}))
    return described


def write_probabilities(scores: np.ndarray, properties: Dict[str, Any], class_names: Sequence[str],
                        path: "os.PathLike[str] | str",
                        then: Optional[Callable[[], None]] = None,
                        regions: Optional[RegionScheme] = None) -> None:
    """Write the npz described in the module docstring from scores (K, T', H', W') on the
    network grid (float16 or float32), atomically.

    `then` runs once the npz is complete but before it is renamed into place (the label map is
    written there): an error or a cancel at any earlier moment leaves neither new file, and a
    label map never stands beside the probabilities of another run. `regions`: a region model's
    scheme, described in the file (`channel_description`).
    """
    geometry = ImageGeometry.from_dict(properties["original_geometry"])
    classes = scores.shape[0]
    total = np.zeros(scores.shape[1:], dtype=np.float32)
    for k in range(classes):
        total += scores[k]
    # Resampling is linear, so the resampled total is the sum of the resampled class scores.
    total = resample_array(total, properties["shape_after_transpose"], (1, 1, 1))
    shape = (classes, *geometry.shape_zyx)
    with atomic_path(path) as temporary:
        # Level 1: 200 x 256 x 256 voxels of 16 classes took 15-28 s for a file 22-32% smaller than
        # stored (6-11 s); level 6 took 1.6 times as long for 1-3% less (README, --probabilities).
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                             allowZip64=True) as archive:
            with archive.open("probabilities.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                          "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(member, header)
                for k in range(classes):
                    member.write(np.ascontiguousarray(
                        _class_on_original_grid(scores[k], total, k == 0, properties)).tobytes())
            extras = {
                **channel_description(class_names, regions),
                "size": np.asarray(geometry.size), "spacing": np.asarray(geometry.spacing),
                "origin": np.asarray(geometry.origin), "direction": np.asarray(geometry.direction),
            }
            for name, value in extras.items():
                with archive.open(f"{name}.npy", "w") as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)
        if then is not None:
            then()
            # The npz was closed before the label map was written: date it after the label map, so
            # that `--continue` tells a pair written together (npz not older) from a label map a
            # later run replaced beside it (`run.split_finished`).
            os.utime(temporary)
