"""Family ``compositions``: several objects with spatial relations (pairs, counts, stacks) and simple
scenes (landscapes, houses, trees), captioned with every object, its colour and where it is."""
from __future__ import annotations

import numpy as np

from data.catalog.base import Context, register
from data.catalog.draw import (CHROMATIC, LIGHT_BG, NUMBER_WORDS, SHAPES, Canvas, article, choice, color,
                               pick_colors, plural)


@register("compositions_pairs", "compositions", "two shapes side by side or one above the other, with their relation")
def pairs(ctx: Context):
    rng = ctx.rng
    (ka, kb), (ca, cb) = [choice(rng, SHAPES), choice(rng, SHAPES)], pick_colors(rng, 2)
    bg = choice(rng, LIGHT_BG)
    r = float(rng.uniform(0.12, 0.19))
    c = Canvas(ctx.size, color(rng, bg))
    horizontal = bool(rng.integers(2))
    # along the relation axis: a in the first half, b in the second; across it: anywhere that fits
    along = [0.0, 0.0]
    while along[1] - along[0] < 2.2 * r:  # the two shapes must not touch
        along = [float(rng.uniform(r, 0.5)), float(rng.uniform(0.5, 1 - r))]
    across = [float(rng.uniform(r + 0.05, 1 - r - 0.05)) for _ in range(2)]
    pa, pb = (along[0], across[0]), (along[1], across[1])
    if not horizontal:
        pa, pb = pa[::-1], pb[::-1]
    c.shape(ka, *pa, r, color(rng, ca))
    c.shape(kb, *pb, r, color(rng, cb))
    rel = "to the left of" if horizontal else "above"
    return c.finish(), f"{article(ca)} {ca} {ka} {rel} {article(cb)} {cb} {kb}, on {article(bg)} {bg} background"


@register("compositions_counting", "compositions", "two to five identical small shapes scattered without overlap")
def counting(ctx: Context):
    rng = ctx.rng
    k = int(rng.integers(2, 6))
    kind, fg, bg = choice(rng, SHAPES), choice(rng, CHROMATIC), choice(rng, LIGHT_BG)
    r = float(rng.uniform(0.08, 0.11))
    centres: list[tuple[float, float]] = []
    while len(centres) < k:  # rejection sampling: shapes must be separate to be countable
        p = tuple(rng.uniform(r + 0.01, 1 - r - 0.01, size=2))
        if all(np.hypot(p[0] - q[0], p[1] - q[1]) > 2.3 * r for q in centres):
            centres.append(p)
    c = Canvas(ctx.size, color(rng, bg))
    fill = color(rng, fg)
    for p in centres:
        c.shape(kind, p[0], p[1], r, fill)
    return c.finish(), f"{NUMBER_WORDS[k]} {fg} {plural(kind)} on {article(bg)} {bg} background"


@register("compositions_stacks", "compositions", "a vertical stack of two to four coloured blocks, named bottom to top")
def stacks(ctx: Context):
    rng = ctx.rng
    k = int(rng.integers(2, 5))
    names = pick_colors(rng, k)
    bg = choice(rng, LIGHT_BG)
    c = Canvas(ctx.size, color(rng, bg))
    h = float(rng.uniform(0.14, 0.2))
    cx = float(rng.uniform(0.35, 0.65))
    y = 0.95
    for name in names:  # bottom first
        w = float(rng.uniform(0.25, 0.4))
        dx = float(rng.uniform(-0.04, 0.04))
        c.rect(cx + dx - w / 2, y - h, cx + dx + w / 2, y, color(rng, name))
        y -= h
    order = ", then ".join(names[1:-1])
    middle = f", then {order}" if order else ""
    return c.finish(), (f"a stack of {NUMBER_WORDS[k]} blocks: {names[0]} at the bottom{middle}, {names[-1]} on top, "
                        f"on {article(bg)} {bg} background")


_SKIES = {"day": ("a blue sky", (95, 160, 235)), "sunset": ("an orange sunset sky", (245, 150, 80)),
          "night": ("a dark blue night sky", (20, 25, 70))}
_GROUNDS = {"green hills": (60, 150, 60), "yellow sand dunes": (225, 195, 110), "the blue sea": (30, 80, 170)}


def _jitter(rng: np.random.Generator, rgb) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-12, 13, 3), 0, 255))


@register("compositions_landscapes", "compositions",
          "a sun or moon in a day, sunset or night sky above hills, dunes or sea")
