"""Leave-one-dataset-out (LODO) and leave-one-family-out (LOFO) evaluation of model selectors on a matching graph.

**LODO** (``protocol="lodo"``): for every profiled dataset ``d`` and every seed, ``h =
graph.without_performance(d)`` (``d`` keeps its node and similarity edges, loses every performance
edge), each selector is fitted on ``h`` (embeddings and predictor rebuilt from scratch) and ranks the
models for ``d``; the ranking is scored against ``d``'s measured matrix row. The seed is the selectors'
own randomness (GNN init and masks, node2vec walks, LightGBM bagging); the data are the same.

**LOFO** (``protocol="lofo"``): the held-out unit is a catalog family instead: every profiled dataset
of family ``f`` loses its performance edges at once, the selectors are fitted once on that graph and
rank the models for each dataset of ``f``. Under LODO a held-out dataset keeps siblings of its own
family in the graph, so copying the nearest sibling's winner is hard to beat; LOFO asks what a user
with data from a domain nobody profiled gets. Datasets without a family are held out alone.

Metrics per (selector, seed, dataset), then averaged over datasets, then over seeds:

* ``top1`` — the chosen (top-ranked) model is a best model of ``d`` (lowest mean held-out loss).
* ``top3`` — a best model of ``d`` is among the top 3 ranked.
* ``rel1`` — ``best raw loss / chosen raw loss`` (≤ 1; 1 = perfect).
* ``regret`` — ``1 - score(chosen)``: the gap in ``d``'s min–max normalised score between the best
  model (score 1) and the chosen one (0 = perfect, 1 = picked the worst model).
* ``kendall`` — Kendall's τ-b between the predicted scores and the measured scores of all models.

Baselines: ``random`` (exact expectation over a uniform choice and a uniformly random ranking: no
sampling), ``most_frequent`` (the model best on most of the other datasets; ties by mean score),
``largest`` (most parameters), ``nearest_winner`` (the measured ranking of the most similar profiled
dataset), ``lgbm_features`` (LightGBM on model, data and pair features: nothing from the graph),
``zero_shot`` (the zero-shot probe alone: lowest loss before fine-tuning). Ablations of M&C:
``no_embedding``, ``no_neighbors``, ``no_data_edges`` (no similarity edges in the GNN and no neighbour
features), ``node2vec`` (instead of GraphSAGE), ``no_pair``, ``no_model_features``, ``no_data_features``.

The **noise ceiling** is how often the best model of a dataset is the same under two fine-tuning seeds
(averaged over datasets and over seed pairs): a selector's top-1 against a single seed's winner cannot
be trusted above it.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from mandc.graph import MatchingGraph
from mandc.select import Selector, SelectorConfig, embedder_key, make_embedder, rank_of

METRICS = ("top1", "top3", "rel1", "regret", "kendall")


# ------------------------------------------------------------------------------------------ baselines
class MostFrequentWinner:
    """Scores each model by how many profiled datasets it wins (+ its mean score / 100 to break ties)."""

    def fit(self, graph: MatchingGraph) -> "MostFrequentWinner":
        wins, total = Counter(), Counter()
        profiled = graph.profiled
        for d in profiled:
            sc = graph.scores(d)
            wins[graph.winner(d)] += 1
            for m, s in sc.items():
                total[m] += s / len(profiled)
        self.score = {m: wins[m] + total[m] / 100 for m in graph.models}
        return self

    def predict(self, graph, dataset_ref, probe=None):
        return dict(self.score)


class LargestModel:
    """Scores each model by ``log10_params`` (its depth·width as a tie-break)."""

    def fit(self, graph: MatchingGraph) -> "LargestModel":
        return self

    def predict(self, graph, dataset_ref, probe=None):
        f = {m: graph.model_features(m) for m in graph.models}
        return {m: f[m].get("log10_params", 0.0) + 1e-9 * f[m].get("depth", 0) * f[m].get("width", 0) for m in graph.models}


class NearestWinner:
    """The measured scores on the most similar profiled dataset (the 2nd nearest breaks its ties)."""

    def fit(self, graph: MatchingGraph) -> "NearestWinner":
        return self

    def predict(self, graph, dataset_ref, probe=None):
        near = graph.nearest(dataset_ref, n=2)
        if not near:
            return {m: 0.0 for m in graph.models}
        first = graph.scores(near[0][0])
        second = graph.scores(near[1][0]) if len(near) > 1 else {}
        return {m: first.get(m, 0.0) + 1e-3 * second.get(m, 0.0) for m in graph.models}


class ZeroShot:
    """The zero-shot probe alone: lower loss before fine-tuning ranks higher."""

    def fit(self, graph: MatchingGraph) -> "ZeroShot":
        return self

    def predict(self, graph, dataset_ref, probe=None):
        if not probe:
            raise ValueError("the zero-shot baseline needs probe={model: zero-shot loss}")
        return {m: -probe[m] if m in probe else -math.inf for m in graph.models}


# ------------------------------------------------------------------------------------------ registry
def mandc_config(**kw) -> SelectorConfig:
    """The M&C selector's configuration (the ``mandc`` row); keyword overrides for the ablations."""
    return SelectorConfig(**kw)


