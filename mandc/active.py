"""Active profiling: which (model, dataset) pairs to measure next, so that each GPU-minute of profiling
improves model selection most.

``suggest(graph, n)`` ranks the graph's unmeasured pairs (or the given ``candidates``) and returns the
best ``n`` as ``(model, dataset, reason)``, in three tiers:

1. **Models with no measurement** (e.g. newly crawled): one pair each, on the dataset where the
   selector ensemble ranks the model highest. Until it has an edge, a model is ranked from its
   features alone.
2. **Datasets with no measurement**: one pair each, the model of highest value ``v`` (below).
3. **Everything else, by the chance that the measurement changes a dataset's winner.** An ensemble of
   ``members`` selectors (:class:`mandc.select.Selector`, each fitted with a random quarter of the
   profiled datasets' performance edges hidden and its own seed, so the members differ where the
   data leave the answer open) ranks the models for every dataset. For dataset ``d`` with measured
   best model ``m*`` (none if ``d`` is unmeasured), the pool ``P_d`` is ``d``'s unmeasured models plus
   ``m*`` (measured models that lost to ``m*`` are out). Member ``k`` ranks the pool, position
   ``r_k(m) = 0, 1, ...``, and spreads one unit of belief over it, ``p_k(m) = e^{-r_k(m)/τ} / Σ_P e^{-r/τ}``
   with ``τ = 1`` (its top pick gets ~0.6 of a large pool: a selector's first choice is right about
   three times in four, not always). The value of measuring ``(m, d)`` is the ensemble's mean

       v(m, d) = (1/K) Σ_k p_k(m)

   — an estimate of the probability that ``m`` beats everything measured on ``d``. It is high where the
   members disagree or their top candidates are close, and low on a settled dataset (``m*`` on top of
   every member's pool). Ties go to the better mean ensemble rank, then to datasets with fewer
   measurements. Within one batch the picks are spread over datasets (the measurements of a batch come
   back together, so a second pair on one dataset is worth less than a first pair elsewhere): a pair's
   value is divided by :data:`SPREAD` for each pick its dataset already has in the batch.

   **Anchors.** A dataset's scores are min–max normalised over its measured models
   (:mod:`mandc.graph`), so a row where only likely winners are measured squeezes a close second to
   score 0 and misleads every selector trained on it. When all of ``d``'s measured models rank in the
   ensemble's top half, the model the ensemble ranks lowest gets value at least :data:`ANCHOR` (0.5):
   it fixes the low end of ``d``'s scale.

A graph with fewer than two profiled datasets cannot fit a selector; then the pairs of the
least-measured datasets and models come first. The learning curve that measures this against random
order is ``benchmarks/active.py`` (see the README).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import numpy as np

from mandc.graph import MatchingGraph
from mandc.select import Selector, SelectorConfig, rank_of


#: Temperature of the ensemble members' belief over a dataset's pool of candidates (see the module docstring).
TAU = 1.0
#: Value of the anchor pair of a dataset whose measured models all rank in the ensemble's top half.
ANCHOR = 0.5
#: Within a batch, a second pick on a dataset beats a first pick elsewhere only if its value is this many times larger.
SPREAD = 2.0


def _pool_rank(pos: dict[str, int], m: str, pool: set[str]) -> int:
    """``m``'s 0-based position among ``pool`` in one member's ranking (``pos``: model → overall position)."""
    return sum(pos.get(o, len(pos)) < pos.get(m, len(pos)) for o in pool)


def ensemble(graph: MatchingGraph, members: int = 4, cfg: SelectorConfig | None = None,
             seed: int = 0) -> list[Selector]:
    """``members`` selectors fitted on ``graph``, member ``k`` with seed ``seed + k`` and a random
    quarter of the profiled datasets' performance edges hidden (at least two datasets kept)."""
    cfg = cfg or SelectorConfig()
    profiled = graph.profiled
    rng = random.Random(seed)
    out = []
    for k in range(members):
        hide = rng.sample(profiled, min(len(profiled) // 4, len(profiled) - 2)) if len(profiled) > 2 else []
        g = graph.without_performance(hide) if hide else graph
        out.append(Selector(replace(cfg, seed=seed + k)).fit(g))
    return out


def suggest(graph: MatchingGraph, n: int, candidates=None, *, members: int = 4, cfg: SelectorConfig | None = None,
            seed: int = 0) -> list[tuple[str, str, str]]:
    """The ``n`` pairs to profile next, best first, as ``(model ref, dataset ref, reason)``.

    Args:
        graph: the matching graph (its measured pairs are never suggested).
        n: how many pairs (fewer when fewer are left).
        candidates: the ``(model, dataset)`` pairs that may be suggested (default: every pair of the
            graph's models and datasets without a performance edge).
        members: selectors in the ensemble; ``cfg``: their configuration (default: M&C's).
        seed: seeds the ensemble (which datasets each member hides, LightGBM bagging).
    """
    if n < 1:
        raise ValueError(f"suggest: n must be ≥ 1, got {n}")
    measured = {d: graph.scores(d) for d in graph.datasets}
    if candidates is None:
        cands = [(m, d) for d in graph.datasets for m in graph.models if m not in measured[d]]
    else:
        known_m, known_d = set(graph.models), set(graph.datasets)
        cands = []
        for m, d in candidates:
            if m not in known_m or d not in known_d:
                raise KeyError(f"suggest: candidate ({m}, {d}) names a model or dataset that is not in the graph")
            if m not in measured[d]:
                cands.append((m, d))
    cands = list(dict.fromkeys(cands))
    if not cands:
        return []
    per_model = Counter(m for d, sc in measured.items() for m in sc)
    if len(graph.profiled) < 2:  # nothing to fit a selector on: spread over the least-measured first
        cands.sort(key=lambda p: (len(measured[p[1]]), per_model[p[0]], p[1], p[0]))
        return [(m, d, "too few measured datasets to fit the selector: the least-measured pairs first")
                for m, d in cands[:n]]

    sels = ensemble(graph, members, cfg, seed)
    by_dataset: dict[str, list[str]] = {}
    for m, d in cands:
        by_dataset.setdefault(d, []).append(m)
    scored = []  # (tier, -value, mean rank, measurements of d, d, m, reason)
    for d, models in by_dataset.items():
        ranks = [rank_of(s.predict(graph, d)) for s in sels]
        pos = [{m: i for i, m in enumerate(r)} for r in ranks]
        best = rank_of(measured[d])[0] if measured[d] else None
        pool = set(models) | ({best} if best else set())
        w = np.array([[np.exp(-_pool_rank(p, m, pool) / TAU) for m in sorted(pool)] for p in pos])
        belief = dict(zip(sorted(pool), (w / w.sum(1, keepdims=True)).mean(0)))
        mean_rank_of = {m: float(np.mean([p.get(m, len(p)) for p in pos])) for m in graph.models}
        half = len(graph.models) / 2
        anchor = None  # d's measured models all look good: its min-max scale has no low end yet
        if best is not None and max(mean_rank_of[m] for m in measured[d]) < half:
            anchor = max(models, key=lambda m: (mean_rank_of[m], m))
        for m in models:
            v = float(belief[m])
            mean_rank = mean_rank_of[m]
            if m == anchor and v < ANCHOR:
                v = ANCHOR
                tier, why = 2, (f"anchors {d}'s score scale: only models the selector fits rank in the top half "
                                "are measured there, this is the one they rank lowest")
            elif per_model[m] == 0:
                tier, why = 0, f"{m} has no measurement yet"
            elif best is None:
                tier, why = 1, f"{d} has no measurement yet; the selector fits' likely winner (p≈{v:.2f})"
            else:
                tier, why = 2, f"p≈{v:.2f} that it beats the measured best ({best}) by the selector fits"
            scored.append((tier, -v, mean_rank, len(measured[d]), d, m, why))
    scored.sort()

    out: list[tuple[str, str, str]] = []
    taken_models, taken_datasets = set(), Counter()
    # tiers 0 and 1: one pair per new model, then per new dataset
    for tier, key in ((0, 5), (1, 4)):
        for row in scored:
            if len(out) >= n:
                return out
            if row[0] == tier and row[key] not in (taken_models if tier == 0 else taken_datasets):
                out.append((row[5], row[4], row[6]))
                taken_models.add(row[5])
                taken_datasets[row[4]] += 1
    # then the rest, by value, spread over datasets
    chosen = {(m, d) for m, d, _ in out}
    rest = [r for r in scored if (r[5], r[4]) not in chosen]
    rounds = Counter(taken_datasets)
    while rest and len(out) < n:
        # value discounted by SPREAD per pick already taken on the dataset in this batch
        row = min(rest, key=lambda r: (r[1] / SPREAD ** rounds[r[4]],) + r[2:4])
        rest.remove(row)
        out.append((row[5], row[4], row[6]))
        rounds[row[4]] += 1
    return out


__all__ = ["ensemble", "suggest"]
