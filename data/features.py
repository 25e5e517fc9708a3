"""Dataset fingerprints: :class:`DatasetFeatures`, computed from a dataset's training split.

The model selector compares datasets by the cosine similarity of their standardised feature vectors
(:func:`similarity_matrix`) and feeds the vectors to LightGBM, so every component is cheap, fixed-length
and independent of any other dataset.

Components (``N`` training images, each centre-cropped and resized to 32×32 RGB in [0, 1]):

* **size and resolution** — ``log2(1 + N)``; ``log2`` of the median width and height.
* **captions** — MiniLM sentence embeddings ``e_i`` (``[N, 384]``, unit norm). ``caption_mean`` is
  ``m = mean_i e_i``; ``caption_spread`` is ``mean_i (1 - cos(e_i, m))``. The vector form uses the
  fixed projection ``m @ Q`` with ``Q ∈ R^{384×16}`` the orthonormal factor of a Gaussian matrix drawn
  from seed ``PROJECTION_SEED`` (dataset-independent, so vectors of datasets profiled at different
  times stay comparable), plus mean words per caption and the fraction of distinct captions.
* **colour** — per-channel mean, standard deviation and skewness ``E[(x-μ)^3] / σ^3`` of all pixels
  (R, G, B); mean HSV saturation ``(max - min) / max``; fraction of near-gray pixels (saturation < 0.08).
* **spectrum** — the grayscale image times a Hann window, ``|FFT|²`` averaged over images inside 8
  log-spaced radial frequency bins (radius 1 to 16.5 cycles per image); the vector holds
  ``log10(p_k / Σ_j p_j + 1e-6)``, the spectrum's shape with overall contrast divided out.
* **structure** — edge density: fraction of pixels whose Sobel gradient magnitude of the grayscale
  image exceeds 0.5 (a step of 1/8 of the range); flatness: fraction below 0.04; mean entropy (bits) of
  each image's 32-bin gray histogram; diversity: RMS distance between 8×8 thumbnails of image pairs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

from data.dataset import DatasetError, ImageTextDataset, SplitDataset, center_square
from data.text import MINILM_DIM, embed_captions

FEATURES_VERSION = 1
STAT_SIZE = 32            # image statistics are taken at 32×32
PROJECTION_DIM = 16       # caption-mean projection in the vector form
PROJECTION_SEED = 20250813
SPECTRUM_BINS = 8
EDGE_THRESHOLD = 0.5      # Sobel magnitude (a unit step gives 4)
FLAT_THRESHOLD = 0.04
GRAY_SATURATION = 0.08
MAX_DIVERSITY_IMAGES = 64  # pairwise distances on the first 64 images: O(64²) is cheap and stable

_ARRAYS = {"caption_mean": MINILM_DIM, "color_mean": 3, "color_std": 3, "color_skew": 3, "spectrum": SPECTRUM_BINS}


@functools.lru_cache(maxsize=1)
def projection_matrix() -> np.ndarray:
    """The fixed orthonormal projection ``Q``: ``[384, 16]`` float64, ``Qᵀ Q = I``."""
    g = np.random.default_rng(PROJECTION_SEED).standard_normal((MINILM_DIM, PROJECTION_DIM))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))  # fix the sign ambiguity of QR so Q is unique


@dataclass
class DatasetFeatures:
    """The fingerprint of one dataset (see the module docstring for the definitions)."""

    name: str
    n_images: int
    resolution: tuple[int, int]  # (width, height), median over images
    caption_mean: np.ndarray     # [384] float32
    caption_spread: float
    caption_words: float
    caption_unique: float
    color_mean: np.ndarray       # [3] R, G, B in [0, 1]
    color_std: np.ndarray        # [3]
    color_skew: np.ndarray       # [3]
    saturation: float
    gray_fraction: float
    spectrum: np.ndarray         # [8] log10 of the normalised radial power
    edge_density: float
    flatness: float
    entropy: float
    diversity: float
    version: int = FEATURES_VERSION

    # ------------------------------------------------------------------ computing

    @classmethod
    def compute(cls, ds: SplitDataset | ImageTextDataset, name: str | None = None) -> "DatasetFeatures":
        """Features of ``ds`` (its train split for a :class:`SplitDataset`)."""
        split = ds.train if isinstance(ds, SplitDataset) else ds
        if not isinstance(split, ImageTextDataset):
            raise DatasetError(f"DatasetFeatures.compute needs a SplitDataset or ImageTextDataset, "
                               f"got {type(ds).__name__}")
        name = name if name is not None else ds.name
        if len(split) == 0:
            raise DatasetError(f"{name or 'dataset'}: cannot compute features of an empty dataset")
        caps = _caption_stats(split.captions)
        imgs = _image_stats(split.images)
        sizes = np.array([im.size for im in split.images])
        res = (int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1])))
        return cls(name=name, n_images=len(split), resolution=res, **caps, **imgs)

    @property
    def caption_projection(self) -> np.ndarray:
        """``caption_mean @ Q``: ``[16]`` float32."""
        return (self.caption_mean.astype(np.float64) @ projection_matrix()).astype(np.float32)

    # ------------------------------------------------------------------ vector form

    @staticmethod
    def feature_names() -> list[str]:
        """Names of the :meth:`to_vector` entries, in order."""
        return (["log2_size", "log2_width", "log2_height", "caption_spread", "caption_words", "caption_unique"]
                + [f"caption_proj_{i}" for i in range(PROJECTION_DIM)]
                + [f"color_{stat}_{c}" for stat in ("mean", "std", "skew") for c in "rgb"]
                + ["saturation", "gray_fraction"]
                + [f"spectrum_{k}" for k in range(SPECTRUM_BINS)]
                + ["edge_density", "flatness", "entropy", "diversity"])

    def to_vector(self) -> np.ndarray:
        """Fixed-length float32 vector, ordered as :meth:`feature_names` (45 entries)."""
        w, h = self.resolution
        v = np.concatenate([
            [np.log2(1 + self.n_images), np.log2(max(w, 1)), np.log2(max(h, 1)),
             self.caption_spread, self.caption_words, self.caption_unique],
            self.caption_projection, self.color_mean, self.color_std, self.color_skew,
            [self.saturation, self.gray_fraction], self.spectrum,
            [self.edge_density, self.flatness, self.entropy, self.diversity],
        ]).astype(np.float32)
        return v

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (arrays as lists)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.tolist() if isinstance(v, np.ndarray) else list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetFeatures":
        """Inverse of :meth:`to_dict`; checks the version, the keys and the array lengths."""
        if not isinstance(d, dict):
            raise DatasetError(f"dataset features must be a JSON object, got {type(d).__name__}")
        version = d.get("version", FEATURES_VERSION)
        if version != FEATURES_VERSION:
            raise DatasetError(f"dataset features {d.get('name', '')!r} have version {version}, this mandc reads "
                               f"version {FEATURES_VERSION}; recompute them")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d and n != "version"]
        unknown = [k for k in d if k not in names]
        if missing or unknown:
            raise DatasetError(f"dataset features {d.get('name', '')!r}: missing keys {missing}, "
                               f"unknown keys {unknown}")
        kw = dict(d)
        for key, n in _ARRAYS.items():
            arr = np.asarray(kw[key], dtype=np.float32 if key == "caption_mean" else np.float64)
            if arr.shape != (n,):
                raise DatasetError(f"dataset features {d['name']!r}: {key} must have {n} values, got shape {arr.shape}")
            kw[key] = arr
        kw["resolution"] = tuple(int(x) for x in kw["resolution"])
        return cls(**kw)


def similarity_matrix(vectors, standardize: bool = True) -> np.ndarray:
    """Cosine similarity ``[K, K]`` between the rows of ``vectors`` (``[K, D]`` or a list of
    :class:`DatasetFeatures`), after z-scoring each column over the K rows when ``standardize``
    (constant columns are left centred, not divided)."""
    rows = [v.to_vector() if isinstance(v, DatasetFeatures) else np.asarray(v) for v in vectors]
    x = np.stack(rows).astype(np.float64)
    if standardize:
        sd = x.std(0)
        x = (x - x.mean(0)) / np.where(sd > 1e-12, sd, 1.0)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


# ---------------------------------------------------------------------- components


def _caption_stats(captions: list[str]) -> dict:
    # Embed each distinct caption once (catalog photo/face datasets repeat a handful of captions).
    uniq, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    e = embed_captions(uniq.tolist()).astype(np.float64)[inverse]  # [N, 384], unit rows
    m = e.mean(0)
    cos = e @ m / max(np.linalg.norm(m), 1e-12)
    return {
        "caption_mean": m.astype(np.float32),
        "caption_spread": float(max(0.0, np.mean(1.0 - cos))),  # clip float noise of identical captions
        "caption_words": float(np.mean([len(c.split()) for c in captions])),
        "caption_unique": len(set(captions)) / len(captions),
    }


def _pixels(images: list[Image.Image]) -> np.ndarray:
    """``[N, 32, 32, 3]`` float64 in [0, 1]."""
    return np.stack([np.asarray(center_square(im, STAT_SIZE), dtype=np.float64) for im in images]) / 255.0


def _radial_bins(size: int) -> np.ndarray:
    """Bin index per FFT coefficient (``-1`` outside the bins), ``[size, size]``."""
    f = np.fft.fftfreq(size) * size
    r = np.hypot(f[:, None], f[None, :])
    edges = np.geomspace(1.0, size / 2 + 0.5, SPECTRUM_BINS + 1)
    idx = np.digitize(r, edges) - 1
    idx[(r < edges[0]) | (r >= edges[-1])] = -1
    return idx


def _image_stats(images: list[Image.Image]) -> dict:
    from scipy import ndimage

    x = _pixels(images)                                  # [N, S, S, 3]
    flat = x.reshape(-1, 3)
    mu, sd = flat.mean(0), flat.std(0)
    skew = np.where(sd > 1e-8, ((flat - mu) ** 3).mean(0) / np.maximum(sd, 1e-8) ** 3, 0.0)
    mx, mn = x.max(-1), x.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-8), 0.0)   # [N, S, S]

    gray = x @ np.array([0.299, 0.587, 0.114])           # [N, S, S]
    gx = ndimage.sobel(gray, axis=2, mode="nearest")
    gy = ndimage.sobel(gray, axis=1, mode="nearest")
    mag = np.hypot(gx, gy)

    window = np.outer(np.hanning(STAT_SIZE), np.hanning(STAT_SIZE))
    g = gray - gray.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(g * window)) ** 2).mean(0)          # [S, S], averaged over images
    bins = _radial_bins(STAT_SIZE)
    p = np.array([power[bins == k].mean() for k in range(SPECTRUM_BINS)])
    spectrum = np.log10(p / max(p.sum(), 1e-12) + 1e-6)

    hist = np.stack([np.histogram(im, bins=32, range=(0, 1))[0] for im in gray]) / gray[0].size
    entropy = -(hist * np.log2(np.where(hist > 0, hist, 1))).sum(1).mean()

    thumbs = np.stack([np.asarray(Image.fromarray(np.uint8(np.round(im * 255))).reduce(STAT_SIZE // 8), np.float64)
                       for im in x[:MAX_DIVERSITY_IMAGES]]).reshape(min(len(x), MAX_DIVERSITY_IMAGES), -1) / 255.0
    if len(thumbs) > 1:
        d2 = ((thumbs[:, None, :] - thumbs[None, :, :]) ** 2).mean(-1)
        diversity = float(np.sqrt(d2[np.triu_indices(len(thumbs), 1)]).mean())
    else:
        diversity = 0.0
    return {
        "color_mean": mu, "color_std": sd, "color_skew": skew,
        "saturation": float(sat.mean()), "gray_fraction": float((sat < GRAY_SATURATION).mean()),
        "spectrum": spectrum,
        "edge_density": float((mag > EDGE_THRESHOLD).mean()), "flatness": float((mag < FLAT_THRESHOLD).mean()),
        "entropy": float(entropy), "diversity": diversity,
    }