ABLATIONS: dict[str, dict] = {
    "no_embedding": {"embedding": "none"},
    "no_neighbors": {"neighbor_features": False},
    "no_data_edges": {"use_data_edges": False},
    "node2vec": {"embedding": "node2vec"},
    "no_pair": {"pair_features": False},
    "no_model_features": {"model_features": False},
    "no_data_features": {"data_features": False},
}

BASELINES = ("random", "most_frequent", "largest", "nearest_winner", "lgbm_features", "zero_shot")
SELECTOR_NAMES = ("mandc", "mandc_probe") + BASELINES + tuple(ABLATIONS)
_SEEDLESS = {"most_frequent": MostFrequentWinner, "largest": LargestModel, "nearest_winner": NearestWinner,
             "zero_shot": ZeroShot}
_PROBED = {"mandc_probe", "zero_shot"}


def selector_config(name: str, seed: int, base: SelectorConfig | None = None) -> SelectorConfig | None:
    """The LightGBM selector config behind ``name`` (None for the non-learned baselines)."""
    base = replace(base or mandc_config(), seed=seed)
    if name == "mandc":
        return base
    if name == "mandc_probe":
        return replace(base, probe=True)
    if name == "lgbm_features":
        return replace(base, embedding="none", neighbor_features=False)
    if name in ABLATIONS:
        return replace(base, **ABLATIONS[name])
    return None


# ------------------------------------------------------------------------------------------ metrics
def score_ranking(pred: dict[str, float], scores: dict[str, float], raw: dict[str, float]) -> dict[str, float]:
    """The five metrics of one predicted ranking against one dataset's measured scores/losses."""
    from scipy.stats import kendalltau

    models = sorted(scores)
    order = rank_of({m: pred.get(m, -math.inf) for m in models})
    best = max(scores.values())
    winners = {m for m in models if scores[m] >= best}
    chosen = order[0]
    tau = kendalltau([pred.get(m, -math.inf) for m in models], [scores[m] for m in models]).statistic
    return {"top1": float(chosen in winners), "top3": float(bool(winners & set(order[:3]))),
            "rel1": min(raw.values()) / raw[chosen], "regret": best - scores[chosen],
            "kendall": 0.0 if tau is None or math.isnan(tau) else float(tau)}


def random_expectation(scores: dict[str, float], raw: dict[str, float], k: int = 3) -> dict[str, float]:
    """Exact expected metrics of a uniformly random ranking (``E[τ] = 0`` by symmetry)."""
    models = list(scores)
    n = len(models)
    best = max(scores.values())
    w = sum(scores[m] >= best for m in models)
    # P(no winner in the first k of a random permutation) = C(n-w, k) / C(n, k)
    top3 = 1.0 - (math.comb(n - w, min(k, n)) / math.comb(n, min(k, n)))
    return {"top1": w / n, "top3": top3, "rel1": float(np.mean([min(raw.values()) / raw[m] for m in models])),
            "regret": float(np.mean([best - scores[m] for m in models])), "kendall": 0.0}


