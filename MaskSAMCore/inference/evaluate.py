"""`masksam evaluate PRED GT`: per-class (or per-region) Dice and HD95 (mm) of label maps, as JSON.

PRED and GT are two label-map files or two folders; in folders, files are paired by case name
(``CASE<ending>``, endings may differ). Either may be a 3D Slicer segmentation (``.seg.nrrd``, or
an NRRD whose header describes segments: a ground truth drawn in Slicer, or a prediction written
as one): its segments are matched to the dataset.json's labels by name
(`slicer_segmentation.label_of`), and one Slicer saved cropped to its segments is put back on the
other file's grid; two segmentations (two raters' files), each cropped to its own segments, are
scored on the union of their extents. Every prediction needs its ground truth; ground-truth files
without a prediction are listed under ``unmatched_ground_truth`` and not scored. The metric
conventions (empty structures, units) are in `metrics.py` and copied into the report.
Class names come from ``--dataset-json``, else from the dataset.json of the nnU-Net dataset GT
lies in (``DATASET/labelsTr``, ``labelsTs``), else they are ``label_<value>``.

Where that dataset.json names regions (nnU-Net v2 region datasets, e.g. BraTS:
``"whole tumor": [1, 2, 3], "tumor core": [2, 3]``), each region is scored instead of each value,
as nnU-Net does: the region's masks are the voxels of either map holding any of its values. Such
predictions were painted region by region with ``regions_class_order``; every painted value lies
in the regions it stands for, so the regions alone find them back and the order is not needed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from MaskSAMCore.atomic import write_json
from MaskSAMCore.data.dataset_json import IGNORE_LABEL, read_dataset_meta
from MaskSAMCore.data.regions import RegionError, is_region_dataset, read_regions
from MaskSAMCore.data.slicer_segmentation import is_slicer_segmentation, segmentations_on_one_grid
from MaskSAMCore.errors import DatasetError, InputError, describe_path, list_some
from MaskSAMCore.inference import metrics
from MaskSAMCore.inference.arguments import EvaluateArguments
from MaskSAMCore.inference.case_masks import (LabelMasks, Structure, grid_differences_text, read_label_masks,
                                              recorded_scan, steps_zyx)
from MaskSAMCore.inference.cases import split_label_ending
from MaskSAMCore.paths import check_output_file
from MaskSAMCore.progress import EVENT_DONE, Progress, emit, print_message, print_warning


CONVENTIONS = {
    "dice": "2|P&G|/(|P|+|G|); null when both are empty (left out of means); 0 when exactly one is empty",
    "hd95_mm": "max of the two directed 95th percentiles of surface-voxel distances, in mm with the "
               "image spacing; null when both are empty; the image diagonal in mm when exactly one is empty "
               "(two Slicer segmentations, each cropped to its segments: the diagonal of the scan they record "
               "as 'Reference image geometry', or where neither records it, of the union of their extents)",
    "means": "per class: mean over cases where the value is defined; mean_dice/mean_hd95_mm: mean over "
             "foreground classes of the per-class means; per case: mean over its defined classes; "
             "with a dataset.json, label values it does not declare (undeclared_labels) are scored "
             "but left out of every mean, and voxels of its 'ignore' label count for no class",
    "regions": "where dataset.json's labels name regions (lists of values), the classes are its regions "
               "(an entry with 'region' rather than 'label'): P and G are the voxels of each map holding "
               "any of the region's values, as in nnU-Net; regions overlap, so one voxel counts for several",
}



def pair_files(prediction: Path, truth: Path) -> Tuple[List[Tuple[str, Path, Path]], List[str]]:
    """[(case, prediction file, ground-truth file)] and the names of unmatched ground truths."""
    if not prediction.exists():
        raise InputError(f"{describe_path(prediction)}: no such file or folder")
    if not truth.exists():
        raise InputError(f"{describe_path(truth)}: no such file or folder")
    if prediction.is_file() and truth.is_file():
        return [(split_label_ending(prediction)[0], prediction, truth)], []
    if prediction.is_file() or truth.is_file():
        raise InputError(f"{describe_path(prediction)} and {describe_path(truth)}: give two files or two folders")
    predictions = _label_files(prediction)
    truths = _label_files(truth)
    if not predictions:
        raise InputError(f"{describe_path(prediction)}: no label maps found")
    missing = [name for name in predictions if name not in truths]
    if missing:
        raise InputError(f"{describe_path(predictions[missing[0]])}: no ground truth named {missing[0]}.* in "
                         f"{describe_path(truth)}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    pairs = [(name, predictions[name], truths[name]) for name in sorted(predictions)]
    return pairs, sorted(set(truths) - set(predictions))


def _label_files(folder: Path) -> Dict[str, Path]:
    """Case name -> label map: the image files in `folder`, or, when it holds none, in its
    subfolders at any depth, named by their path below it (``PAT1/ST1/series_3``: the tree
    `masksam predict --all-series` writes, paired with a ground truth laid out alike)."""
    found: Dict[str, Path] = {}
    files = [path for path in sorted(folder.iterdir()) if path.is_file()]
    if not any(split_label_ending(path)[1] and not path.name.startswith(".") for path in files):
        files = [path for path in sorted(folder.rglob("*")) if path.is_file()]
    for path in files:
        stem, ending = split_label_ending(path)
        below = path.parent.relative_to(folder).parts
        if not ending or any(part.startswith(".") for part in (*below, path.name)):
            continue
        name = "/".join((*below, stem))
        if name in found:  # e.g. case.nii.gz beside case.nrrd: which one is meant?
            raise InputError(f"{describe_path(folder)}: case {name} is there twice ({found[name].name} "
                             f"and {path.name}); keep one")
        found[name] = path
    return found


def dataset_json_beside(truth: Path) -> Optional[Path]:
    """The dataset.json of the nnU-Net dataset that `truth` (``DATASET/labelsTr`` or ``labelsTs``,
    or one file in them) belongs to, if it has a readable one with ``labels``; else None."""
    folder = truth if truth.is_dir() else truth.parent
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        try:
            if isinstance(read_dataset_meta(candidate).get("labels"), dict):
                return candidate
        except DatasetError:
            continue
    return None


def read_labels(dataset_json: Optional[Path]) -> Optional[Dict[str, Any]]:
    """dataset.json's ``labels`` (name -> value or region), read once per evaluation; None
    without a dataset.json. A file that cannot be read as JSON raises the reader's `DatasetError`."""
    if dataset_json is None:
        return None
    meta = read_dataset_meta(dataset_json)
    if "labels" not in meta:
        raise InputError(f"{describe_path(dataset_json)}: has no 'labels' (the label names and values, "
                         "as nnU-Net's dataset.json gives them)")
    try:
        labels = meta["labels"]
        if not isinstance(labels, dict):
            raise TypeError(f"'labels' is a {type(labels).__name__}, not an object")
        for value in labels.values():   # class values must be whole numbers (regions: lists)
            if not isinstance(value, (list, dict)):
                int(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{describe_path(dataset_json)}: cannot read its 'labels' ({exc})") from None
    return labels


def class_names_from(labels: Optional[Dict[str, Any]], values: Sequence[int]) -> Dict[int, str]:
    """Foreground label value -> name, from dataset.json's `labels` or the values seen."""
    if labels is None:
        return {int(v): f"label_{int(v)}" for v in sorted(values) if v > 0}
    names = {int(value): str(name) for name, value in labels.items()
             if not isinstance(value, (list, dict)) and name != IGNORE_LABEL}
    for value in values:
        names.setdefault(int(value), f"label_{int(value)}")
    return {value: name for value, name in sorted(names.items()) if value > 0}


def ignore_value(labels: Optional[Dict[str, Any]]) -> Optional[int]:
    """The value of nnU-Net's ``ignore`` label (voxels left unannotated), if `labels` has one."""
    value = (labels or {}).get(IGNORE_LABEL)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def declared_structures(labels: Optional[Dict[str, Any]], dataset_json: Optional[Path]) -> Dict[Structure, str]:
    """Values -> name of the structures dataset.json declares: its foreground classes, or, where
    its labels name regions, its regions ({} without a dataset.json)."""
    if labels is None:
        return {}
    if is_region_dataset(labels):
        return {values: name for name, values in region_values(labels, dataset_json).items()}
    return {(value,): name for value, name in class_names_from(labels, []).items()}


def region_values(labels: Dict[str, Any], dataset_json: Optional[Path]) -> Dict[str, Structure]:
    """Region name -> its label values (`regions.read_regions`); the order of painting
    (``regions_class_order``) is not needed to score regions."""
    try:
        return read_regions(labels)
    except RegionError as exc:
        raise InputError(f"{describe_path(dataset_json)}: {exc}") from None


def evaluate_case(prediction_file: Path, truth_file: Path, structures: Sequence[Structure],
                  ignore: Optional[int] = None,
                  names: Optional[Dict[str, Structure]] = None) -> Dict[str, Any]:
    """Dice and HD95 per structure for one pair of label maps on the same grid: for `structures`
    (a class or a region: the voxels holding any of its values) and for every other foreground
    value present in either map (as a structure of one). Voxels whose ground truth is `ignore`
    (nnU-Net's unannotated voxels) count for no structure, as in nnU-Net; `ignore` is no structure
    either where a prediction holds it (it then misses the truth's structure there). `names`
    (label name -> values): what a Slicer segmentation's segments are matched to. Also returns
    ``predicted_values``: the values the prediction holds (None for a Slicer segmentation)."""
    names = names or {}
    prediction_is_segmentation = is_slicer_segmentation(prediction_file)
    truth_is_segmentation = is_slicer_segmentation(truth_file)
    if prediction_is_segmentation and truth_is_segmentation:   # each perhaps cropped to its own segments
        actual, predicted = segmentations_on_one_grid(truth_file, prediction_file, names)
    elif prediction_is_segmentation:
        actual = read_label_masks(truth_file, names)
        predicted = read_label_masks(prediction_file, names, actual.grid)
    else:
        predicted = read_label_masks(prediction_file, names)
        actual = read_label_masks(truth_file, names, predicted.grid)
        if isinstance(predicted, LabelMasks):
            predicted = predicted.reordered_to(actual.grid, prediction_file)
    # Cropped to their segments, two segmentations do not cover the scan: the penalty for a
    # structure only one holds is the diagonal of the scan they record, where they record it.
    reference = recorded_scan(actual, predicted) if prediction_is_segmentation and truth_is_segmentation else None
    diagonal = metrics.grid_diagonal_mm(reference.shape_zyx, steps_zyx(reference)) if reference else None
    predicted_grid, actual_grid = predicted.grid, actual.grid
    differences = predicted_grid.grid_differences(actual_grid)
    if differences:
        how = grid_differences_text(predicted_grid, actual_grid, differences)
        raise InputError(f"{describe_path(prediction_file)}: its {', '.join(differences)} differ(s) from the ground "
                         f"truth {describe_path(truth_file)} ({how})")
    # Without an ignore label every voxel counts, and no mask need be narrowed to the annotated ones.
    annotated = ~actual.mask((ignore,)) if ignore is not None else None
    held = predicted.values(annotated)
    present = held | actual.values(annotated)
    spacing = actual_grid.spacing_zyx
    steps = steps_zyx(actual_grid)   # a sheared grid's HD95 is measured in space
    covered = {value for structure in structures for value in structure}
    others = [(int(value),) for value in sorted(present - covered - {0, ignore})]
    dice, hd95, relabelled = {}, {}, set()
    for structure in [*structures, *others]:
        p, g = predicted.mask(structure), actual.mask(structure)
        if annotated is not None:
            p &= annotated
            g &= annotated
        dice[structure] = metrics.dice(p, g)
        hd95[structure] = metrics.hausdorff95(p, g, spacing, steps, diagonal)
        if isinstance(predicted, LabelMasks) and len(structure) == 1 and structure[0] not in held:
            # Found but painted with another value (as a region model paints a region), not missed.
            if 2 * np.count_nonzero(predicted.labels[g]) > np.count_nonzero(g) > 0:
                relabelled.add(structure[0])
    return {"dice": dice, "hd95_mm": hd95, "predicted_values": held if isinstance(predicted, LabelMasks) else None,
            "relabelled_values": relabelled}


def never_predicted(results: Sequence[Dict[str, Any]]) -> List[int]:
    """The foreground values of the cases' structures that no prediction holds (label maps only).
    Scored by value without a dataset.json, a region model's prediction, which paints each region
    with one value (1, 3, 5 for regions of 1-4, 3-4 and 5), never holds the others (2, 4): they
    get Dice 0 in every case, which reads as a failed model rather than a missing option."""
    if not results or any(result["predicted_values"] is None for result in results):
        return []
    held = {value for result in results for value in result["predicted_values"]}
    scored = {structure for result in results for structure in result["dice"]}
    return sorted(structure[0] for structure in scored if len(structure) == 1 and structure[0] not in held)


def _undeclared_name(value: int, taken: set) -> str:
    """``label_<value>`` for a value dataset.json does not name, or, where it names a class so
    (``"label_9": 2``), ``label_<value> (undeclared)``: one name must not stand for two structures."""
    name = f"label_{value}"
    if name not in taken:
        return name
    name, number = f"{name} (undeclared)", 1
    while name in taken:
        number += 1
        name = f"label_{value} (undeclared {number})"
    return name


def _mean(values) -> Optional[float]:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def evaluate(prediction: Path, truth: Path, dataset_json: Optional[Path] = None,
             show_progress: bool = True) -> dict:
    """The full report (see module docstring) as a JSON-able dict."""
    pairs, unmatched = pair_files(Path(prediction), Path(truth))
    labels = read_labels(dataset_json)
    declared = declared_structures(labels, dataset_json)
    regions = labels is not None and is_region_dataset(labels)
    ignore = ignore_value(labels)
    # What a Slicer segmentation's segments are matched to: the structures, and the ignore label.
    names = {**{name: structure for structure, name in declared.items()},
             **({IGNORE_LABEL: (ignore,)} if ignore is not None else {})}
    bar = Progress("evaluate", total=len(pairs), unit="cases", enabled=show_progress)
    results = []
    for name, prediction_file, truth_file in pairs:
        results.append((name, prediction_file, truth_file,
                        evaluate_case(prediction_file, truth_file, list(declared), ignore, names)))
        bar.advance()
    bar.close()
    missing = never_predicted([result for *_, result in results]) if labels is None else []
    if missing:
        # The region hint only where the predictions hold other values on those voxels: a structure
        # a model simply missed is no sign of a region model.
        region_like = any(set(missing) & result["relabelled_values"] for *_, result in results)
        print_warning(f"label value(s) {list_some(missing, shown=5)} of the ground truth are in no prediction "
                      "(Dice 0)" + ("; the predictions hold other values on their voxels, as a region model's "
                                    "do (one value painted per region): without a dataset.json every value is "
                                    "scored as a class of its own - give --dataset-json (the model folder's "
                                    "dataset.json) to score its regions" if region_like else ""))
    seen = {structure for *_, result in results for structure in result["dice"]}
    names = dict(declared)
    for structure in sorted(seen):
        if structure not in declared:
            names[structure] = _undeclared_name(structure[0], set(names.values()))
    if not regions:   # classes by value; regions in dataset.json's order, then the values it lacks
        names = dict(sorted(names.items()))
    # With a dataset.json, a value it does not declare (another label convention, a wrong model)
    # is scored and shown, but kept out of every mean: the means are over the dataset's classes.
    undeclared = [structure for structure in names if labels is not None and structure not in declared]
    scored = [names[structure] for structure in names if structure not in undeclared]
    cases = []
    for name, prediction_file, truth_file, result in results:
        # A class absent from both maps of a case is "both empty": undefined, as in metrics.py.
        dice = {names[v]: result["dice"].get(v) for v in names}
        hd95 = {names[v]: result["hd95_mm"].get(v) for v in names}
        cases.append({
            "case": name, "prediction": str(prediction_file), "ground_truth": str(truth_file),
            "dice": dice, "hd95_mm": hd95,
            "mean_dice": _mean(dice[c] for c in scored), "mean_hd95_mm": _mean(hd95[c] for c in scored),
        })
    per_class = {}
    for structure, class_name in names.items():
        per_class[class_name] = {
            **({"region": list(structure)} if regions and structure in declared else {"label": structure[0]}),
            "dice": _mean(c["dice"][class_name] for c in cases),
            "hd95_mm": _mean(c["hd95_mm"][class_name] for c in cases),
            "cases_defined": sum(c["dice"][class_name] is not None for c in cases),
        }
    return {
        "mean_dice": _mean(per_class[c]["dice"] for c in scored),
        "mean_hd95_mm": _mean(per_class[c]["hd95_mm"] for c in scored),
        "per_class": per_class,
        "undeclared_labels": {
            str(s[0]): [name for name, *_, result in results
                        if result["dice"].get(s) is not None or result["hd95_mm"].get(s) is not None]
            for s in undeclared},
        "cases": cases,
        "unmatched_ground_truth": unmatched,
        "conventions": CONVENTIONS,
    }


def run_evaluate(args: EvaluateArguments) -> int:
    """CLI entry: print a short table on stderr, the JSON report on stdout (and to --output)."""
    args.check_values()
    dataset_json = Path(args.dataset_json) if args.dataset_json else dataset_json_beside(Path(args.ground_truth))
    if args.dataset_json and dataset_json.is_dir():
        inside = dataset_json / "dataset.json"
        hint = f"; give {describe_path(inside)}" if inside.is_file() else ""
        raise InputError(f"{describe_path(dataset_json)}: --dataset-json is a folder, not a dataset.json{hint}")
    if args.dataset_json and not dataset_json.is_file():
        raise InputError(f"{describe_path(dataset_json)}: --dataset-json file not found")
    if dataset_json is not None and not args.dataset_json:
        print(f"{'regions' if is_region_dataset(read_labels(dataset_json) or {}) else 'class names'} "
              f"from {describe_path(dataset_json)}", file=sys.stderr)
    if args.output:
        inputs = [*_files(Path(args.prediction)), *_files(Path(args.ground_truth)), dataset_json]
        check_output_file(args.output, [path for path in inputs if path is not None], what="report")
    report = evaluate(Path(args.prediction), Path(args.ground_truth), dataset_json)
    for class_name, entry in report["per_class"].items():
        print(f"{class_name:>20s}  Dice {_fmt(entry['dice'])}  HD95 {_fmt(entry['hd95_mm'])} mm", file=sys.stderr)
    print(f"{'mean':>20s}  Dice {_fmt(report['mean_dice'])}  HD95 {_fmt(report['mean_hd95_mm'])} mm "
          f"over {len(report['cases'])} case(s)", file=sys.stderr)
    for value, case_names in report["undeclared_labels"].items():
        shown = next(name for name, entry in report["per_class"].items() if entry.get("label") == int(value))
        print_warning(f"label {value} is not in {describe_path(dataset_json)} but is in {len(case_names)} "
                      f"case(s) ({list_some(case_names)}); it is shown as {shown} and left out of the means")
    unmatched = report["unmatched_ground_truth"]
    if unmatched:
        # The means above leave these cases out; say so where the user reads them, not only in the JSON.
        shown = ", ".join(unmatched[:10]) + (f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else "")
        print_message(f"{len(unmatched)} ground-truth case(s) have no prediction and were not scored: {shown}")
    if args.output:
        write_json(args.output, report)
    print(json.dumps(report, indent=2))
    emit(EVENT_DONE, mean_dice=report["mean_dice"], mean_hd95_mm=report["mean_hd95_mm"], cases=len(report["cases"]))
    return 0


def _files(path: Path) -> List[Path]:
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def _fmt(value: Optional[float]) -> str:
    return "  n/a" if value is None else f"{value:.4f}"
