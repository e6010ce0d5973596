"""Region labels (nnU-Net v2's region-based datasets, e.g. BraTS): read, and turned into classes.

A region dataset names overlapping regions rather than single label values::

    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
    "regions_class_order": [1, 2, 3]

and its predictions are label maps in which each region, in that order, is painted with its
value from ``regions_class_order`` (a later region over an earlier one), as nnU-Net writes them.

MaskSAM predicts one class per voxel (the paper's semantic output: the argmax over classes of the
query scores), so regions are not predicted as such. The label values are grouped by the set of
regions they belong to; each group is one class ("label 2 (whole tumor, tumor core)"). The
classes never overlap and every region is exactly a union of classes, so training sees the same
masks the regions are made of, and a predicted class map gives every region back. The paper is
silent on overlapping labels; nnU-Net instead trains one sigmoid per region, which MaskSAM's
softmax over classes cannot express without changing the method.

Three value spaces meet here:
- *raw*: the values in the dataset's label maps (0, the region values, ``ignore``);
- *class*: the network's classes 0..K-1 (0 = background), and K for unannotated voxels;
- *output*: the values of a written prediction (0 and ``regions_class_order``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

REGION_ORDER_KEY = "regions_class_order"


class RegionError(ValueError):
    """A region definition that cannot be used (the message names the field)."""


@dataclass(frozen=True)
class RegionScheme:
    """Regions of a dataset and the classes the network predicts for them."""

    regions: Dict[str, Tuple[int, ...]]   # region name -> raw label values, in dataset.json order
    class_order: Tuple[int, ...]           # output value of each region (regions_class_order)
    classes: Dict[str, Tuple[int, ...]]   # class name -> raw label values, background first
    ignore_value: Optional[int] = None     # raw value of unannotated voxels, or None

    @property
    def class_labels(self) -> Dict[str, int]:
        """Class name -> class index (the network's labels)."""
        return {name: index for index, name in enumerate(self.classes)}

    @property
    def output_labels(self) -> Dict[str, int]:
        """Name -> value of a written prediction: background and each region's order value."""
        return {"background": 0, **dict(zip(self.regions, self.class_order))}

    @property
    def region_classes(self) -> Dict[str, List[int]]:
        """Region name -> the indices of the classes it is the union of."""
        return {name: [index for index, values in enumerate(self.classes.values()) if values[0] in region]
                for name, region in self.regions.items()}

    def class_lookup(self) -> np.ndarray:
        """raw value -> class index (int16), with ``ignore`` -> K (the number of classes)."""
        highest = max([v for values in self.regions.values() for v in values] + [self.ignore_value or 0])
        lookup = np.zeros(highest + 1, dtype=np.int16)
        for index, values in enumerate(self.classes.values()):
            lookup[list(values)] = index
        if self.ignore_value is not None:
            lookup[self.ignore_value] = len(self.classes)
        return lookup

    def output_lookup(self) -> np.ndarray:
        """class index -> output value: each class takes the value of the last region (in
        regions_class_order) it belongs to, as nnU-Net's painting of regions leaves it."""
        values = []
        for class_values in self.classes.values():
            value = 0
            for region_values, order_value in zip(self.regions.values(), self.class_order):
                if class_values[0] in region_values:
                    value = order_value
            values.append(value)
        return np.asarray(values, dtype=np.int32)

    def to_classes(self, raw: np.ndarray) -> np.ndarray:
        """A raw label map (any shape) as class indices (int16). Values outside the scheme
        must have been refused before (the dataset check names them)."""
        raw = np.asarray(raw)
        lookup = self.class_lookup()
        if raw.size and (raw.min() < 0 or raw.max() >= len(lookup)):
            raise RegionError(f"label values {int(raw.min())}..{int(raw.max())} lie outside the regions")
        return lookup[raw]

    def to_output(self, classes: np.ndarray) -> np.ndarray:
        """A predicted class map as the label map nnU-Net would write (smallest fitting dtype)."""
        lookup = self.output_lookup()
        dtype = np.uint8 if lookup.max() < 256 else np.int16
        return lookup.astype(dtype)[np.asarray(classes)]

    def region_mask(self, labels: np.ndarray, region: str) -> np.ndarray:
        """Where `labels` (raw or output values) lie in `region`."""
        return np.isin(labels, self.regions[region])

    def to_dict(self) -> Dict[str, Any]:
        return {"regions": {name: list(values) for name, values in self.regions.items()},
                REGION_ORDER_KEY: list(self.class_order),
                "classes": {name: list(values) for name, values in self.classes.items()},
                "ignore_value": self.ignore_value}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RegionScheme":
        """The inverse of `to_dict` (model.json, plans); raises RegionError when damaged."""
        try:
            scheme = region_scheme({"background": 0, **data["regions"],
                                    **({"ignore": data["ignore_value"]} if data.get("ignore_value") is not None
                                       else {})},
                                   data[REGION_ORDER_KEY])
        except (KeyError, TypeError, AttributeError) as exc:
            raise RegionError(f"damaged region description ({exc})") from None
        try:
            recorded = {name: tuple(values) for name, values in dict(data["classes"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise RegionError(f"damaged region description (classes: {exc})") from None
        if scheme.classes != recorded:
            raise RegionError("its classes do not follow from its regions")
        return scheme


def model_regions(data: Any, labels: Dict[str, int]) -> Optional[RegionScheme]:
    """The regions recorded in a model.json (its ``regions``, or None for other models), checked
    against its ``labels``, which must be the regions' classes. Raises RegionError."""
    if not data:
        return None
    scheme = RegionScheme.from_dict(data)
    if scheme.class_labels != labels:
        raise RegionError("its labels are not the classes of its regions")
    return scheme


def is_region_dataset(labels: Dict[str, Any]) -> bool:
    """Whether dataset.json's `labels` name regions (lists of values) rather than single values."""
    return any(isinstance(value, (list, tuple)) for name, value in labels.items() if name != "ignore")


def region_scheme(labels: Dict[str, Any], class_order: Any) -> RegionScheme:
    """The scheme of dataset.json's `labels` and ``regions_class_order``, checked as nnU-Net does
    (background 0; every other label a region, see `read_regions`; the ``ignore`` value above
    every region value) plus: every order value a positive whole number. Raises RegionError
    naming the field."""
    if labels.get("background") != 0:
        raise RegionError(f"labels must name value 0 'background' (got background = {labels.get('background')!r})")
    regions = read_regions(labels)
    ignore = labels.get("ignore")
    if ignore is not None:
        highest = max(v for values in regions.values() for v in values)
        if not _whole(ignore) or ignore <= highest:
            raise RegionError(f"label 'ignore' (unannotated voxels) must be a whole number above every region "
                              f"value ({highest}), not {ignore!r}")
    _check_nested(regions)
    order = _checked_order(class_order, len(regions), ignore)
    scheme = RegionScheme(regions=regions, class_order=order, classes=_classes(regions), ignore_value=ignore)
    _check_read_back(scheme)
    return scheme


def _check_nested(regions: Dict[str, Tuple[int, ...]]) -> None:
    """Refuse two regions that share values without one containing the other ({1, 2} and
    {2, 3}): a prediction paints one value per voxel, and a voxel of value 2 would need a value
    lying in both regions while one of value 3 needs one in the second only - the second region's
    single order value cannot be both, whatever ``regions_class_order`` says. No order can help,
    so the message says what is supported instead of advising another order."""
    names = list(regions)
    for index, first in enumerate(names):
        for second in names[index + 1:]:
            a, b = set(regions[first]), set(regions[second])
            if a & b and not (a <= b or b <= a):
                raise RegionError(f"regions '{first}' {list(regions[first])} and '{second}' {list(regions[second])} "
                                  "overlap without one containing the other; only nested regions (as BraTS's "
                                  "whole tumor, tumor core, enhancing tumor) or disjoint ones are supported")


def _check_read_back(scheme: RegionScheme) -> None:
    """Refuse an order whose painted label maps do not give the regions back: a region is read
    from a prediction as the voxels holding any of its values (nnU-Net's evaluation, `masksam
    evaluate`, Slicer's segments), so each class's painted value must lie in exactly the regions
    the class belongs to. BraTS's [1, 2, 3] does; [3, 2, 1] would paint "whole tumor only"
    voxels 3, an "enhancing tumor" value."""
    painted = scheme.output_lookup()
    for name, region in scheme.regions.items():
        for index, values in enumerate(scheme.classes.values()):
            if index and (painted[index] in region) != (values[0] in region):
                where = "outside" if values[0] not in region else "inside"
                raise RegionError(f"with '{REGION_ORDER_KEY}' {list(scheme.class_order)} a prediction paints "
                                  f"value {painted[index]} on voxels {where} region '{name}' {list(region)}, "
                                  "so the region could not be read back from it; give each region a value "
                                  "of its own that only it and the regions containing it hold")


def read_regions(labels: Dict[str, Any]) -> Dict[str, Tuple[int, ...]]:
    """Region name -> its label values (sorted), as nnU-Net reads a region dataset's labels: a
    single value is a region of one; background (0) and ``ignore`` are no region. Regions must
    be non-empty lists of distinct values above 0, and no two may hold the same values (which
    one would a voxel be?). Raises RegionError naming the region."""
    regions: Dict[str, Tuple[int, ...]] = {}
    for name, value in labels.items():
        if name in ("background", "ignore"):
            continue
        if not str(name).strip():
            raise RegionError("a region has an empty name; every region needs one")
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(_whole(v) and v > 0 for v in values):
            raise RegionError(f"region '{name}' must be a non-empty list of label values above 0, "
                              f"not {json.dumps(value)}")
        if len(set(values)) != len(values):
            raise RegionError(f"region '{name}' lists a value twice ({value})")
        twin = next((other for other, held in regions.items() if held == tuple(sorted(values))), None)
        if twin is not None:
            raise RegionError(f"regions '{twin}' and '{name}' hold the same values")
        regions[str(name)] = tuple(sorted(values))
    if not regions:
        raise RegionError("labels need at least one region besides background")
    return regions


def _checked_order(class_order: Any, count: int, ignore: Optional[int]) -> Tuple[int, ...]:
    if class_order is None:
        raise RegionError(f"region labels need '{REGION_ORDER_KEY}': the value each region is written "
                          "with in a prediction, in the order of labels")
    if not isinstance(class_order, (list, tuple)) or not all(_whole(v) and v > 0 for v in class_order):
        raise RegionError(f"'{REGION_ORDER_KEY}' must be a list of label values above 0, not {class_order!r}")
    if len(class_order) != count:
        raise RegionError(f"'{REGION_ORDER_KEY}' has {len(class_order)} value(s) for {count} region(s)")
    if len(set(class_order)) != len(class_order):
        raise RegionError(f"'{REGION_ORDER_KEY}' gives two regions the same value ({list(class_order)})")
    if ignore is not None and ignore in class_order:
        raise RegionError(f"'{REGION_ORDER_KEY}' uses the 'ignore' value {ignore}")
    return tuple(int(v) for v in class_order)


def _classes(regions: Dict[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, ...]]:
    """Label values grouped by the regions they belong to, ordered by their smallest value."""
    groups: Dict[Tuple[str, ...], List[int]] = {}
    for value in sorted({v for values in regions.values() for v in values}):
        member_of = tuple(name for name, values in regions.items() if value in values)
        groups.setdefault(member_of, []).append(value)
    classes: Dict[str, Tuple[int, ...]] = {"background": (0,)}
    for member_of, values in groups.items():
        word = "label" if len(values) == 1 else "labels"
        classes[f"{word} {', '.join(map(str, values))} ({', '.join(member_of)})"] = tuple(values)
    return classes


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