def noise_ceiling(graph: MatchingGraph) -> float | None:
    """How often a dataset's best model is the same under two seeds (mean over datasets and seed pairs);
    None when no dataset has two seeds of every model."""
    agree = []
    for d in graph.profiled:
        by_seed: dict = {}
        for m, runs in graph.runs(d).items():
            for r in runs:
                by_seed.setdefault(r["seed"], {}).setdefault(m, []).append(r["loss"])
        models = set(graph.raw(d))
        seeds = sorted((s for s, v in by_seed.items() if set(v) == models), key=str)
        for a, b in itertools.combinations(seeds, 2):
            la = {m: np.mean(v) for m, v in by_seed[a].items()}
            lb = {m: np.mean(v) for m, v in by_seed[b].items()}
            agree.append(float(min(la, key=lambda m: (la[m], m)) == min(lb, key=lambda m: (lb[m], m))))
    return float(np.mean(agree)) if agree else None


def matrix_stats(graph: MatchingGraph) -> dict:
    """``{"models", "datasets", "max_winner_share", "distinct_winners"}`` of the measured matrix."""
    winners = Counter()
    for d in graph.profiled:
        winners[graph.winner(d)] += 1
    n = len(graph.profiled)
    return {"models": len(graph.models), "datasets": n,
            "max_winner_share": max(winners.values()) / n if n else 0.0, "distinct_winners": len(winners)}


# ------------------------------------------------------------------------------------------ LODO
@dataclass
class EvalResult:
    """Per-selector metrics: ``per_seed[name][metric]`` is a list over seeds (each a mean over
    datasets); ``per_dataset[name][dataset]`` the seed-mean metrics of one dataset."""

    matrix: dict
    noise_ceiling: float | None
    seeds: list[int]
    per_seed: dict = field(default_factory=dict)
    per_dataset: dict = field(default_factory=dict)
    seconds: float = 0.0
    protocol: str = "lodo"
    groups: int = 0                    # held-out units: datasets (lodo) or families (lofo)

    def summary(self) -> dict[str, dict[str, float]]:
        return {n: {k: float(np.mean(v)) for k, v in ms.items()} for n, ms in self.per_seed.items()}

    def spread(self) -> dict[str, dict[str, float]]:
        """Standard deviation over seeds."""
        return {n: {k: float(np.std(v)) for k, v in ms.items()} for n, ms in self.per_seed.items()}

    def to_json(self) -> dict:
        """The benchmark JSON of the issue: matrix, noise ceiling, and the mean metrics per selector."""
        return {"protocol": self.protocol, "matrix": self.matrix, "noise_ceiling": self.noise_ceiling,
                "selectors": {n: {k: round(v, 4) for k, v in s.items()} for n, s in self.summary().items()}}

    def to_markdown(self) -> str:
        s, sd = self.summary(), self.spread()
        m = self.matrix
        nc = "n/a" if self.noise_ceiling is None else f"{self.noise_ceiling:.1%}"
        unit = ("Leave-one-dataset-out" if self.protocol == "lodo"
                else f"Leave-one-family-out ({self.groups} families held out in turn)")
        lines = [f"{unit} over {m['datasets']} datasets × {m['models']} models, "
                 f"{len(self.seeds)} seeds ({self.seconds:.0f} s). Most frequent winner is best on "
                 f"{m['max_winner_share']:.1%} of the datasets; {m['distinct_winners']} distinct winners. "
                 f"Noise ceiling (same winner under two fine-tuning seeds): {nc}.", "",
                 "| selector | top-1 | top-3 | rel@1 | mean regret | Kendall τ |", "|---|---|---|---|---|---|"]
        for n in s:
            r, e = s[n], sd[n]
            lines.append(f"| {n} | {r['top1']:.1%} ± {e['top1']:.1%} | {r['top3']:.1%} | {r['rel1']:.4f} | "
                         f"{r['regret']:.4f} | {r['kendall']:.3f} |")
        return "\n".join(lines)


