"""Leave-one-model-out (LOMO): how well a model that enters the graph with features and lineage only —
a crawled Hub model, nothing measured yet — is ranked among the measured ones.

For every model ``m`` with performance edges and every seed: ``h`` = the graph with all of ``m``'s
performance edges removed (:meth:`MatchingGraph.without_model`) (the other models' scores re-normalised without it). A method places ``m``
on every profiled dataset ``d``; the other models keep their measured order on ``d`` (from ``h``), and
``m`` is inserted at the method's position. That ranking is scored against ``d``'s true one with the
metrics of :func:`mandc.evaluate.score_ranking` (top-1: the first model is a true winner of ``d``;
regret; Kendall τ over all models) and two of ``m`` itself: ``rank_err``, the absolute difference
between ``m``'s placed and true positions, and ``win_top1``, on the datasets ``m`` wins, how often it is
placed first. Averaged over datasets, then over the held-out models, then seeds.

Methods (how ``m``'s position on ``d`` is chosen):

* ``mandc`` / ``lgbm_features`` — the fitted selector (:mod:`mandc.evaluate`'s configs) predicts all
  models on ``d``; ``m`` goes below the others it predicts above it. Like any target, ``d`` is predicted
  with its own perf edges hidden, so the selector sees ``m``'s features (shape, card embedding,
  pretraining mixture) and, through the graph's lineage edges, the scores ``m`` inherits from its base on
  the datasets like ``d`` (:meth:`MatchingGraph.inherited_scores`; ``lgbm_features`` reads no graph).
* ``no_lineage`` — ``mandc`` with ``SelectorConfig(lineage=False)``: what the lineage adds to it.
* ``base_model`` — lineage alone: ``m`` takes its base model's measured score on ``d`` itself (the zoo's
  ``parent``, stated in the card as ``base_model``; a crawled model's store lineage); models without a
  base use ``family_mean``.
* ``family_mean`` — ``m`` takes the mean measured score on ``d`` of the models of its family (unet/dit).
* ``random`` — the exact expectation over a uniformly random position of ``m``.

``lineage_only`` in the result repeats the comparison on the models that have a base in the graph,
``no_base`` on those that have none (there ``mandc`` and ``no_lineage`` agree exactly: a model without
lineage inherits nothing, and the other models' features do not depend on it).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from mandc.evaluate import score_ranking, selector_config
from mandc.graph import MatchingGraph
from mandc.select import Selector

LOMO_METHODS = ("mandc", "no_lineage", "lgbm_features", "base_model", "family_mean", "random")
_LEARNED = ("mandc", "no_lineage", "lgbm_features")
METRICS = ("top1", "regret", "kendall", "rank_err", "win_top1")


def base_of(graph: MatchingGraph, model: str) -> str | None:
    """``model``'s (first) base model in the graph (:meth:`MatchingGraph.bases`), or None."""
    return next(iter(graph.bases(model)), None)


def insert_ranking(order_others: list[str], model: str, position: int) -> dict[str, float]:
    """Scores that rank ``order_others`` (best first) with ``model`` inserted at ``position``."""
    order = order_others[:position] + [model] + order_others[position:]
    return {m: float(len(order) - i) for i, m in enumerate(order)}


def _position(scores_h: dict[str, float], order_others: list[str], model: str, value: float) -> int:
    """How many other models score strictly above ``value`` (ties: ``model`` goes after them)."""
    return sum(scores_h[o] >= value for o in order_others)


def _place(method: str, seed: int, h: MatchingGraph, model: str, datasets: list[str]) -> dict[str, int]:
    """``{dataset: position of model}`` for one method."""
    out = {}
    if method in _LEARNED:
        cfg = selector_config("mandc", seed) if method == "no_lineage" else selector_config(method, seed)
        sel = Selector(replace(cfg, lineage=False) if method == "no_lineage" else cfg).fit(h)
        for d in datasets:
            pred, others = sel.predict(h, d), _order(h, d)
            out[d] = sum(pred.get(o, -math.inf) > pred.get(model, -math.inf) for o in others)
        return out
    fam = h.model_info(model).get("family")
    for d in datasets:
        sc, others = h.scores(d), _order(h, d)
        inherited = h.inherited_scores(d) if method == "base_model" else {}
        if model in inherited:
            value = inherited[model]
        else:
            same = [sc[o] for o in others if h.model_info(o).get("family") == fam] or list(sc.values())
            value = float(np.mean(same))
        out[d] = _position(sc, others, model, value)
    return out


