"""Names, colours and standard codes for the segments a model predicts (in 3D Slicer, and in
the DICOM SEG files `masksam predict` writes).

A model's labels are whatever its training dataset called them ("liver", "kidney_left",
"RV", "postcava", ...). For the structures in ``anatomy_terminology.json`` (beside this file) the
segment gets a standard display name, a colour close to Slicer's GenericAnatomyColors and a
DICOM/SNOMED-CT terminology entry (the string format Slicer's Terminologies module stores in a
segment's tag). Anything else keeps its own name (underscores become spaces) and a distinct
colour from a fixed palette chosen by label value, so colours are stable from run to run.

Pure Python: no Slicer import, so the matching rules can be tested anywhere.
"""

from __future__ import annotations

import colorsys
import functools
import json
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

TERMINOLOGY_FILE = Path(__file__).resolve().parent / "anatomy_terminology.json"
GOLDEN_ANGLE_TURNS = 0.6180339887498949   # successive hues as far apart as can be, for ever
SIDE_WORDS = {"left": "left", "l": "left", "lt": "left", "right": "right", "r": "right", "rt": "right"}


@dataclass(frozen=True)
class SegmentStyle:
    """How one label appears as a segment.

    name:        display name of the segment ("Left kidney", or the prettified label name)
    color:       RGB in 0..1 (what vtkSegment.SetColor expects)
    terminology: Slicer's serialized terminology entry, or "" when the structure is unknown
    known:       True when the label matched an entry of the terminology table
    """

    name: str
    color: Tuple[float, float, float]
    terminology: str
    known: bool


Code = Tuple[str, str, str]   # (coding scheme, code value, code meaning), e.g. ("SCT", "10200004", "Liver")


@dataclass(frozen=True)
class StructureCodes:
    """A structure as DICOM codes it: segmented property category and type, and the type's
    modifier (the side of a paired organ) or None."""

    category: Code
    type: Code
    modifier: Optional[Code]


def normalise_label_name(name: str) -> str:
    """``"Kidney_Left"`` -> ``"kidney left"``: lower case, any run of non-alphanumerics a space.

    Letters of any script count ("Lésion", "肝臓"), so names in other languages stay apart;
    NFC makes an accent typed as one character or as two the same name.
    """
    folded = unicodedata.normalize("NFC", name).casefold()
    return " ".join(re.split(r"[\W_]+", folded)).strip()


def prettify_label_name(name: str) -> str:
    """A readable segment name for a label the table does not know: ``"blob_3"`` -> ``"Blob 3"``."""
    words = re.split(r"[_\s]+", name.strip())
    text = " ".join(word for word in words if word)
    return text[:1].upper() + text[1:] if text else name


@functools.lru_cache(maxsize=4)
def load_table(path: Optional[str] = None) -> dict:
    """The parsed terminology table (cached)."""
    with open(path or TERMINOLOGY_FILE, "r", encoding="utf-8") as stream:
        return json.load(stream)


