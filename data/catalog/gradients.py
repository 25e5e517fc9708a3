"""Family ``gradients``: smooth colour ramps (linear, diagonal, radial, three-stop, grayscale, grainy),
captioned with the colours and where each one is."""
from __future__ import annotations

import numpy as np
from PIL import Image

from data.catalog.base import Context, register
from data.catalog.draw import CHROMATIC, choice, color, pick_colors, place

_PALETTE = CHROMATIC + ["white", "black"]
_SIDES = {  # direction -> (words for the start, words for the end, ramp as a function of (x, y))
    "down": ("at the top", "at the bottom", lambda x, y: y),
    "up": ("at the bottom", "at the top", lambda x, y: 1 - y),
    "right": ("on the left", "on the right", lambda x, y: x),
    "left": ("on the right", "on the left", lambda x, y: 1 - x),
}
_CORNERS = {
    "tl": ("in the top left", "in the bottom right", lambda x, y: (x + y) / 2),
    "br": ("in the bottom right", "in the top left", lambda x, y: 1 - (x + y) / 2),
    "tr": ("in the top right", "in the bottom left", lambda x, y: (1 - x + y) / 2),
    "bl": ("in the bottom left", "in the top right", lambda x, y: (1 + x - y) / 2),
}


def _xy(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(size, dtype=np.float32) / max(size - 1, 1)
    return np.meshgrid(t, t)


def _ramp(t: np.ndarray, stops: list) -> np.ndarray:
    """Piecewise-linear interpolation of RGB ``stops`` (evenly spaced) at ``t`` ∈ [0, 1] → [H, W, 3]."""
    stops = np.asarray(stops, np.float32)
    pos = np.clip(t, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    return (1 - f) * stops[i] + f * stops[i + 1]


def _image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))


def _linear(ctx: Context, grain: float = 0.0):
    rng = ctx.rng
    a, b = pick_colors(rng, 2, _PALETTE)
    start, end, f = _SIDES[choice(rng, list(_SIDES))]
    x, y = _xy(ctx.size)
    arr = _ramp(f(x, y), [color(rng, a), color(rng, b)])
    if grain:
        arr = arr + rng.normal(0, grain, size=arr.shape[:2])[..., None]
    kind = "a grainy gradient" if grain else "a smooth gradient"
    return _image(arr), f"{kind} from {a} {start} to {b} {end}"


@register("gradients_linear", "gradients", "a smooth two-colour gradient along one side of the image")
def linear(ctx: Context):
    return _linear(ctx)


@register("gradients_grainy", "gradients", "a two-colour gradient with visible film grain")
def grainy(ctx: Context):
    return _linear(ctx, grain=float(ctx.rng.uniform(14, 24)))


@register("gradients_diagonal", "gradients", "a smooth two-colour gradient from one corner to the opposite one")
def diagonal(ctx: Context):
    rng = ctx.rng
    a, b = pick_colors(rng, 2, _PALETTE)
    start, end, f = _CORNERS[choice(rng, list(_CORNERS))]
    x, y = _xy(ctx.size)
    return _image(_ramp(f(x, y), [color(rng, a), color(rng, b)])), f"a diagonal gradient from {a} {start} to {b} {end}"


@register("gradients_radial", "gradients", "a radial gradient from a coloured centre to a different colour outside")
def radial(ctx: Context):
    rng = ctx.rng
    a, b = pick_colors(rng, 2, _PALETTE)
    cx, cy, where = place(rng, 0.0)
    x, y = _xy(ctx.size)
    reach = float(rng.uniform(0.5, 0.9))
    t = np.hypot(x - cx, y - cy) / reach
    where = "in the middle" if where == "in the centre" else where
    return _image(_ramp(t, [color(rng, a), color(rng, b)])), f"a radial gradient, {a} {where} fading to {b} around it"


@register("gradients_three_stop", "gradients", "a vertical or horizontal gradient through three colours")
def three_stop(ctx: Context):
    rng = ctx.rng
    names = pick_colors(rng, 3, _PALETTE)
    start, end, f = _SIDES[choice(rng, list(_SIDES))]
    x, y = _xy(ctx.size)
    arr = _ramp(f(x, y), [color(rng, n) for n in names])
    return _image(arr), f"a gradient of three colours, {names[0]} {start}, then {names[1]}, then {names[2]} {end}"


@register("gradients_grayscale", "gradients", "a gray ramp between two different shades along one side")
def grayscale(ctx: Context):
    rng = ctx.rng
    shades = {"black": 15, "dark gray": 70, "gray": 128, "light gray": 190, "white": 245}
    a, b = pick_colors(rng, 2, list(shades))
    while abs(shades[a] - shades[b]) < 100:  # keep a clearly visible ramp
        a, b = pick_colors(rng, 2, list(shades))
    start, end, f = _SIDES[choice(rng, list(_SIDES))]
    x, y = _xy(ctx.size)
    ga, gb = shades[a] + rng.integers(-8, 9), shades[b] + rng.integers(-8, 9)
    arr = _ramp(f(x, y), [(ga,) * 3, (gb,) * 3])
    return _image(arr), f"a grayscale gradient from {a} {start} to {b} {end}"
