"""The fitted selector the package carries for the shipped reference (``mandc/shipped/selector-<key>.pkl``).

A cold ``mandc recommend FOLDER`` on the default store would otherwise fit the selector first (about 10 of
its CPU seconds). The file is keyed exactly as :func:`mandc.cache.selector_key` keys the cache, so it is
used only while the reference, the default ``SelectorConfig``, the selection code (``graph.py``,
``embed.py``, ``select.py``) and the pinned library versions are the ones it was fitted with; any other
key falls back to fitting (and caching) as before. Regenerate it after changing any of them::

    python -m mandc.ship            # writes mandc/shipped/selector-<key>.pkl, removes the stale one

(``tests/mandc/test_features_cache.py::test_shipped_selector_matches_the_reference`` fails while it is
stale.) It is a pickle written by this code and carried in the package, never a file a user handed over.
"""
from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path

from data.io import atomic_write
from mandc.cache import SHIPPED, selector_key


def reference_key() -> str:
    """The selector key of a store freshly seeded from the shipped reference, with the default config."""
    from mandc.planner import Planner
    from mandc.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        planner = Planner(Store(Path(tmp) / "graph.sqlite"), cache_dir=False)
        return selector_key(planner._graph_key(), planner.selector_config())


def ship_selector(out_dir=SHIPPED) -> Path:
    """Fit the selector on the shipped reference and write ``out_dir/selector-<key>.pkl`` (other
    ``selector-*.pkl`` files there are removed); returns its path."""
    from mandc.planner import Planner
    from mandc.store import Store

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        planner = Planner(Store(Path(tmp) / "graph.sqlite"), cache_dir=False)
        cfg = planner.selector_config()
        key = selector_key(planner._graph_key(), cfg)
        from mandc.select import Selector

        sel = Selector(cfg).fit(planner.graph())
    path = out_dir / f"selector-{key}.pkl"
    atomic_write(path, pickle.dumps(sel, protocol=pickle.HIGHEST_PROTOCOL))
    for p in out_dir.glob("selector-*.pkl"):
        if p != path:
            p.unlink()
    return path


if __name__ == "__main__":
    p = ship_selector()
    print(f"{p} ({p.stat().st_size} bytes)")
    sys.exit(0)