def _order(h: MatchingGraph, d: str) -> list[str]:
    sc = h.scores(d)
    return sorted(sc, key=lambda m: (-sc[m], m))


def evaluate_lomo(graph: MatchingGraph, seeds: int = 1, methods=LOMO_METHODS, models: list[str] | None = None,
                  progress=None) -> dict:
    """LOMO over ``graph`` (see the module docstring). Returns ``{"models": [...], "with_base": [...], "seeds",
    "seconds", "methods": {method: {metric: mean}}, "lineage_only": {...}, "no_base": {...},
    "per_model": {model: {method: {metric}}}}``."""
    unknown = [m for m in methods if m not in LOMO_METHODS]
    if unknown:
        raise ValueError(f"unknown LOMO method(s) {unknown}; known: {', '.join(LOMO_METHODS)}")
    t0 = time.perf_counter()
    measured = {m for d in graph.profiled for m in graph.scores(d)}
    models = [m for m in (models or graph.models) if m in measured]
    if len(models) < 3:
        raise ValueError(f"leave-one-model-out needs at least 3 measured models, the graph has {len(models)}")
    per: dict[str, dict[str, dict[str, float]]] = {}
    for i, m in enumerate(models):
        h = graph.without_model(m)
        datasets = [d for d in graph.profiled if m in graph.scores(d) and len(h.scores(d)) >= 1]
        per[m] = {}
        for method in methods:
            runs = []
            for seed in range(seeds if method in _LEARNED else 1):
                if method == "random":
                    runs.append(_random(graph, h, m, datasets))
                    continue
                pos = _place(method, seed, h, m, datasets)
                runs.append(_mean([_metrics(graph, h, m, d, pos[d]) for d in datasets]))
            per[m][method] = _mean(runs)
        if progress is not None:
            progress(i + 1, len(models))
    with_base = [m for m in models if base_of(graph, m) is not None]
    no_base = [m for m in models if m not in with_base]
    return {"models": models, "with_base": with_base, "seeds": seeds, "seconds": round(time.perf_counter() - t0, 1),
            "methods": {k: _mean([per[m][k] for m in models]) for k in methods},
            "lineage_only": {k: _mean([per[m][k] for m in with_base]) for k in methods} if with_base else {},
            "no_base": {k: _mean([per[m][k] for m in no_base]) for k in methods} if no_base else {},
            "per_model": per}


def _metrics(graph: MatchingGraph, h: MatchingGraph, m: str, d: str, position: int) -> dict[str, float]:
    """The ranking metrics of ``m`` placed at ``position`` on ``d``, plus ``m``'s own rank error and, where
    ``m`` is a winner of ``d``, whether it was placed first."""
    sc = graph.scores(d)
    out = score_ranking(insert_ranking(_order(h, d), m, position), sc, graph.raw(d))
    true_pos = sum(v > sc[m] for o, v in sc.items() if o != m)
    out["rank_err"] = float(abs(position - true_pos))
    if true_pos == 0:
        out["win_top1"] = float(position == 0)
    return out


def _random(graph, h, m, datasets) -> dict[str, float]:
    rows = []
    for d in datasets:
        n = len(_order(h, d)) + 1
        rows.append(_mean([_metrics(graph, h, m, d, p) for p in range(n)]))
    return _mean(rows)


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the rows that have it (``win_top1`` only where the model wins)."""
    out = {}
    for k in METRICS:
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k] = round(float(np.mean(vals)), 4)
    return out


def to_markdown(res: dict) -> str:
    """The LOMO tables: methods × (top-1, regret, Kendall τ, rank error, wins placed first), over all models,
    over those with a base model and over those without."""
    n_base = len(res["with_base"])
    lines = [f"Leave-one-model-out over {len(res['models'])} models ({n_base} with a base model), "
             f"{res['seeds']} seed(s)"]
    nan = float("nan")
    for title, rows in (("all models", res["methods"]), (f"the {n_base} with a base model", res["lineage_only"]),
                        (f"the {len(res['models']) - n_base} without", res.get("no_base", {}))):
        if not rows:
            continue
        lines += ["", f"{title}:", "", "| method | top-1 | regret | Kendall τ | rank err | wins placed first |",
                  "|---|---|---|---|---|---|"]
        for k, v in rows.items():
            lines.append(f"| {k} | {v['top1']:.3f} | {v['regret']:.3f} | {v['kendall']:.3f} | {v['rank_err']:.2f} | "
                         f"{v.get('win_top1', nan):.3f} |")
    return "\n".join(lines)
