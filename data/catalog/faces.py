"""Family ``faces``: scikit-image's bundled LFW subset (100 grayscale 25×25 face crops and 100 non-face
patches), upsampled with small crop jitter and mirroring, then toned, framed or zoomed.

Source faces are split into disjoint pools (see :class:`data.catalog.base.Context`): a seed-0 held-out
face is a person no training split and no zoo model has seen.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from data.catalog import sources
from data.catalog.base import Context, register
from data.catalog.draw import choice, color

_FACES = np.arange(100)
_PATCHES = np.arange(100, 200)


def _gray(ctx: Context, ids: np.ndarray, out: int, zoom: tuple[float, float] = (0.84, 1.0)) -> np.ndarray:
    """One source from the pool, jitter-cropped (side fraction ``zoom``, roughly centred), mirrored at
    random and resized to ``out``×``out``: float ``[out, out]`` in [0, 1]."""
    rng = ctx.rng
    src = sources.lfw_subset()[ctx.pick(ids)]
    img = Image.fromarray((src * 255).astype(np.uint8))
    n = src.shape[0]
    s = float(rng.uniform(*zoom)) * n
    cx, cy = n / 2 + rng.uniform(-1, 1), n / 2 + rng.uniform(-1, 1)
    box = (max(0.0, cx - s / 2), max(0.0, cy - s / 2), min(n, cx + s / 2), min(n, cy + s / 2))
    img = img.resize((out, out), Image.BICUBIC, box=box)
    if rng.integers(2):
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img, np.float32) / 255.0


def _rgb(g: np.ndarray, dark, light) -> Image.Image:
    """Duotone: gray level 0 → ``dark``, 1 → ``light`` (RGB triples)."""
    arr = g[..., None] * np.asarray(light, np.float32) + (1 - g[..., None]) * np.asarray(dark, np.float32)
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))


@register("faces_gray", "faces", "grayscale close-up face photos")
def gray(ctx: Context):
    g = _gray(ctx, _FACES, ctx.size)
    return _rgb(g, (0, 0, 0), (255, 255, 255)), "a grayscale close-up photo of a person's face"


@register("faces_sepia", "faces", "sepia-toned close-up face photos")
def sepia(ctx: Context):
    g = _gray(ctx, _FACES, ctx.size)
    return _rgb(g, (35, 20, 5), (255, 235, 195)), "a sepia-toned close-up photo of a person's face"


@register("faces_tinted", "faces", "close-up face photos tinted with one colour")
def tinted(ctx: Context):
    tint = choice(ctx.rng, ["red", "orange", "green", "blue", "purple", "teal"])
    g = _gray(ctx, _FACES, ctx.size)
    return _rgb(g, (10, 10, 10), color(ctx.rng, tint)), f"a close-up photo of a person's face, tinted {tint}"


@register("faces_zoomed", "faces", "extreme close-ups of the eyes and nose, grayscale")
def zoomed(ctx: Context):
    g = _gray(ctx, _FACES, ctx.size, zoom=(0.5, 0.62))
    return _rgb(g, (0, 0, 0), (255, 255, 255)), "an extreme close-up of a person's eyes and nose, grayscale"


@register("faces_framed", "faces", "a small grayscale face photo in a coloured frame")
def framed(ctx: Context):
    rng = ctx.rng
    frame = choice(rng, ["red", "blue", "green", "yellow", "white", "black", "brown"])
    inner = int(round(ctx.size * rng.uniform(0.62, 0.75)))
    g = _gray(ctx, _FACES, inner)
    canvas = np.zeros((ctx.size, ctx.size, 3), np.uint8)
    canvas[:] = color(rng, frame)
    off = (ctx.size - inner) // 2
    canvas[off:off + inner, off:off + inner] = np.asarray(_rgb(g, (0, 0, 0), (255, 255, 255)))
    return Image.fromarray(canvas), f"a small grayscale photo of a person's face in a wide {frame} frame"


@register("faces_and_patches", "faces", "grayscale faces mixed with non-face patches of natural images")
def faces_and_patches(ctx: Context):
    if ctx.rng.integers(2):
        g = _gray(ctx, _FACES, ctx.size)
        text = "a grayscale close-up photo of a person's face"
    else:
        g = _gray(ctx, _PATCHES, ctx.size)
        text = "a grayscale patch of a natural photo with no face in it"
    return _rgb(g, (0, 0, 0), (255, 255, 255)), text