def landscapes(ctx: Context):
    rng = ctx.rng
    sky, ground = choice(rng, list(_SKIES)), choice(rng, list(_GROUNDS))
    c = Canvas(ctx.size, _jitter(rng, _SKIES[sky][1]))
    horizon = float(rng.uniform(0.55, 0.72))
    body, body_rgb = ("a white moon", (235, 235, 220)) if sky == "night" else ("a yellow sun", (250, 215, 50))
    side = choice(rng, ["left", "right"])
    bx = float(rng.uniform(0.15, 0.35)) if side == "left" else float(rng.uniform(0.65, 0.85))
    br = float(rng.uniform(0.08, 0.12))
    c.shape("circle", bx, float(rng.uniform(br + 0.05, horizon - br - 0.08)), br, _jitter(rng, body_rgb))
    g = _jitter(rng, _GROUNDS[ground])
    if ground == "the blue sea":
        c.rect(0, horizon, 1, 1, g)
    else:  # rolling hills/dunes: overlapping ellipses on a base strip
        c.rect(0, horizon + 0.06, 1, 1, g)
        for _ in range(3):
            hx, hw = float(rng.uniform(-0.1, 1.1)), float(rng.uniform(0.35, 0.6))
            c.ellipse(hx - hw, horizon, hx + hw, horizon + 0.35, g)
    return c.finish(), f"{body} on the {side} in {_SKIES[sky][0]} above {ground}"


@register("compositions_houses", "compositions",
          "a simple house with coloured walls, roof and door on grass under a sky")
def houses(ctx: Context):
    rng = ctx.rng
    wall, roof, door = pick_colors(rng, 3, ["red", "yellow", "blue", "white", "orange", "pink", "brown", "purple"])
    sky = choice(rng, ["a blue sky", "a gray sky"])
    c = Canvas(ctx.size, _jitter(rng, (95, 160, 235) if sky == "a blue sky" else (190, 190, 195)))
    c.rect(0, 0.8, 1, 1, (60, 150, 60))
    w = float(rng.uniform(0.38, 0.5))
    cx = float(rng.uniform(w / 2 + 0.08, 1 - w / 2 - 0.08))
    top = float(rng.uniform(0.45, 0.55))
    c.rect(cx - w / 2, top, cx + w / 2, 0.82, color(rng, wall))
    c.polygon([(cx - w / 2 - 0.05, top), (cx + w / 2 + 0.05, top), (cx, top - float(rng.uniform(0.18, 0.26)))],
              color(rng, roof))
    dw = w * 0.28
    dx = cx + float(rng.uniform(-0.2, 0.2)) * w
    c.rect(dx - dw / 2, 0.82 - 0.18, dx + dw / 2, 0.82, color(rng, door))
    where = "on the left" if cx < 0.42 else "on the right" if cx > 0.58 else "in the middle"
    return c.finish(), (f"{article(wall)} {wall} house with {article(roof)} {roof} roof and {article(door)} {door} "
                        f"door, {where}, on green grass under {sky}")


@register("compositions_trees", "compositions", "one to three round or pine trees on grass or snow")
def trees(ctx: Context):
    rng = ctx.rng
    k = int(rng.integers(1, 4))
    kind = choice(rng, ["round", "pine"])
    snow = bool(rng.integers(2))
    c = Canvas(ctx.size, (95, 160, 235) if not snow else (185, 200, 215))
    ground_y = float(rng.uniform(0.72, 0.82))
    c.rect(0, ground_y, 1, 1, (245, 245, 250) if snow else (60, 150, 60))
    xs = sorted(rng.uniform(0.15, 0.85, size=k))
    while k > 1 and np.min(np.diff(xs)) < 0.26:  # trees must not merge into one
        xs = sorted(rng.uniform(0.15, 0.85, size=k))
    crown = (35, 110, 45) if kind == "pine" else (50, 150, 50)
    for x in xs:
        h = float(rng.uniform(0.45, 0.6))
        c.rect(x - 0.025, ground_y - 0.14, x + 0.025, ground_y + 0.02, (110, 70, 35))
        if kind == "pine":
            c.polygon([(x - 0.13, ground_y - 0.12), (x + 0.13, ground_y - 0.12), (x, ground_y - h)], crown)
        else:
            c.ellipse(x - 0.13, ground_y - h, x + 0.13, ground_y - 0.1, crown)
    what = f"{'a' if k == 1 else NUMBER_WORDS[k]} {kind} tree{'s' if k > 1 else ''}"
    where = "on snow under a pale winter sky" if snow else "on green grass under a blue sky"
    return c.finish(), f"{what} {where}"
