"""The built-in offline catalog: ``builtin:NAME`` datasets, generated on the fly and deterministic.

Each dataset belongs to a *family* (``shapes``, ``patterns``, ``gradients``, ``compositions``,
``digits``, ``textures``, ``photos``, ``faces``). Datasets of one family share image statistics and
caption vocabulary; datasets within a family differ in their sub-distribution. Everything is drawn with
PIL/numpy or cropped from files that ship inside installed packages; nothing is downloaded or cached on
disk.

Seeds: ``seed=0`` is the canonical (evaluation) dataset; any other seed gives fresh samples from the
same distribution, from source pools disjoint from seed 0's where the source is finite (see
:mod:`data.catalog.base`).

Example::

    >>> from data.catalog import load_builtin, list_catalog
    >>> ds = load_builtin("shapes_circles")            # 80 train + 16 held-out, 32x32 RGB
    >>> big = load_builtin("shapes_circles", seed=3, n=2000)   # pretraining data, never seed 0's images
"""
from __future__ import annotations

import difflib
import zlib

import numpy as np

# importing the family modules fills the registry
from data.catalog import compositions, digits, faces, gradients, patterns, photos, shapes, textures  # noqa: F401
from data.catalog.base import _REGISTRY, DEFAULT_N, DEFAULT_SIZE, HELDOUT_FRACTION, CatalogEntry, Context, register
from data.dataset import DatasetError, ImageTextDataset, SplitDataset

__all__ = ["CatalogEntry", "list_catalog", "families", "get_entry", "load_builtin", "register", "BUILTIN_PREFIX"]

BUILTIN_PREFIX = "builtin:"
_MAX_REDRAWS = 50  # per held-out item that collides with a training image


def families() -> list[str]:
    """Family names in catalog order."""
    return list(dict.fromkeys(entry.family for entry, _ in _REGISTRY.values()))


def list_catalog(family: str | None = None) -> list[CatalogEntry]:
    """All catalog entries, or those of one ``family``."""
    if family is not None and family not in families():
        raise DatasetError(f"unknown dataset family {family!r}; families are: {', '.join(families())}")
    return [entry for entry, _ in _REGISTRY.values() if family is None or entry.family == family]


def get_entry(name: str) -> CatalogEntry:
    """The :class:`CatalogEntry` for ``name`` (with or without the ``builtin:`` prefix)."""
    return _lookup(name)[0]


def _lookup(name: str):
    key = name[len(BUILTIN_PREFIX):] if name.startswith(BUILTIN_PREFIX) else name
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DatasetError(f"unknown built-in dataset {key!r}.{hint} "
                           f"Run `mandc data list` to see all {len(_REGISTRY)} built-in datasets.")
    return _REGISTRY[key]


def load_builtin(name: str, seed: int = 0, n: int | None = None, size: int | None = None) -> SplitDataset:
    """Generate built-in dataset ``name``.

    Args:
        name: a catalog name (``"shapes_circles"``; the ``builtin:`` prefix is accepted).
        seed: 0 is the canonical dataset; any other non-negative seed gives different samples.
        n: total number of pairs (default 96); the held-out split is ``round(n / 6)`` of them.
        size: image side in pixels (default 32).

    Returns a :class:`SplitDataset` whose images are ``size``×``size`` RGB. The same (name, seed, n,
    size) always gives byte-identical images and identical captions; no held-out image equals a
    training image.
    """
    entry, recipe = _lookup(name)
    n = DEFAULT_N if n is None else n
    size = DEFAULT_SIZE if size is None else size
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"builtin:{entry.name}: seed must be a non-negative integer, got {seed!r}")
    if n < 2:
        raise DatasetError(f"builtin:{entry.name}: n must be at least 2 (one train and one held-out pair), got {n}")
    if size < 8:
        raise DatasetError(f"builtin:{entry.name}: size must be at least 8 pixels, got {size}")
    n_heldout = max(1, round(n * HELDOUT_FRACTION))
    # Independent streams per split, keyed by a stable hash of the name (Python's hash() is salted).
    ss = np.random.SeedSequence([int(seed), zlib.crc32(entry.name.encode())])
    rng_train, rng_heldout = (np.random.default_rng(s) for s in ss.spawn(2))

    train_ctx = Context(rng_train, size, canonical=seed == 0, heldout=False)
    train = [recipe(train_ctx) for _ in range(n - n_heldout)]
    seen = {im.tobytes() for im, _ in train}
    heldout_ctx = Context(rng_heldout, size, canonical=seed == 0, heldout=True)
    heldout = []
    for _ in range(n_heldout):
        for _attempt in range(_MAX_REDRAWS):
            im, text = recipe(heldout_ctx)
            if im.tobytes() not in seen:
                break
        else:
            raise DatasetError(f"builtin:{entry.name}: could not draw a held-out image distinct from the "
                               f"training images")
        heldout.append((im, text))

    def split(items):
        return ImageTextDataset([im for im, _ in items], [t for _, t in items], entry.name)

    return SplitDataset(
        name=entry.name, train=split(train), heldout=split(heldout), ref=f"{BUILTIN_PREFIX}{entry.name}",
        family=entry.family, meta={"source": "builtin", "seed": int(seed), "n": n, "size": size,
                                   "description": entry.description},
    )
