"""Image–caption datasets: the one in-memory type every other package consumes.

A dataset reference (``builtin:NAME``, an imagefolder path, or a ``datasets.Dataset``-like object) is
resolved by :func:`data.load_dataset` into a :class:`SplitDataset`: a training split and a held-out
split of :class:`ImageTextDataset`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image


class DatasetError(ValueError):
    """Bad dataset input. The message names every offending file or reference."""


def center_square(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop ``img`` to a square and resize it to ``size``×``size`` RGB (bicubic)."""
    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return img


@dataclass
class ImageTextDataset:
    """One split: RGB PIL images and their captions, index-aligned.

    Images may differ in size (a user's folder); :meth:`to_tensor` brings them to one square size.
    """

    images: list[Image.Image]
    captions: list[str]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise DatasetError(
                f"{self.name or 'dataset'}: {len(self.images)} images but {len(self.captions)} captions"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        return self.images[i], self.captions[i]

    @property
    def resolution(self) -> tuple[int, int]:
        """(width, height) of the first image; catalog datasets share one resolution."""
        return self.images[0].size if self.images else (0, 0)

    def subset(self, idx) -> "ImageTextDataset":
        idx = list(idx)
        return ImageTextDataset([self.images[i] for i in idx], [self.captions[i] for i in idx], self.name)

    def to_tensor(self, size: int | None = None) -> "torch.Tensor":  # noqa: F821
        """Pixels as a float tensor of shape ``[N, 3, size, size]`` scaled to ``[-1, 1]``.

        ``size`` defaults to the first image's height; non-square images are centre-cropped.
        """
        import torch  # here, not at the top: reading a folder and its cached features needs no torch

        if not self.images:
            return torch.zeros(0, 3, size or 0, size or 0)
        size = size or self.images[0].size[1]
        arr = np.stack([np.asarray(center_square(im, size), dtype=np.float32) for im in self.images])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0


@dataclass
class SplitDataset:
    """A resolved dataset reference: ``train`` and ``heldout`` splits plus provenance."""

    name: str
    train: ImageTextDataset
    heldout: ImageTextDataset
    ref: str = ""
    family: str | None = None  # catalog family (``shapes``, ``digits``...) or None for user data
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.train) + len(self.heldout)


def split_heldout(ds: ImageTextDataset, fraction: float = 0.2, seed: int = 0) -> tuple[ImageTextDataset, ImageTextDataset]:
    """Deterministic held-out split: ``max(1, round(fraction·N))`` items by a seeded permutation.

    A dataset of one item has no held-out split (the held-out set reuses it) rather than failing.
    """
    n = len(ds)
    if n < 2:
        return ds, ds
    k = min(n - 1, max(1, round(fraction * n)))
    perm = np.random.default_rng(seed).permutation(n)
    return ds.subset(sorted(perm[k:])), ds.subset(sorted(perm[:k]))