class AnatomyTerminology:
    """Looks up the style of a label name in the terminology table."""

    def __init__(self, table: Optional[dict] = None) -> None:
        self.table = table if table is not None else load_table()
        self._by_alias: Dict[str, dict] = {}
        self._by_side_alias: Dict[str, Tuple[dict, str]] = {}
        for entry in self.table["structures"]:
            for alias in entry["aliases"]:
                self._by_alias[normalise_label_name(alias)] = entry
            for alias, side in entry.get("side_aliases", {}).items():
                self._by_side_alias[normalise_label_name(alias)] = (entry, side)
        self.palette: List[Sequence[int]] = self.table["fallback_palette"]

    def match(self, label_name: str) -> Tuple[Optional[dict], Optional[str]]:
        """(table entry, side or None) for a label name, or (None, None) when unknown.

        A whole-name match wins ("left ventricle" is its own structure, not a left "ventricle");
        then a side word at either end is split off for structures that have sides.
        """
        key = normalise_label_name(label_name)
        if key in self._by_alias:
            return self._by_alias[key], None
        if key in self._by_side_alias:
            return self._by_side_alias[key]
        words = key.split()
        if len(words) >= 2:
            for side_word, rest in ((words[0], words[1:]), (words[-1], words[:-1])):
                side = SIDE_WORDS.get(side_word)
                entry = self._by_alias.get(" ".join(rest))
                if side and entry is not None and entry.get("sided"):
                    return entry, side
        return None, None

    def style(self, label_name: str, label_value: int) -> SegmentStyle:
        """Display name, colour and terminology entry for one label."""
        entry, side = self.match(label_name)
        if entry is None:
            return SegmentStyle(prettify_label_name(label_name), self.value_colour(label_value), "", False)
        name = entry["name"] if side is None else f"{side.capitalize()} {entry['name'][:1].lower()}{entry['name'][1:]}"
        return SegmentStyle(name, _unit_rgb(entry["color"]), self.terminology_entry(entry, side), True)

    def value_colour(self, label_value: int) -> Tuple[float, float, float]:
        """The colour (0-1 RGB) of a label the table does not name: the palette's for the first
        values, then hues a golden angle apart (in three saturation and brightness steps), so a
        model of many structures (vertebrae, ribs, lesions) never shows two alike side by side."""
        if 1 <= label_value <= len(self.palette):
            return _unit_rgb(self.palette[label_value - 1])
        step = label_value - len(self.palette)
        hue = (step * GOLDEN_ANGLE_TURNS) % 1.0
        saturation, brightness = ((0.75, 0.9), (0.5, 0.75), (0.9, 0.6))[step % 3]
        return colorsys.hsv_to_rgb(hue, saturation, brightness)

    def styles(self, labels: Sequence[Tuple[str, int]]) -> List[SegmentStyle]:
        """The style of each (label name, value), with the segments told apart: labels that the
        table reads as one structure ("whole tumor", "tumor core" and "enhancing tumor" are all a
        tumor, and overlap as regions) keep that structure's terminology entry but their own names
        and the palette colour of their values, instead of several segments all called "Tumor"."""
        found = [self.style(name, value) for name, value in labels]
        shared = {style.name for style in found if [other.name for other in found].count(style.name) > 1}
        return [replace(style, name=prettify_label_name(name),
                        color=self.value_colour(value))
                if style.known and style.name in shared else style
                for style, (name, value) in zip(found, labels)]

    def codes(self, label_name: str) -> "StructureCodes":
        """The DICOM codes of a label's structure; SNOMED-CT's "Tissue" for a name the table does
        not know (what 3D Slicer gives a segment without terminology)."""
        entry, side = self.match(label_name)
        if entry is None:
            tissue = tuple(self.table["categories"]["tissue"])
            return StructureCodes(tissue, tissue, None)
        return StructureCodes(tuple(self.table["categories"][entry["category"]]), tuple(entry["code"]),
                              tuple(self.table["sides"][side]) if side else None)

    def terminology_entry(self, entry: dict, side: Optional[str]) -> str:
        """Slicer's 7-part ``~``-separated terminology string (context, category, type, type
        modifier, region context, region, region modifier); each code is ``scheme^value^meaning``."""
        context = self.table["contexts"][entry["context"]]
        category = "^".join(self.table["categories"][entry["category"]])
        code = "^".join(entry["code"])
        modifier = "^".join(self.table["sides"][side]) if side else "^^"
        return "~".join([context, category, code, modifier, self.table["region_context"], "^^", "^^"])


def _unit_rgb(rgb: Sequence[int]) -> Tuple[float, float, float]:
    return (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)


def dataset_label_key(segment_name: str) -> str:
    """The key a segment name gets in a dataset's ``labels``: ``"Left kidney"`` -> ``"left_kidney"``.

    Two segments whose names differ only in case, spaces or punctuation share a key, so the
    same structure gets the same label value in every case of a dataset.
    """
    return normalise_label_name(segment_name).replace(" ", "_")
