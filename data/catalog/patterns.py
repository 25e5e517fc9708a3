"""Family ``patterns``: periodic two-colour patterns (stripes, checkerboards, dots, grids, rings, waves),
captioned with the pattern, its two colours and its scale or orientation."""
from __future__ import annotations

import numpy as np
from PIL import Image

from data.catalog.base import Context, register
from data.catalog.draw import (CHROMATIC, DARK_BG, LIGHT_BG, NUMBER_WORDS, SUPERSAMPLE, choice, color, pick_colors,
                               place)

_PALETTE = CHROMATIC + ["white", "black"]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` in [0, 1), each ``[S, S]`` with S = size·SUPERSAMPLE."""
    s = size * SUPERSAMPLE
    t = (np.arange(s) + 0.5) / s
    return np.meshgrid(t, t)  # x varies along columns, y along rows


def _blend(mask: np.ndarray, c0, c1) -> Image.Image:
    """Colour ``c1`` where ``mask`` is true, ``c0`` elsewhere; box-filtered down (anti-aliasing)."""
    m = mask.astype(np.float32)[..., None]
    arr = (1 - m) * np.asarray(c0, np.float32) + m * np.asarray(c1, np.float32)
    return Image.fromarray(np.round(arr).astype(np.uint8)).reduce(SUPERSAMPLE)


def _two_colors(ctx: Context) -> tuple[str, str]:
    a, b = pick_colors(ctx.rng, 2, _PALETTE)
    return a, b


@register("patterns_stripes", "patterns", "vertical or horizontal two-colour stripes, thin or wide")
def stripes(ctx: Context):
    rng = ctx.rng
    a, b = _two_colors(ctx)
    width, period = choice(rng, [("thin", (0.12, 0.2)), ("wide", (0.33, 0.5))])
    period = float(rng.uniform(*period))
    orient = choice(rng, ["vertical", "horizontal"])
    x, y = _grid(ctx.size)
    t = x if orient == "vertical" else y
    mask = ((t / period + rng.uniform()) % 1.0) < 0.5
    return _blend(mask, color(rng, a), color(rng, b)), f"{width} {orient} stripes of {a} and {b}"


@register("patterns_diagonal", "patterns", "diagonal two-colour stripes rising or falling to the right")
def diagonal(ctx: Context):
    rng = ctx.rng
    a, b = _two_colors(ctx)
    period = float(rng.uniform(0.15, 0.35))
    rising = bool(rng.integers(2))
    x, y = _grid(ctx.size)
    t = (x + y) if rising else (x - y)  # image y grows downwards: x + y constant lines rise to the right
    mask = ((t / (period * np.sqrt(2)) + rng.uniform()) % 1.0) < 0.5
    d = "rising" if rising else "falling"
    return _blend(mask, color(rng, a), color(rng, b)), f"diagonal stripes of {a} and {b}, {d} to the right"


@register("patterns_checkerboard", "patterns", "a two-colour checkerboard with 2 to 8 squares per row")
def checkerboard(ctx: Context):
    rng = ctx.rng
    a, b = _two_colors(ctx)
    k = int(rng.integers(2, 9))
    x, y = _grid(ctx.size)
    mask = ((np.floor(x * k) + np.floor(y * k)) % 2) == 1
    return (_blend(mask, color(rng, a), color(rng, b)),
            f"a {a} and {b} checkerboard with {NUMBER_WORDS[k]} squares per row")


@register("patterns_dots", "patterns", "a regular grid of polka dots of one colour on a plain background")
def dots(ctx: Context):
    rng = ctx.rng
    dot = choice(rng, CHROMATIC)
    bg = choice(rng, LIGHT_BG + DARK_BG)
    k = int(rng.integers(3, 7))  # dots per row
    big = bool(rng.integers(2))
    rad = (rng.uniform(0.3, 0.4) if big else rng.uniform(0.14, 0.22)) / k
    x, y = _grid(ctx.size)
    ox, oy = rng.uniform(0, 1 / k, size=2)
    dx = ((x - ox) * k % 1.0 - 0.5) / k
    dy = ((y - oy) * k % 1.0 - 0.5) / k
    mask = dx**2 + dy**2 < rad**2
    size = "large" if big else "small"
    return _blend(mask, color(rng, bg), color(rng, dot)), f"{size} {dot} polka dots on a {bg} background"


@register("patterns_grid", "patterns", "thin grid lines of one colour on a plain background")
def grid(ctx: Context):
    rng = ctx.rng
    bg = choice(rng, LIGHT_BG + DARK_BG)
    line = choice(rng, CHROMATIC + (["black"] if bg in LIGHT_BG else ["white"]))
    k = int(rng.integers(3, 8))
    w = float(rng.uniform(0.08, 0.16))  # line width as a fraction of a cell
    x, y = _grid(ctx.size)
    ox, oy = rng.uniform(0, 1, size=2)
    mask = (((x * k + ox) % 1.0) < w) | (((y * k + oy) % 1.0) < w)
    return (_blend(mask, color(rng, bg), color(rng, line)),
            f"a grid of thin {line} lines on a {bg} background, {NUMBER_WORDS[k]} cells across")


@register("patterns_rings", "patterns", "concentric two-colour rings around a point in one of nine places")
def rings(ctx: Context):
    rng = ctx.rng
    a, b = _two_colors(ctx)
    cx, cy, where = place(rng, 0.0)
    period = float(rng.uniform(0.1, 0.22))
    x, y = _grid(ctx.size)
    mask = (np.hypot(x - cx, y - cy) / period % 1.0) < 0.5
    where = "in the middle" if where == "in the centre" else where
    return _blend(mask, color(rng, a), color(rng, b)), f"concentric rings of {a} and {b}, centred {where}"


@register("patterns_waves", "patterns", "wavy horizontal or vertical two-colour stripes")
def waves(ctx: Context):
    rng = ctx.rng
    a, b = _two_colors(ctx)
    orient = choice(rng, ["horizontal", "vertical"])
    x, y = _grid(ctx.size)
    along, across = (x, y) if orient == "horizontal" else (y, x)
    period = float(rng.uniform(0.18, 0.3))
    amp, freq = float(rng.uniform(0.04, 0.09)), float(rng.uniform(1.5, 3.0))
    t = across + amp * np.sin(2 * np.pi * (freq * along + rng.uniform()))
    mask = ((t / period + rng.uniform()) % 1.0) < 0.5
    return _blend(mask, color(rng, a), color(rng, b)), f"wavy {orient} stripes of {a} and {b}"
