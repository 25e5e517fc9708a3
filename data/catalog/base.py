"""Catalog building blocks: the :class:`CatalogEntry` record, the per-item generation context and the
registry that family modules fill with :func:`register`.

Every built-in dataset is a *recipe*: a function ``recipe(ctx: Context) -> (PIL.Image, caption)`` that
draws one image–caption pair using only ``ctx.rng``. Generation is therefore deterministic given
(name, seed), and a recipe never touches the network or the disk beyond reading files that ship inside
installed packages.

Source pools. Recipes that sample from a finite source (sklearn digits, LFW faces, texture photos) draw
their source items from a pool chosen by ``ctx``: seed 0 (the canonical evaluation dataset) and any
other seed (what a model zoo pretrains on) use disjoint pools, and so do the train and held-out parts,
so neither a zoo model nor a training split ever sees a held-out source item. Procedural families
draw fresh continuous parameters per image, so seeds do not share images either; the photos family
is the exception: crops of one photo overlap between seeds (see :mod:`data.catalog.photos`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

DEFAULT_SIZE = 32      # pixels per side of every catalog image
DEFAULT_N = 96         # pairs per dataset: 80 train + 16 held-out
HELDOUT_FRACTION = 1 / 6

# Fractions of a finite source assigned to each pool (canonical = seed 0, zoo = any other seed).
_POOL_FRACTIONS = {"eval-train": 0.30, "eval-heldout": 0.10, "zoo-train": 0.50, "zoo-heldout": 0.10}


@dataclass(frozen=True)
class CatalogEntry:
    """One built-in dataset as listed by ``mandc data list``.

    ``n_train``/``n_heldout`` and ``resolution`` (width, height) are the defaults of
    :func:`data.catalog.load_builtin`; ``n=`` and ``size=`` override them.
    """

    name: str
    family: str
    description: str
    n_train: int = DEFAULT_N - round(DEFAULT_N * HELDOUT_FRACTION)
    n_heldout: int = round(DEFAULT_N * HELDOUT_FRACTION)
    resolution: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)


@dataclass
class Context:
    """What a recipe may use to draw one item.

    ``canonical`` is True for seed 0; ``heldout`` is True while drawing the held-out part.
    """

    rng: np.random.Generator
    size: int
    canonical: bool
    heldout: bool

    @property
    def pool(self) -> str:
        return f"{'eval' if self.canonical else 'zoo'}-{'heldout' if self.heldout else 'train'}"

    def pick(self, candidates) -> int:
        """One element of ``candidates`` (integer source ids) from this context's pool.

        A source id's pool depends only on the id (:func:`source_pool`), never on the candidate list,
        so e.g. a digit held out by ``digits_low`` at seed 0 is in no zoo pool of any digits dataset.
        """
        cands = np.asarray(candidates)
        mine = cands[source_pool(cands) == self.pool]
        if len(mine) == 0:
            raise ValueError(f"no source item of {len(cands)} candidates falls in pool {self.pool!r}")
        return int(mine[self.rng.integers(len(mine))])

    def region(self) -> tuple[float, float, float, float]:
        """Disjoint fractional regions ``(top, bottom, left, right)`` of a source photo per pool.

        For stationary sources (textures): crops from different pools never share pixels as long as
        the crop fits in the region.
        """
        return {
            "eval-train": (0.0, 0.45, 0.0, 0.72),
            "eval-heldout": (0.0, 0.45, 0.72, 1.0),
            "zoo-train": (0.45, 1.0, 0.0, 0.72),
            "zoo-heldout": (0.45, 1.0, 0.72, 1.0),
        }[self.pool]


def source_pool(ids) -> np.ndarray:
    """Pool name per integer source id: a fixed multiplicative hash of the id mapped onto the pool
    fractions (about 30/10/50/10 %), identical for every dataset, seed and candidate list."""
    u = (np.asarray(ids, dtype=np.uint64) * np.uint64(2654435761) % np.uint64(2**32)).astype(np.float64) / 2**32
    edges = np.cumsum(list(_POOL_FRACTIONS.values()))[:-1]
    return np.array(list(_POOL_FRACTIONS))[np.searchsorted(edges, u, side="right")]


Recipe = Callable[[Context], tuple[Image.Image, str]]

_REGISTRY: dict[str, tuple[CatalogEntry, Recipe]] = {}


def register(name: str, family: str, description: str) -> Callable[[Recipe], Recipe]:
    """Decorator: add ``recipe`` to the catalog under ``name``."""

    def deco(fn: Recipe) -> Recipe:
        if name in _REGISTRY:
            raise ValueError(f"duplicate catalog name {name!r}")
        _REGISTRY[name] = (CatalogEntry(name, family, description), fn)
        return fn

    return deco
