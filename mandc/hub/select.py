"""Crawled Hub models as plan candidates: the store's ``hub:`` nodes, filtered by size and license.

``mandc plan DATASET --crawl --max-params 1e9 --license mit,apache-2.0`` (:func:`mandc.plan.make_plan` with
``crawl=True``) takes its candidates from :func:`crawled_candidates`. The parameter count is the total over the
pipeline's components as the crawl read it from the safetensors headers (``info["hub"]["weights"]``); the
license is the card's.
"""
from __future__ import annotations

import math

from mandc.sizes import scaled_number

_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(value) -> int:
    """A parameter count from ``1e9``, ``1500000``, ``800M``, ``1.5B`` (decimal K/M/B/G/T); ``ValueError``
    (one line) otherwise."""
    n = scaled_number(value, _SCALE)
    if n is None:
        raise ValueError(f"a parameter count must be a number such as 1e9, 800M or 1.5B, got {value!r}")
    if not math.isfinite(n) or n <= 0:
        raise ValueError(f"a parameter count must be positive, got {value!r}")
    return int(n)


def parse_licenses(licenses) -> list[str]:
    """``["mit", "apache-2.0"]`` from a comma list, a list of them (repeated ``--license``) or None."""
    if not licenses:
        return []
    items = [licenses] if isinstance(licenses, str) else list(licenses)
    return sorted({x.strip().lower() for item in items for x in str(item).split(",") if x.strip()})


def total_params(info: dict) -> int | None:
    """Total parameters over a crawled model's components (safetensors headers), or None when unknown."""
    weights = (info.get("hub") or {}).get("weights") or {}
    return sum(int(w.get("params", 0)) for w in weights.values()) if weights else None


def crawled_candidates(store, max_params=None, licenses=None) -> list[str]:
    """The model refs ``hub:org/name@sha`` of ``store``'s crawled repos (status ``ok``) with at most
    ``max_params`` parameters in all and one of ``licenses`` (case-insensitive; a comma list or a list), in
    the store's order. Raises ``ValueError`` (one line, saying what the filter removed) when none is left."""
    limit = None if max_params is None else parse_count(max_params)
    wanted = parse_licenses(licenses)
    rows = [r for r in store.hub_repos(status="ok") if r.get("node") and store.has_model(r["node"])]
    if not rows:
        raise ValueError("the graph store has no crawled Hub models: run `mandc hub crawl` first")
    out, too_big, other = [], [], []
    for r in rows:
        info = r.get("info") or {}
        n = total_params(info)
        lic = str((info.get("hub") or {}).get("license") or "").lower()
        if limit is not None and (n is None or n > limit):
            too_big.append(r["repo_id"])
        elif wanted and lic not in wanted:
            other.append(f"{r['repo_id']} ({lic or 'no license'})")
        else:
            out.append(r["node"])
    if not out:
        why = []
        if too_big:
            why.append(f"{len(too_big)} over {limit:.3g} parameters ({', '.join(too_big)})")
        if other:
            why.append(f"{len(other)} under another license ({', '.join(other)})")
        raise ValueError(f"no crawled Hub model passes the filter: of {len(rows)} crawled, " + " and ".join(why)
                         + "; widen --max-params/--license or crawl more with `mandc hub crawl`")
    return out


__all__ = ["crawled_candidates", "parse_count", "parse_licenses", "total_params"]
