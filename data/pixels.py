"""Bringing any image a user hands over to 8-bit RGB, without clipping, and saying what was done.

:func:`to_rgb` converts every PIL mode a user's folder can hold:

- EXIF orientation is applied first (a phone photo stored sideways is turned upright);
- high bit-depth greyscale is scaled to 8 bits by its range, never clipped: ``I;16`` (16-bit PNG/TIFF)
  by ``255/65535``; ``I`` (32-bit integer) kept when within 0–255, scaled as 16-bit when within
  0–65535, otherwise stretched from its min–max; ``F`` (float) ×255 when within [0, 1], kept when
  within [0, 255], otherwise stretched from its min–max (NaN/inf refused);
- transparency (``RGBA``, ``LA``, ``La``, ``PA``, ``RGBa``, and ``P``/``L``/``RGB`` with a transparent
  colour key) is composited onto a white background (:data:`BACKGROUND`): dropping alpha would
  expose whatever colour the transparent pixels happen to store;
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``1``, ``L``, ``P`` go through PIL's own conversion.

Each conversion is named by a short note (``"16-bit greyscale scaled to 8 bits"``...) that
:func:`data.imagefolder.read_imagefolder` counts into ``SplitDataset.meta["converted"]``.
:func:`resize_summary` says what bringing a split to the model's square size does to it.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
_ALPHA_MODES = ("RGBA", "LA", "La", "PA", "RGBa")
_PLAIN = ("RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")


class ImageModeError(ValueError):
    """An image mode that cannot be converted to RGB without guessing."""


def to_rgb(img: Image.Image, notes: Counter | None = None) -> Image.Image:
    """8-bit RGB copy of a loaded PIL image (see the module docstring for each mode).

    ``notes``, when given, counts one note per conversion that changes more than the channel layout.
    Raises :class:`ImageModeError` for a mode it does not know (the message names the mode).
    """
    note = (lambda s: notes.update([s])) if notes is not None else (lambda s: None)
    if img.getexif().get(0x0112, 1) not in (0, 1):  # 0x0112: Orientation
        img = ImageOps.exif_transpose(img)
        note("EXIF orientation applied")
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        out, how = _scale_to_uint8(arr, mode)
        note(how)
        return Image.fromarray(out, "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = (img.convert("RGBA") if mode != "La" else img.convert("LA").convert("RGBA"))
        if rgba.getextrema()[3][0] < 255:
            note(f"transparency composited on white ({mode})")
        bg = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode not in _PLAIN:
        raise ImageModeError(f"image mode {mode!r} is not supported (convert it to RGB or greyscale first)")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        note(f"{mode} converted to RGB")
    return img.convert("RGB")


def _scale_to_uint8(arr: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """``arr`` (any integer or float greyscale) as uint8 scaled by its range, and a note saying how."""
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ImageModeError(f"{mode} image has NaN or infinite values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        scaled, how = arr * (255.0 / 65535.0), "16-bit greyscale scaled to 8 bits"
    elif mode == "F" and lo >= 0 and hi <= 1:
        scaled, how = arr * 255.0, "float greyscale in [0, 1] scaled to 8 bits"
    elif lo >= 0 and hi <= 255:
        scaled, how = arr, f"{'32-bit integer' if mode == 'I' else 'float'} greyscale within 0–255 kept"
    elif mode == "I" and lo >= 0 and hi <= 65535:
        scaled, how = arr * (255.0 / 65535.0), "32-bit integer greyscale scaled to 8 bits as 16-bit"
    else:
        span = hi - lo or 1.0
        scaled, how = (arr - lo) * (255.0 / span), f"{mode} greyscale stretched from its range [{lo:g}, {hi:g}]"
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8), how


def array_to_image(arr: np.ndarray, notes: Counter | None = None) -> Image.Image:
    """``[H, W]`` or ``[H, W, 1|3|4]`` array as an RGB image.

    uint8 is taken as is; float in [0, 1] is ×255; other integer or float arrays are scaled to 8 bits
    by their range like :func:`to_rgb`'s ``I``/``F`` modes (uint16 by 255/65535), never clipped.
    """
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
        raise ValueError(f"array of shape {tuple(arr.shape)} is not an image (want [H, W] or [H, W, 3|4])")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"array of dtype {arr.dtype} is not an image")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ValueError("image array has NaN or infinite values")
        mode = "I;16" if arr.dtype == np.uint16 else "F" if np.issubdtype(arr.dtype, np.floating) else "I"
        arr, how = _scale_to_uint8(arr, mode)
        if notes is not None:
            notes.update([how])
    return to_rgb(Image.fromarray(arr), notes)


def resize_summary(images: list[Image.Image], size: int) -> dict:
    """What bringing ``images`` to ``size``×``size`` (centre-crop to square, then bicubic resize) does.

    Returns ``{"size": size, "images": N, "resized": n, "from": {"64x64": n, ...}, "cropped": n,
    "upscaled": n, "line": "..."}``; ``line`` is the one-line account printed per dataset.
    """
    sizes = Counter(f"{w}x{h}" for w, h in (im.size for im in images))
    resized = sum(1 for im in images if im.size != (size, size))
    cropped = sum(1 for im in images if im.size[0] != im.size[1])
    upscaled = sum(1 for im in images if min(im.size) < size)
    moved = {k: v for k, v in sizes.items() if k != f"{size}x{size}"}
    if not resized:
        line = f"{len(images)} images already {size}×{size}; none resized"
    else:
        src = ", ".join(f"{k.replace('x', '×')}" for k in sorted(moved, key=lambda k: (-moved[k], k))[:3])
        src += ", …" if len(moved) > 3 else ""
        line = f"{resized} of {len(images)} images resized from {src} to {size}×{size}"
        line += f"; {cropped} non-square images centre-cropped" if cropped else ""
        line += f"; {upscaled} upscaled" if upscaled else ""
    return {"size": size, "images": len(images), "resized": resized, "from": dict(moved), "cropped": cropped,
            "upscaled": upscaled, "line": line}


def conversion_line(converted: dict) -> str:
    """One line naming each pixel conversion and how many images it touched ('' when none)."""
    return "; ".join(f"{n} image{'s' if n > 1 else ''}: {what}" for what, n in sorted(converted.items()))


def image_account(ds, size: int) -> dict:
    """What was done to a :class:`~data.dataset.SplitDataset`'s images to train at ``size``: the
    :func:`resize_summary` of both splits, the pixel conversions counted when reading
    (``ds.meta["converted"]``), and one ``line`` saying both, printed once per dataset."""
    images = list(ds.train.images) + [im for im in ds.heldout.images if not any(im is t for t in ds.train.images)]
    resize = resize_summary(images, size)
    converted = dict(ds.meta.get("converted", {}))
    line = resize["line"] + (f"; converted: {conversion_line(converted)}" if converted else "")
    return {"line": f"{ds.name}: {line}", "resize": resize, "converted": converted}
