#!/usr/bin/env python3
"""Draw Resources/Screenshots/MaskSAM-segment.png, the picture the extension index shows.

It shows what the Segment tab produces: three orthogonal slices of a synthetic abdominal CT
(`masksam make-phantoms`) with one coloured segment per structure, named and coloured exactly
as the module names them (MaskSAMSegmentLib.terminology). The label map shown is the phantom's
reference label map, and the picture says so; replace it with a screenshot of Slicer itself
when one is available.

    python scripts/make_screenshots.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "Resources" / "Screenshots" / "MaskSAM-segment.png"


def phantom_case(folder: Path):
    """(image (z, y, x), labels (z, y, x), spacing (x, y, z), label names by value) of one phantom."""
    import json

    import SimpleITK as sitk

    dataset = folder / "phantoms"
    subprocess.run([sys.executable, "-m", "MaskSAMCore", "make-phantoms", str(dataset), "--cases", "1",
                    "--seed", "3", "--size", "160", "160", "64"], check=True, cwd=REPO)
    image = sitk.ReadImage(str(next((dataset / "imagesTr").iterdir())))
    labels = sitk.ReadImage(str(next((dataset / "labelsTr").iterdir())))
    names = {v: k for k, v in json.loads((dataset / "dataset.json").read_text())["labels"].items()}
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels), image.GetSpacing(), names


def overlay(image2d: np.ndarray, labels2d: np.ndarray, colours: dict) -> np.ndarray:
    """RGB of a CT slice (abdominal window) with segments filled at 55 % opacity."""
    grey = np.clip((image2d + 160.0) / 400.0, 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for value, colour in colours.items():
        mask = labels2d == value
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.array(colour)
    return rgb


def main() -> int:
    sys.path.insert(0, str(REPO / "MaskSAMSegment"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from MaskSAMSegmentLib.terminology import AnatomyTerminology

    with tempfile.TemporaryDirectory() as folder:
        image, labels, spacing, names = phantom_case(Path(folder))
    terminology = AnatomyTerminology()
    styles = {value: terminology.style(name, value) for value, name in names.items() if value}
    colours = {value: style.color for value, style in styles.items()}
    z, y, x = (int(np.argmax((labels > 0).sum(axis=axes))) for axes in ((1, 2), (0, 2), (0, 1)))
    views = [("Axial", overlay(image[z], labels[z], colours), spacing[1] / spacing[0]),
             ("Coronal", overlay(image[:, y][::-1], labels[:, y][::-1], colours), spacing[2] / spacing[0]),
             ("Sagittal", overlay(image[:, :, x][::-1], labels[:, :, x][::-1], colours), spacing[2] / spacing[1])]

    figure = plt.figure(figsize=(12, 4.6), dpi=100, facecolor="#1b2333")
    for index, (title, rgb, aspect) in enumerate(views):
        axes = figure.add_axes([0.01 + 0.245 * index, 0.08, 0.235, 0.8])
        axes.imshow(rgb, aspect=aspect, interpolation="nearest")
        axes.set_title(title, color="white", fontsize=11)
        axes.axis("off")
    legend = figure.add_axes([0.75, 0.08, 0.24, 0.8])
    legend.axis("off")
    handles = [Patch(facecolor=style.color, edgecolor="white", label=style.name) for style in styles.values()]
    box = legend.legend(handles=handles, loc="center left", frameon=False, labelcolor="white", fontsize=12,
                        title="Segments", title_fontsize=12)
    box.get_title().set_color("white")
    figure.suptitle("MaskSAM Segment: one named, coloured segment per structure", color="white", fontsize=14)
    figure.text(0.01, 0.02, "Synthetic abdominal CT phantom with its reference label map, named and coloured "
                "by the module's terminology table.", color="#b8c4d8", fontsize=9)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT, facecolor=figure.get_facecolor())
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