def _fit(name: str, seed: int, h: MatchingGraph, base: SelectorConfig | None, embedders: dict):
    """``(fitted selector, uses the probe)`` for ``name`` on ``h``."""
    cfg = selector_config(name, seed, base)
    if cfg is None:
        return _SEEDLESS[name]().fit(h), name in _PROBED
    key = embedder_key(cfg)
    if key not in embedders:
        embedders[key] = make_embedder(cfg, h)
    return Selector(cfg).fit(h, embedder=embedders[key]), cfg.probe


PROTOCOLS = ("lodo", "lofo")


def held_out_groups(graph: MatchingGraph, protocol: str = "lodo", datasets: list[str] | None = None
                    ) -> list[list[str]]:
    """The units that leave the graph together: one dataset each (``lodo``), or the datasets of one
    catalog family (``lofo``; first-appearance order; a dataset without a family alone)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    datasets = list(datasets or graph.profiled)
    if protocol == "lodo":
        return [[d] for d in datasets]
    groups: dict[str, list[str]] = {}
    for d in datasets:
        groups.setdefault(graph.family(d) or f"dataset:{d}", []).append(d)
    return list(groups.values())


def evaluate_seed(graph: MatchingGraph, seed: int, selectors=SELECTOR_NAMES, base: SelectorConfig | None = None,
                  datasets: list[str] | None = None, truth: MatchingGraph | None = None,
                  groups: list[list[str]] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """``{selector: {dataset: metrics}}`` of one seed (the random baseline exactly, without fitting).

    Each group of ``groups`` (default: each dataset of ``datasets`` alone, i.e. LODO) leaves the graph
    together; the selectors are fitted once per group and rank the models for each of its datasets.
    ``truth``: the graph whose measured rows score the rankings (default ``graph``; a partly measured
    ``graph`` is scored against the full matrix this way, as ``benchmarks/active.py`` does)."""
    out: dict = {n: {} for n in selectors}
    timing = {n: 0.0 for n in selectors}
    truth = graph if truth is None else truth
    has_probe = all(len(truth.zero_shot(d)) == len(truth.scores(d)) for d in truth.profiled)
    for group in groups or [[d] for d in datasets or graph.profiled]:
        h = graph.without_performance(group)
        embedders: dict = {}
        for name in selectors:
            t0 = time.perf_counter()
            fitted = None
            for d in group:
                scores, raw = truth.scores(d), truth.raw(d)
                if name == "random":
                    out[name][d] = random_expectation(scores, raw)
                    continue
                if name in _PROBED and not has_probe:
                    break
                if fitted is None:
                    fitted = _fit(name, seed, h, base, embedders)
                sel, probed = fitted
                probe = truth.zero_shot(d)  # measured before fine-tuning: what a user gets from forward passes
                out[name][d] = score_ranking(sel.predict(h, d, probe=probe if probed else None), scores, raw)
            timing[name] += time.perf_counter() - t0  # includes the shared embedder for its first user
    evaluate_seed.last_timing = timing
    return {n: v for n, v in out.items() if v}


def _job(args):
    graph_json, seed, selectors, base, groups = args
    import torch

    torch.set_num_threads(1)
    return seed, evaluate_seed(MatchingGraph.from_json(graph_json), seed, selectors, base, groups=groups)


def evaluate(graph: MatchingGraph, seeds: int = 5, selectors=SELECTOR_NAMES, base: SelectorConfig | None = None,
             workers: int | None = None, datasets: list[str] | None = None, progress=None,
             protocol: str = "lodo") -> EvalResult:
    """LODO (or ``protocol="lofo"``) over ``graph``'s profiled datasets (or the given subset) for seeds
    ``0..seeds-1``.

    ``workers`` processes (default: ``min(seeds, cpu count)``; 1 = in this process) share the work as
    (seed, ~8 datasets) tasks so that they finish together; ``progress(done, total)`` is called after
    each task."""
    unknown = [s for s in selectors if s not in SELECTOR_NAMES]
    if unknown:
        raise ValueError(f"unknown selector(s) {unknown}; known: {', '.join(SELECTOR_NAMES)}")
    if len(graph.profiled) < 3:
        raise ValueError(f"leave-one-dataset-out needs at least 3 profiled datasets, the graph has {len(graph.profiled)}")
    if seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {seeds}")
    t0 = time.perf_counter()
    datasets = list(datasets or graph.profiled)
    groups = held_out_groups(graph, protocol, datasets)
    if len(groups) < 2:
        raise ValueError(f"{protocol} needs at least 2 held-out groups, the graph's profiled datasets make {len(groups)}")
    chunks, size = [], 0  # whole groups, about 8 datasets a task
    for grp in groups:
        if not chunks or size + len(grp) > 8:
            chunks.append([])
            size = 0
        chunks[-1].append(grp)
        size += len(grp)
    tasks = [(s, c) for s in range(seeds) for c in chunks]
    workers = min(seeds, os.cpu_count() or 1) if workers is None else max(1, workers)
    results: dict[int, dict] = {s: {} for s in range(seeds)}

    def merge(s, r):
        for n, per in r.items():
            results[s].setdefault(n, {}).update(per)

    if workers == 1:
        for i, (s, c) in enumerate(tasks, 1):
            merge(s, evaluate_seed(graph, s, selectors, base, groups=c))
            if progress:
                progress(i, len(tasks))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        g = graph.to_json()
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_job, (g, s, tuple(selectors), base, c)) for s, c in tasks]
            for i, f in enumerate(as_completed(futs), 1):
                merge(*f.result())
                if progress:
                    progress(i, len(tasks))
    res = EvalResult(matrix=matrix_stats(graph), noise_ceiling=noise_ceiling(graph), seeds=list(range(seeds)),
                     protocol=protocol, groups=len(groups))
    for n in [n for n in selectors if n in results[0]]:
        ds = [d for d in datasets if d in results[0][n]]  # a fixed order: float sums must not depend on timing
        res.per_seed[n] = {k: [float(np.mean([results[s][n][d][k] for d in ds])) for s in range(seeds)] for k in METRICS}
        res.per_dataset[n] = {d: {k: float(np.mean([results[s][n][d][k] for s in range(seeds)])) for k in METRICS} for d in ds}
    res.seconds = time.perf_counter() - t0
    return res


def load_graph(path: str | None = None, k: int = 5) -> MatchingGraph:
    """The graph to evaluate: a MatchingGraph JSON file, a store export, a SQLite store, a reference folder
    (``records.jsonl``, ``models.jsonl``, ``datasets.jsonl``) or (None) the shipped reference."""
    import json
    from pathlib import Path

    if path is None:
        from data.reference import load_reference

        return MatchingGraph.from_reference(*load_reference(), k=k)
    p = Path(path)
    if p.is_dir():  # a reference folder (records.jsonl, models.jsonl, datasets.jsonl)
        from data.reference import load_reference

        return MatchingGraph.from_reference(*load_reference(p), k=k)
    if not p.is_file():
        raise FileNotFoundError(f"graph file {p} does not exist")
    with open(p, "rb") as f:
        head = f.read(16)
    if head.startswith(b"SQLite format 3"):
        from mandc.store import Store

        return Store(p).graph(k=k)
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is neither a SQLite store nor JSON ({e})") from None
    if isinstance(d, dict) and d.get("format") == "mandc.MatchingGraph":
        return MatchingGraph.from_json(d)
    if isinstance(d, dict) and d.get("format") == "mandc.Store":  # a store export (mandc.store)
        from mandc.store import Store

        store = Store(":memory:", reference=False)
        store.import_json(d)
        return store.graph(k=k)
    if isinstance(d, dict) and {"records", "models", "datasets"} <= set(d):  # plain reference lines
        return MatchingGraph.from_reference(d["records"], d["models"], d["datasets"], k=k)
    raise ValueError(f"{p}: expected a MatchingGraph JSON (format 'mandc.MatchingGraph'), a store export "
                     "(format 'mandc.Store') or an object with records, models and datasets lines")
