"""Family ``digits``: scikit-learn's bundled 8×8 handwritten digits, upsampled, slightly jittered
(scale, shift, rotation) and coloured; captioned with the digit's name and colours.

Source digits are split into disjoint pools (see :class:`data.catalog.base.Context`), so held-out and
seed-0 images never reuse a source digit that a training split or a zoo model saw.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from data.catalog import sources
from data.catalog.base import Context, register
from data.catalog.draw import NUMBER_WORDS, choice, color, place


def _candidates(labels: tuple[int, ...]) -> np.ndarray:
    _, y = sources.digits()
    return np.flatnonzero(np.isin(y, labels))


def _ink(ctx: Context, labels: tuple[int, ...], box: int) -> tuple[np.ndarray, int]:
    """One source digit from the pool, as an ink map ``[box, box]`` in [0, 1], and its label."""
    x, y = sources.digits()
    i = ctx.pick(_candidates(labels))
    im = Image.fromarray(x[i].astype(np.float32), mode="F").resize((box, box), Image.BICUBIC)
    im = im.rotate(float(ctx.rng.uniform(-10, 10)), resample=Image.BICUBIC)
    return np.clip(np.asarray(im), 0, 1), int(y[i])


def _paste(canvas: np.ndarray, ink: np.ndarray, left: int, top: int) -> None:
    """Max-composite an ink map into ``canvas`` ([S, S] coverage) at (left, top), clipped to the canvas."""
    s = canvas.shape[0]
    h, w = ink.shape
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + w, s), min(top + h, s)
    if x1 > x0 and y1 > y0:
        region = canvas[y0:y1, x0:x1]
        np.maximum(region, ink[y0 - top:y1 - top, x0 - left:x1 - left], out=region)


def _colorize(cover: np.ndarray, ink_rgb, bg_rgb) -> Image.Image:
    c = cover[..., None]
    arr = c * np.asarray(ink_rgb, np.float32) + (1 - c) * np.asarray(bg_rgb, np.float32)
    return Image.fromarray(np.round(arr).astype(np.uint8))


def _centred(ctx: Context, labels: tuple[int, ...]) -> tuple[np.ndarray, int]:
    s = ctx.size
    box = int(round(s * ctx.rng.uniform(0.72, 0.92)))
    ink, label = _ink(ctx, labels, box)
    cover = np.zeros((s, s), np.float32)
    off = (s - box) // 2
    dx, dy = ctx.rng.integers(-2, 3, size=2) * s // 32
    _paste(cover, ink, off + int(dx), off + int(dy))
    return cover, label


def _plain(ctx: Context, labels: tuple[int, ...], ink_name: str, bg_name: str):
    cover, label = _centred(ctx, labels)
    img = _colorize(cover, color(ctx.rng, ink_name), color(ctx.rng, bg_name))
    return img, f"a handwritten digit {NUMBER_WORDS[label]}, {ink_name} on {bg_name}"


@register("digits_low", "digits", "handwritten digits 0-4, white on black")
def low(ctx: Context):
    return _plain(ctx, (0, 1, 2, 3, 4), "white", "black")


@register("digits_high", "digits", "handwritten digits 5-9, white on black")
def high(ctx: Context):
    return _plain(ctx, (5, 6, 7, 8, 9), "white", "black")


@register("digits_inverted", "digits", "handwritten digits 0-9, black on white")
def inverted(ctx: Context):
    return _plain(ctx, tuple(range(10)), "black", "white")


@register("digits_color", "digits", "handwritten digits 0-9 in a colour on a dark or light background")
def colored(ctx: Context):
    rng = ctx.rng
    cover, label = _centred(ctx, tuple(range(10)))
    bg = choice(rng, ["black", "dark blue", "white", "cream"])
    # contrasting ink only: bright inks on dark backgrounds, dark inks on light ones
    ink = choice(rng, ["yellow", "orange", "pink", "red", "green", "teal"] if bg in ("black", "dark blue")
                 else ["blue", "purple", "brown", "red", "green", "teal"])
    img = _colorize(cover, color(rng, ink), color(rng, bg))
    return img, f"a handwritten digit {NUMBER_WORDS[label]} in {ink} on a {bg} background"


@register("digits_pairs", "digits", "two handwritten digits side by side forming a number, white on black")
def pairs(ctx: Context):
    s = ctx.size
    cover = np.zeros((s, s), np.float32)
    box = int(round(s * ctx.rng.uniform(0.5, 0.6)))
    top = (s - box) // 2 + int(ctx.rng.integers(-2, 3)) * s // 32
    labels = []
    for k in range(2):
        ink, label = _ink(ctx, tuple(range(10)), box)
        left = (s // 2 - box) + 1 if k == 0 else s // 2 - 1  # two boxes meeting in the middle
        _paste(cover, ink, left, top)
        labels.append(label)
    img = _colorize(cover, color(ctx.rng, "white"), color(ctx.rng, "black"))
    a, b = labels
    return img, f"the handwritten number {a}{b}, digits {NUMBER_WORDS[a]} and {NUMBER_WORDS[b]}, white on black"


@register("digits_small", "digits", "one small handwritten digit in one of nine places, white on black")
def small(ctx: Context):
    s = ctx.size
    box = int(round(s * ctx.rng.uniform(0.36, 0.44)))
    ink, label = _ink(ctx, tuple(range(10)), box)
    cx, cy, where = place(ctx.rng, box / s / 2)
    cover = np.zeros((s, s), np.float32)
    _paste(cover, ink, int(round(cx * s - box / 2)), int(round(cy * s - box / 2)))
    img = _colorize(cover, color(ctx.rng, "white"), color(ctx.rng, "black"))
    return img, f"a small handwritten digit {NUMBER_WORDS[label]} {where}, white on black"
