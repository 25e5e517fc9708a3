"""The Planner's caches: fitted selectors and their predictions, in memory and on disk.

A fitted :class:`~mandc.select.Selector` is a pure function of the graph's contents, the selector config,
the selection code and the library versions, so :func:`selector_key` hashes exactly those, and
:class:`SelectorCache` keeps, under ``cache_dir`` (default ``$MANDC_HOME/cache``):

* ``selector-<key>.pkl``: the fitted selector (pickled by this process's own code: a cache, never a file a
  user hands over; a stale or truncated one is refitted, never trusted);
* ``predictions-<key>.json``: ``{"predictions": {dataset ref: {model: score}}, "fitted": {...}}`` for the
  graph's own dataset nodes, so a later ``recommend`` in any process answers without importing torch, PyG
  or LightGBM.

The :data:`KEEP` most recently used files of each kind are kept.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

from data.io import atomic_write, canonical_json, mandc_home

KEEP = 8  # fitted selectors (and prediction files) kept on disk, newest first
SELECTION_CODE = ("graph.py", "embed.py", "select.py")  # their source is part of the key
LIBRARIES = ("lightgbm", "torch", "torch_geometric", "scikit-learn", "numpy")


def selector_key(graph_key: str, cfg) -> str:
    """32 hex digits: sha256 of ``graph_key`` (the graph's contents), the config's fields, the source of
    :data:`SELECTION_CODE` and the versions of :data:`LIBRARIES` — a code or library change must not reuse
    a selector fitted by the old one."""
    import importlib.metadata as md

    h = hashlib.sha256()
    h.update(graph_key.encode())
    h.update(canonical_json(dataclasses.asdict(cfg)).encode())
    here = Path(__file__).parent
    for name in SELECTION_CODE:
        p = here / name
        h.update(p.read_bytes() if p.is_file() else b"-")
    for dist in LIBRARIES:
        try:
            h.update(f"{dist}={md.version(dist)}".encode())
        except md.PackageNotFoundError:
            pass
    return h.hexdigest()[:32]


class SelectorCache:
    """Fitted selectors by key, in memory and under ``cache_dir`` (``None``: the default; ``False``: memory only)."""

    def __init__(self, cache_dir=None, keep: int = KEEP):
        self.dir = None if cache_dir is False else Path(cache_dir) if cache_dir else mandc_home() / "cache"
        self.keep = keep
        self._fitted: dict[str, object] = {}

    def _path(self, kind: str, key: str, ext: str) -> Path | None:
        return self.dir / f"{kind}-{key}.{ext}" if self.dir is not None else None

    def selector(self, key: str, fit: Callable[[], object]) -> tuple[object, bool]:
        """``(selector, from_cache)``: from memory, from disk, or ``fit()`` now and stored."""
        if key in self._fitted:
            return self._fitted[key], True
        path = self._path("selector", key, "pkl")
        if path is not None and path.is_file():
            try:
                with open(path, "rb") as f:
                    sel = pickle.load(f)
                self._fitted[key] = sel
                os.utime(path)  # newest-used first when pruning
                return sel, True
            except Exception:  # a stale or truncated cache file is refitted, never trusted
                pass
        sel = fit()
        self._fitted[key] = sel
        if path is not None:
            atomic_write(path, pickle.dumps(sel, protocol=pickle.HIGHEST_PROTOCOL))
            self.prune()
        return sel, False

    def predictions(self, key: str, ref: str) -> tuple[dict[str, float], dict] | None:
        """``(scores, fitted)`` of dataset ``ref`` from ``predictions-<key>.json``, or None."""
        path = self._path("predictions", key, "json")
        if path is None or not path.is_file():
            return None
        try:
            cached = json.loads(path.read_text())
            if ref in cached["predictions"]:
                os.utime(path)
                return cached["predictions"][ref], cached["fitted"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def save_predictions(self, key: str, predictions: dict[str, dict[str, float]], fitted: dict) -> None:
        path = self._path("predictions", key, "json")
        if path is not None:
            atomic_write(path, json.dumps({"predictions": predictions, "fitted": fitted}).encode())
            self.prune()

    def prune(self) -> None:
        """Keep the :attr:`keep` most recently used fitted selectors and prediction files."""
        for pattern in ("selector-*.pkl", "predictions-*.json"):
            files = sorted(self.dir.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
            for p in files[self.keep:]:
                p.unlink(missing_ok=True)
