"""Source files that ship inside installed packages (scikit-image, scikit-learn, matplotlib), decoded
once per process (``lru_cache``) and never downloaded.

Package folders are found with ``importlib.util.find_spec`` so that reading a photo does not pay for
importing the package (``import sklearn.datasets`` alone takes over a second).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from data.dataset import DatasetError

# (package, folder inside it)
_FOLDERS = {
    "skimage": ("skimage", "data"),
    "sklearn": ("sklearn", "datasets/data"),
    "sklearn_images": ("sklearn", "datasets/images"),
    "matplotlib": ("matplotlib", "mpl-data/sample_data"),
}


def bundled_path(where: str, filename: str) -> Path:
    """Path of ``filename`` inside an installed package's data folder (``where`` is a key of ``_FOLDERS``)."""
    package, sub = _FOLDERS[where]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"built-in dataset source needs the package {package!r}, which is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / sub / filename
    if not path.is_file():
        raise DatasetError(f"built-in dataset source {filename!r} is missing from the installed {package} "
                           f"(looked for {path}); reinstall {package}")
    return path


@functools.lru_cache(maxsize=None)
def photo(where: str, filename: str) -> Image.Image:
    """A bundled photo as an RGB PIL image (alpha composited on white). Cached: do not modify it."""
    with Image.open(bundled_path(where, filename)) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, im).convert("RGB")
        return im.convert("RGB")


@functools.lru_cache(maxsize=None)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (the file behind ``sklearn.datasets.load_digits``).

    Returns ``(images [1797, 8, 8] float32 in [0, 1] with ink = 1, labels [1797] int)``.
    """
    arr = np.loadtxt(bundled_path("sklearn", "digits.csv.gz"), delimiter=",", dtype=np.float32)
    return arr[:, :-1].reshape(-1, 8, 8) / 16.0, arr[:, -1].astype(int)


@functools.lru_cache(maxsize=None)
def lfw_subset() -> np.ndarray:
    """scikit-image's bundled LFW subset: ``[200, 25, 25]`` float in [0, 1]; the first 100 are faces,
    the last 100 are non-face patches of natural images."""
    return np.load(bundled_path("skimage", "lfw_subset.npy"))


def random_crop(img: Image.Image, rng: np.random.Generator, size: int, side: tuple[float, float],
                region: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)) -> tuple[Image.Image, float]:
    """A random square crop of ``img`` resized to ``size``×``size`` (Lanczos), and its side as a fraction
    of the image's shorter side.

    ``side`` is the (min, max) crop side as a fraction of the shorter side; the crop lies inside
    ``region`` = (top, bottom, left, right) fractions of the image, and is shrunk to fit it.
    """
    w, h = img.size
    top, bottom, left, right = int(region[0] * h), int(region[1] * h), int(region[2] * w), int(region[3] * w)
    s = int(round(rng.uniform(*side) * min(w, h)))
    s = max(8, min(s, bottom - top, right - left))
    y = int(rng.integers(top, bottom - s + 1))
    x = int(rng.integers(left, right - s + 1))
    # reducing_gap: box-reduce by an integer factor first, then Lanczos (~10x faster on big crops)
    return img.resize((size, size), Image.LANCZOS, box=(x, y, x + s, y + s), reducing_gap=3.0), s / min(w, h)
