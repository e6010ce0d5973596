#!/usr/bin/env python3
"""Draw the extension icon (MaskSAM.png, 128x128) and the module icon (64x64).

The picture: an axial CT slice of the abdomen (body, fat, spine) with the organs MaskSAM names
painted in their anatomical colours, and a Segment-Anything-style dashed prompt box with corner
handles around the liver. Drawn with NumPy as signed shapes at 4x resolution and averaged down,
so edges are smooth at any size; saved with matplotlib (a project dependency).

    python scripts/make_icons.py            # rewrites both PNGs in the repository
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SUPERSAMPLE = 4

# Organ colours as in MaskSAMCore/anatomy_terminology.json (close to Slicer's GenericAnatomyColors).
LIVER = (221, 130, 101)
SPLEEN = (157, 108, 162)
KIDNEY = (185, 102, 83)
AORTA = (224, 97, 76)
STOMACH = (216, 132, 105)
PROMPT = (90, 220, 255)


class Canvas:
    """An RGBA image in [0, 1] with coordinates in icon units (0..1 across, y downwards)."""

    def __init__(self, size: int) -> None:
        self.size = size
        n = size * SUPERSAMPLE
        self.rgba = np.zeros((n, n, 4))
        centres = (np.arange(n) + 0.5) / n
        self.y, self.x = np.meshgrid(centres, centres, indexing="ij")
        self.pixel = 1.0 / size

    def paint(self, coverage: np.ndarray, rgb, alpha: float = 1.0) -> None:
        """Composite `rgb` (0-255) over the image where `coverage` (0..1) says, 'over' operator."""
        a = np.clip(coverage, 0, 1)[..., None] * alpha
        colour = np.array(rgb, dtype=float) / 255.0
        self.rgba[..., :3] = colour * a + self.rgba[..., :3] * (1 - a)
        self.rgba[..., 3:] = a + self.rgba[..., 3:] * (1 - a)

    def ellipse(self, cx, cy, rx, ry, angle_deg=0.0) -> np.ndarray:
        """Signed distance-like field: < 0 inside, in icon units (good enough for thin outlines)."""
        t = np.radians(angle_deg)
        dx, dy = self.x - cx, self.y - cy
        u = (dx * np.cos(t) + dy * np.sin(t)) / rx
        v = (-dx * np.sin(t) + dy * np.cos(t)) / ry
        return (np.sqrt(u * u + v * v) - 1.0) * min(rx, ry)

    def rounded_box(self, x0, y0, x1, y1, radius) -> np.ndarray:
        cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 - radius, (y1 - y0) / 2 - radius
        qx, qy = np.abs(self.x - cx) - hx, np.abs(self.y - cy) - hy
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0) - radius

    @staticmethod
    def fill(field: np.ndarray) -> np.ndarray:
        return (field < 0).astype(float)

    def outline(self, field: np.ndarray, width_px: float) -> np.ndarray:
        return (np.abs(field) < width_px * self.pixel / 2).astype(float)

    def image(self) -> np.ndarray:
        n, s = self.size, SUPERSAMPLE
        rgba = self.rgba.reshape(n, s, n, s, 4)
        alpha = rgba[..., 3].mean(axis=(1, 3))
        premultiplied = (rgba[..., :3] * rgba[..., 3:]).mean(axis=(1, 3))
        rgb = np.where(alpha[..., None] > 0, premultiplied / np.maximum(alpha[..., None], 1e-9), 0)
        return np.concatenate([rgb, alpha[..., None]], axis=-1).clip(0, 1)


def organ(canvas: Canvas, field: np.ndarray, rgb, outline_px: float) -> None:
    canvas.paint(canvas.fill(field), rgb, alpha=0.88)
    lighter = tuple(min(255, int(c * 0.55 + 255 * 0.45)) for c in rgb)
    canvas.paint(canvas.outline(field, outline_px), lighter)


def dashed_box(canvas: Canvas, x0, y0, x1, y1, width_px: float, dash: float, detailed: bool) -> None:
    """A prompt box: dashed edges and square handles at the corners."""
    half = width_px * canvas.pixel / 2
    on_x = ((canvas.x - x0) // dash % 2 == 0)
    on_y = ((canvas.y - y0) // dash % 2 == 0)
    inside_x = (canvas.x >= x0 - half) & (canvas.x <= x1 + half)
    inside_y = (canvas.y >= y0 - half) & (canvas.y <= y1 + half)
    horizontal = ((np.abs(canvas.y - y0) < half) | (np.abs(canvas.y - y1) < half)) & inside_x & on_x
    vertical = ((np.abs(canvas.x - x0) < half) | (np.abs(canvas.x - x1) < half)) & inside_y & on_y
    canvas.paint((horizontal | vertical).astype(float), PROMPT)
    handle = (3.2 if detailed else 2.6) * width_px * canvas.pixel / 2
    for hx, hy in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
        square = (np.abs(canvas.x - hx) < handle) & (np.abs(canvas.y - hy) < handle)
        canvas.paint(square.astype(float), (255, 255, 255))
        inner = (np.abs(canvas.x - hx) < handle * 0.55) & (np.abs(canvas.y - hy) < handle * 0.55)
        canvas.paint(inner.astype(float), PROMPT)


def draw(size: int, detailed: bool) -> np.ndarray:
    canvas = Canvas(size)
    line = 1.3 if detailed else 1.6
    # Tile: dark rounded square, lighter towards the top (a monitor-like backdrop).
    tile = canvas.rounded_box(0.02, 0.02, 0.98, 0.98, 0.16)
    canvas.paint(canvas.fill(tile), (20, 28, 44))
    canvas.paint(canvas.fill(tile) * (1 - canvas.y) * 0.5, (48, 66, 98))
    # Body: skin/fat ring, then soft tissue, CT grey levels.
    canvas.paint(canvas.fill(canvas.ellipse(0.5, 0.53, 0.43, 0.33)), (118, 118, 112))
    canvas.paint(canvas.fill(canvas.ellipse(0.5, 0.53, 0.39, 0.29)), (82, 82, 80))
    # Spine (posterior, bright bone) and its canal.
    canvas.paint(canvas.fill(canvas.ellipse(0.5, 0.72, 0.075, 0.065)), (236, 232, 214))
    canvas.paint(canvas.fill(canvas.ellipse(0.5, 0.80, 0.03, 0.025)), (60, 60, 60))
    # Organs as seen on an axial slice (patient's right on the image's left).
    # The liver: a large right lobe and a left lobe tapering across the midline.
    liver = np.minimum(canvas.ellipse(0.31, 0.49, 0.17, 0.15, angle_deg=-15),
                       canvas.ellipse(0.44, 0.39, 0.14, 0.055, angle_deg=-22))
    organ(canvas, liver, LIVER, line)
    organ(canvas, canvas.ellipse(0.75, 0.55, 0.075, 0.11, angle_deg=25), SPLEEN, line)
    organ(canvas, canvas.ellipse(0.66, 0.40, 0.09, 0.065, angle_deg=-10), STOMACH, line)
    organ(canvas, canvas.ellipse(0.34, 0.70, 0.055, 0.075, angle_deg=20), KIDNEY, line)
    organ(canvas, canvas.ellipse(0.66, 0.70, 0.055, 0.075, angle_deg=-20), KIDNEY, line)
    organ(canvas, canvas.ellipse(0.53, 0.60, 0.035, 0.035), AORTA, line)
    # The self-generated prompt: a box around the liver.
    dashed_box(canvas, 0.12, 0.29, 0.60, 0.66, width_px=1.6 if detailed else 2.0,
               dash=0.045 if detailed else 0.07, detailed=detailed)
    return canvas.image()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(REPO), help="repository root to write into")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(args.output_dir)
    targets = [(root / "MaskSAM.png", 128, True),
               (root / "MaskSAMSegment" / "Resources" / "Icons" / "MaskSAMSegment.png", 64, False)]
    for path, size, detailed in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        plt.imsave(path, draw(size, detailed))
        print(f"wrote {path} ({size}x{size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
