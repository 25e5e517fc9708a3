"""Family ``textures``: square crops of scikit-image's bundled texture photos (brick, grass, gravel, the
lunar surface, stained tissue), randomly flipped and rotated by right angles.

Crops for seed 0 and for other seeds (and for train and held-out) come from disjoint regions of each
source (:meth:`data.catalog.base.Context.region`), so they never share pixels.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from data.catalog import sources
from data.catalog.base import Context, register
from data.catalog.draw import choice, color

# name -> (file in skimage/data, caption noun phrase)
TEXTURES = {
    "brick": ("brick.png", "a brick wall"),
    "grass": ("grass.png", "grass"),
    "gravel": ("gravel.png", "gravel"),
    "moon": ("moon.png", "the surface of the moon"),
    "tissue": ("ihc.png", "stained tissue under a microscope"),
}
_SIDE = (0.1, 0.22)  # crop side / source side: 51-113 px of a 512 px texture


def _crop(ctx: Context, name: str) -> tuple[Image.Image, str]:
    """A crop of texture ``name`` with the words for its scale."""
    img, frac = sources.random_crop(sources.photo("skimage", TEXTURES[name][0]), ctx.rng, ctx.size, _SIDE,
                                    ctx.region())
    img = img.rotate(90 * int(ctx.rng.integers(4)))
    if ctx.rng.integers(2):
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img, ("a close-up" if frac < 0.16 else "a wider view")


def _gray(ctx: Context, names: list[str]):
    name = choice(ctx.rng, names)
    img, view = _crop(ctx, name)
    return img, f"{view} of {TEXTURES[name][1]}, a grayscale texture photo"


@register("textures_brick", "textures", "grayscale crops of a brick wall")
def brick(ctx: Context):
    return _gray(ctx, ["brick"])


@register("textures_grass", "textures", "grayscale crops of grass")
def grass(ctx: Context):
    return _gray(ctx, ["grass"])


@register("textures_gravel", "textures", "grayscale crops of gravel")
def gravel(ctx: Context):
    return _gray(ctx, ["gravel"])


@register("textures_moon", "textures", "grayscale crops of the lunar surface")
def moon(ctx: Context):
    return _gray(ctx, ["moon"])


@register("textures_mixed", "textures", "grayscale crops of brick, grass or gravel, named in the caption")
def mixed(ctx: Context):
    return _gray(ctx, ["brick", "grass", "gravel"])


@register("textures_tinted", "textures", "brick, grass or gravel crops tinted with one colour")
def tinted(ctx: Context):
    rng = ctx.rng
    name = choice(rng, ["brick", "grass", "gravel"])
    img, view = _crop(ctx, name)
    tint = choice(rng, ["red", "orange", "yellow", "green", "blue", "purple", "teal"])
    g = np.asarray(img.convert("L"), np.float32)[..., None] / 255.0
    arr = g * np.asarray(color(rng, tint), np.float32) + (1 - g) * 10.0  # duotone: near-black to the tint
    img = Image.fromarray(np.round(arr).astype(np.uint8))
    return img, f"{view} of {TEXTURES[name][1]}, a texture photo tinted {tint}"


@register("textures_tissue", "textures", "colour crops of a stained tissue micrograph")
def tissue(ctx: Context):
    img, view = _crop(ctx, "tissue")
    return img, f"{view} of {TEXTURES['tissue'][1]}"
