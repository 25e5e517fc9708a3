"""Drawing helpers shared by the procedural families: named colours, an anti-aliased canvas, regular
shapes, and the words that describe where and how big something is.

Captions must say what is drawn, so every random choice that a caption mentions is made here from a
named vocabulary first (colour name, size word, grid cell) and only then jittered within that word's
range.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

# name -> RGB. Chromatic colours are far apart so a jitter of ±JITTER keeps the name truthful.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (240, 135, 25),
    "yellow": (240, 210, 40),
    "green": (45, 160, 60),
    "blue": (40, 85, 215),
    "purple": (125, 55, 185),
    "pink": (240, 125, 180),
    "brown": (125, 75, 35),
    "teal": (25, 150, 150),
    "white": (245, 245, 245),
    "light gray": (205, 205, 205),
    "cream": (245, 235, 205),
    "black": (18, 18, 18),
    "dark blue": (20, 25, 70),
    "dark gray": (55, 55, 55),
    "gray": (128, 128, 128),
}
CHROMATIC = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "teal"]
LIGHT_BG = ["white", "light gray", "cream"]
DARK_BG = ["black", "dark blue", "dark gray"]
JITTER = 12
SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges at 32 px

SIZE_WORDS = {"small": (0.09, 0.13), "medium": (0.16, 0.21), "large": (0.25, 0.31)}  # radius / side
SHAPES = ["circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def choice(rng: np.random.Generator, options):
    """A uniformly chosen element of a list (``rng.choice`` would turn strings into numpy scalars)."""
    return options[int(rng.integers(len(options)))]


NEUTRAL = {"white", "light gray", "black", "dark gray", "gray"}


def color(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    """The named colour with a small jitter, so no two images share exact pixels.

    Neutral colours get the same offset on every channel (a per-channel jitter would tint them).
    """
    offset = rng.integers(-JITTER, JITTER + 1, size=1 if name in NEUTRAL else 3)
    base = np.array(COLORS[name]) + offset
    return tuple(int(v) for v in np.clip(base, 0, 255))


def pick_colors(rng: np.random.Generator, k: int, palette=CHROMATIC) -> list[str]:
    """``k`` distinct colour names."""
    idx = rng.permutation(len(palette))[:k]
    return [palette[i] for i in idx]


class Canvas:
    """An RGB image drawn at ``SUPERSAMPLE``× resolution in unit coordinates, box-filtered on finish."""

    def __init__(self, size: int, bg: tuple[int, int, int]):
        self.size = size
        self.side = size * SUPERSAMPLE
        self.image = Image.new("RGB", (self.side, self.side), bg)
        self.draw = ImageDraw.Draw(self.image)

    def px(self, v: float) -> float:
        return v * self.side

    def shape(self, kind: str, cx: float, cy: float, r: float, fill, outline: float = 0.0, angle: float = 0.0):
        """Draw a regular shape centred at (cx, cy) with circumradius ``r`` (unit coordinates).

        ``outline > 0`` draws only the contour, that many units wide, in ``fill``.
        """
        if kind == "circle":
            box = [self.px(cx - r), self.px(cy - r), self.px(cx + r), self.px(cy + r)]
            if outline:
                self.draw.ellipse(box, outline=fill, width=max(1, round(self.px(outline))))
            else:
                self.draw.ellipse(box, fill=fill)
            return
        pts = [(self.px(x), self.px(y)) for x, y in shape_points(kind, cx, cy, r, angle)]
        if outline:
            self.draw.line(pts + [pts[0], pts[1]], fill=fill, width=max(1, round(self.px(outline))), joint="curve")
        else:
            self.draw.polygon(pts, fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill):
        self.draw.rectangle([self.px(x0), self.px(y0), self.px(x1) - 1, self.px(y1) - 1], fill=fill)

    def polygon(self, pts, fill):
        self.draw.polygon([(self.px(x), self.px(y)) for x, y in pts], fill=fill)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, fill):
        self.draw.ellipse([self.px(x0), self.px(y0), self.px(x1), self.px(y1)], fill=fill)

    def finish(self) -> Image.Image:
        return self.image.reduce(SUPERSAMPLE)


def shape_points(kind: str, cx: float, cy: float, r: float, angle: float = 0.0) -> list[tuple[float, float]]:
    """Vertices of a regular polygon shape (upright: triangle and star point up, square axis-aligned)."""
    if kind == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + angle + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    sides, start = {"triangle": (3, -math.pi / 2), "square": (4, math.pi / 4), "diamond": (4, 0.0),
                    "pentagon": (5, -math.pi / 2), "hexagon": (6, 0.0)}[kind]
    if kind == "triangle":
        cy += r * 0.25  # centre the triangle's bounding box, not its centroid
    return [(cx + r * math.cos(start + angle + 2 * math.pi * i / sides),
             cy + r * math.sin(start + angle + 2 * math.pi * i / sides)) for i in range(sides)]


# 3x3 grid cells and their words; (column, row) with 0 = left/top.
_CELL_WORDS = {
    (0, 0): "in the top left", (1, 0): "at the top", (2, 0): "in the top right",
    (0, 1): "on the left", (1, 1): "in the centre", (2, 1): "on the right",
    (0, 2): "in the bottom left", (1, 2): "at the bottom", (2, 2): "in the bottom right",
}


def place(rng: np.random.Generator, r: float, cell: tuple[int, int] | None = None) -> tuple[float, float, str]:
    """A centre (cx, cy) for a shape of radius ``r`` that lies fully inside the canvas, in a random
    (or the given) 3×3 grid cell, and the words for that cell."""
    if cell is None:
        cell = (int(rng.integers(3)), int(rng.integers(3)))
    coords = []
    for c in cell:
        lo, hi = max(c / 3, r), min((c + 1) / 3, 1 - r)
        if lo > hi:  # a large shape cannot sit in a corner cell: use the nearest feasible centre
            lo = hi = min(max((c + 0.5) / 3, r), 1 - r)
        coords.append(float(rng.uniform(lo, hi)))
    return coords[0], coords[1], _CELL_WORDS[cell]


def size_word(rng: np.random.Generator, words=("small", "medium", "large")) -> tuple[str, float]:
    w = choice(rng, list(words))
    lo, hi = SIZE_WORDS[w]
    return w, float(rng.uniform(lo, hi))


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + "es" if shape.endswith("x") else shape + "s"
