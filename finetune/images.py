"""Sample grids: many small images (and optional captions) in one PNG."""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def save_grid(images: list[Image.Image], path: str | os.PathLike, nrow: int | None = None,
              captions: list[str] | None = None, scale: int | None = None, pad: int = 2) -> Path:
    """Write ``images`` as one PNG grid of ``nrow`` images per row (default ``ceil(sqrt(N))``).

    Small images are enlarged by an integer nearest-neighbour ``scale`` (default: to at least 96 px) so a
    32×32 sample is visible. ``captions`` (one per image) are wrapped under each cell.
    """
    if not images:
        raise ValueError("save_grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"save_grid: {len(images)} images but {len(captions)} captions")
    w, h = images[0].size
    scale = scale or max(1, math.ceil(96 / max(w, h)))
    cw, ch = w * scale, h * scale
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / nrow)
    font = ImageFont.load_default()
    chars = max(4, cw // 6)  # the default bitmap font is ~6 px per character
    wrapped = [textwrap.wrap(c, chars)[:3] for c in captions] if captions else None
    text_h = 11 * max((len(lines) for lines in wrapped), default=0) if wrapped else 0

    grid = Image.new("RGB", (nrow * (cw + pad) + pad, rows * (ch + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        x = pad + (i % nrow) * (cw + pad)
        y = pad + (i // nrow) * (ch + text_h + pad)
        grid.paste(im.convert("RGB").resize((cw, ch), Image.NEAREST), (x, y))
        if wrapped:
            for j, line in enumerate(wrapped[i]):
                draw.text((x, y + ch + 11 * j), line, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
