"""Family ``shapes``: one flat geometric shape per image, captioned with its size, colour, kind,
position and background."""
from __future__ import annotations

from data.catalog.base import Context, register
from data.catalog.draw import (CHROMATIC, DARK_BG, LIGHT_BG, SHAPES, Canvas, article, choice, color, place,
                               size_word)


def _single(ctx: Context, kinds, sizes=("small", "medium", "large"), backgrounds=LIGHT_BG,
            outline: bool = False):
    rng = ctx.rng
    kind = choice(rng, list(kinds))
    fg = choice(rng, CHROMATIC)
    bg = choice(rng, list(backgrounds))
    sw, r = size_word(rng, sizes)
    cx, cy, where = place(rng, r)
    angle = float(rng.uniform(-0.15, 0.15)) if kind != "circle" else 0.0  # slight tilt, still "upright"
    c = Canvas(ctx.size, color(rng, bg))
    c.shape(kind, cx, cy, r, color(rng, fg), outline=float(rng.uniform(0.03, 0.05)) if outline else 0.0,
            angle=angle)
    if outline:
        text = f"the outline of {article(sw)} {sw} {fg} {kind} {where}, on {article(bg)} {bg} background"
    else:
        text = f"{article(sw)} {sw} {fg} {kind} {where} on {article(bg)} {bg} background"
    return c.finish(), text


@register("shapes_circles", "shapes", "one filled circle of a random colour, size and position on a light background")
def circles(ctx: Context):
    return _single(ctx, ["circle"])


@register("shapes_squares", "shapes", "one filled square of a random colour, size and position on a light background")
def squares(ctx: Context):
    return _single(ctx, ["square"])


@register("shapes_triangles", "shapes",
          "one filled triangle of a random colour, size and position on a light background")
def triangles(ctx: Context):
    return _single(ctx, ["triangle"])


@register("shapes_polygons", "shapes", "one filled diamond, pentagon, hexagon or star on a light background")
def polygons(ctx: Context):
    return _single(ctx, ["diamond", "pentagon", "hexagon", "star"])


@register("shapes_small_mixed", "shapes", "one small shape of any kind, anywhere, on a light background")
def small_mixed(ctx: Context):
    return _single(ctx, SHAPES, sizes=("small",))


@register("shapes_on_dark", "shapes", "one filled shape of any kind on a black, dark blue or dark gray background")
def on_dark(ctx: Context):
    return _single(ctx, SHAPES, backgrounds=DARK_BG)


@register("shapes_outlines", "shapes", "the coloured outline of one medium or large shape on a light background")
def outlines(ctx: Context):
    return _single(ctx, SHAPES, sizes=("medium", "large"), outline=True)
