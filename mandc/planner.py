"""The Planner API: which pretrained model should I fine-tune on this dataset?

::

    import mandc
    rec = mandc.Planner().recommend("builtin:shapes_on_dark", top_k=3)
    rec.leaderboard()            # pandas DataFrame, higher score is better, with the reasons
    rec.to_json(); rec.to_markdown()

``Planner(graph_or_store)`` reads the matching graph from the store (default ``$MANDC_HOME/graph.sqlite``,
seeded from the shipped reference), a store/graph JSON file, or a :class:`~mandc.graph.MatchingGraph`.
:meth:`Planner.recommend`:

1. resolves the target to a dataset node: a ``builtin:NAME`` the graph knows is used as is (its vector is
   shipped, nothing is computed); a folder or a loaded :class:`~data.SplitDataset` gets its
   :class:`~data.DatasetFeatures` computed and enters a copy of the graph with similarity edges only;
2. if every candidate was already measured on the target, ranks by the measured normalised scores
   (mean held-out loss over seeds) and says so — there is nothing to predict;
3. otherwise fits the :class:`~mandc.select.Selector` on the graph — or loads the fitted one from
   ``$MANDC_HOME/cache/selector-<key>.pkl``, ``key`` = sha256 of the graph's contents, the selector
   config, the selection code and the library versions, so an unchanged graph is fitted once — and
   predicts a score per model (higher is better). The predictions for every dataset node of the graph
   are cached beside it (``predictions-<key>.json``), so ``recommend("builtin:NAME")`` on an unchanged
   graph is answered without importing torch, PyG or LightGBM (both caches: :mod:`mandc.cache`). A
   folder's features are cached by its content hash and its predictions by its feature vector, so a
   repeated ``recommend(folder)`` on an unchanged graph reads no image and imports none of them either;
4. explains each model: its measured score on the target's nearest profiled datasets (and where it was
   the best) and its pretraining mixture.

``recommend(..., probe=True)`` adds the zero-shot probe: every candidate that is available locally
(a built zoo model or a local diffusers folder; nothing is built or downloaded) is scored by its
held-out denoising loss on the target before any fine-tuning (forward passes only), and a selector
fitted with the probe feature predicts from it. Skipped candidates are listed with the reason.

``recommend(..., probe_budget=STEPS)`` spends training steps instead (:mod:`mandc.probing`): the first
``probe_top`` available models of the ranking are fine-tuned on the target by successive halving and
re-ordered by held-out loss (``source="probed"``); the runs are kept in the store as probe records, which
never become performance edges.

:meth:`Planner.feedback` adds a measured ProfileRecord to the store, so the next recommendation learns
from every run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.io import canonical_json
from mandc.cache import FeaturesCache, SelectorCache, features_key, selector_key
from mandc.feedback import dataset_key, feed, graph_of, open_graph
from mandc.sizes import fmt_score
from mandc.store import DEFAULT_K, Store, StoreError

NEAREST = 3             # profiled datasets quoted as evidence per recommendation


# ------------------------------------------------------------------------------------------ the result
@dataclass
class RankedModel:
    """One candidate of a :class:`Recommendation`.

    ``score``: the selector's predicted score (higher is better; a ranking score, comparable only within
    one recommendation) or, for a measured target, the normalised measured score in [0, 1].
    ``evidence``: the model's normalised measured score on each of the target's nearest profiled datasets
    ``[{"dataset", "similarity", "score", "won"}]``. ``mixture``: its pretraining mixture ``{family: weight}``; ``description``: its card's description.
    """

    model: str
    rank: int
    score: float
    measured_loss: float | None = None   # mean held-out loss after fine-tuning on the target, if profiled
    probe_loss: float | None = None      # zero-shot held-out loss on the target (probe=True)
    evidence: list[dict] = field(default_factory=list)
    mixture: dict[str, float] = field(default_factory=dict)
    description: str | None = None       # the model card's description (free text from the card: escape it)
    interval: list[float] | None = None  # [low, high] = score ∓ margin/2 (Selector.contenders); predicted only
    probe_runs: dict[str, float] = field(default_factory=dict)  # budgeted probe: {"STEPS": held-out loss}

    @property
    def why(self) -> str:
        """One line: where it won or scored near the target, and what it was pretrained on."""
        parts = []
        won = [e for e in self.evidence if e.get("won")]
        if won:
            parts.append("best on " + ", ".join(f"{_short(e['dataset'])} (sim {e['similarity']:.2f})" for e in won))
        other = [e for e in self.evidence if not e.get("won") and e.get("score") is not None]
        if other:
            parts.append(", ".join(f"{e['score']:.2f} on {_short(e['dataset'])}" for e in other))
        if self.mixture:
            parts.append("pretrained on " + _mixture_text(self.mixture))
        if self.measured_loss is not None:
            parts.insert(0, f"measured loss {self.measured_loss:.4f}")
        if self.probe_loss is not None:
            parts.insert(0, f"zero-shot loss {self.probe_loss:.4f}")
        if self.probe_runs:
            steps = max(self.probe_runs, key=int)
            parts.insert(0, f"probe loss {self.probe_runs[steps]:.4f} after {steps} steps")
        return "; ".join(parts)


@dataclass
class Recommendation:
    """Candidate models for one dataset, best first (``entries`` holds every candidate; ``top_k`` is how
    many the caller asked for, what :meth:`leaderboard` and :meth:`to_markdown` show by default).

    ``source``: ``"predicted"`` (the selector), ``"probed"`` (the selector's top models re-ordered by a
    budgeted probe, ``probe_budget``: :mod:`mandc.probing`) or ``"measured"`` (the target was profiled with
    every candidate). ``nearest``: the target's nearest profiled datasets ``[{"dataset", "similarity",
    "winner", "family"}]``. ``notes``: plain sentences worth showing (profiled target, skipped probes...).
    """

    dataset: str
    entries: list[RankedModel]
    top_k: int = 3
    source: str = "predicted"
    nearest: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probe: bool = False
    probe_skipped: dict[str, str] = field(default_factory=dict)
    graph: dict = field(default_factory=dict)      # {"models", "datasets", "profiled", "key"}
    selector: dict = field(default_factory=dict)   # the SelectorConfig used, + "fitted": what its fit chose (empty when measured)
    cached: bool = False                           # the prediction or the fitted selector came from a cache
    seconds: float = 0.0
    contenders: list[str] = field(default_factory=list)  # models whose interval overlaps the top pick's
    probe_budget: dict = field(default_factory=dict)     # {"budget", "k", "rounds", "steps", "jobs", "reused", ...}

    @property
    def best(self) -> str:
        """The recommended model ref."""
        return self.entries[0].model

    @property
    def top(self) -> list[RankedModel]:
        return self.entries[: self.top_k]

    def leaderboard(self, full: bool = False):
        """A pandas DataFrame, one row per model in rank order (by ``score``, higher is better, unless a budgeted
        probe re-ordered them): ``rank``, ``model``, ``score``, ``measured_loss``/``probe_loss``/``probe_s<STEPS>``
        when present, and ``why``; the top ``top_k`` rows unless ``full``."""
        import pandas as pd

        rows = []
        for e in self.entries if full else self.top:
            row = {"rank": e.rank, "model": e.model, "score": e.score}
            if e.interval is not None:
                row["score_low"], row["score_high"] = e.interval
            if self.source == "measured" or any(x.measured_loss is not None for x in self.entries):
                row["measured_loss"] = e.measured_loss
            if self.probe:
                row["probe_loss"] = e.probe_loss
            for steps in sorted({st for x in self.entries for st in x.probe_runs}, key=int):
                row[f"probe_s{steps}"] = e.probe_runs.get(steps)
            row["why"] = e.why
            rows.append(row)
        return pd.DataFrame(rows).sort_values("rank", kind="stable").reset_index(drop=True)

    def to_json(self) -> dict:
        """Plain JSON (``why`` included for readers that do not run Python)."""
        d = dataclasses.asdict(self)
        for e, obj in zip(d["entries"], self.entries):
            e["why"] = obj.why
        return {"format": "mandc.Recommendation", "best": self.best, **d}

    @classmethod
    def from_json(cls, d: dict) -> "Recommendation":
        if not isinstance(d, dict) or d.get("format") != "mandc.Recommendation":
            raise ValueError("not a Recommendation JSON (expected an object with format 'mandc.Recommendation')")
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        names = {f.name for f in dataclasses.fields(RankedModel)}
        d["entries"] = [RankedModel(**{k: v for k, v in e.items() if k in names}) for e in d["entries"]]
        return cls(**d)

    def to_markdown(self, full: bool = False) -> str:
        """A Markdown section: the table (rank, model, score, why), the nearest datasets and the notes."""
        how = {"measured": "measured", "probed": "predicted, then probed"}.get(self.source, "predicted")
        lines = [f"### Recommended models for `{self.dataset}` ({how})", "",
                 "| rank | model | score | why |", "|---:|---|---:|---|"]
        for e in self.entries if full else self.top:
            lines.append(f"| {e.rank} | `{e.model}` | {fmt_score(e.score, e.interval)} | {e.why.replace('|', '/')} |")
        if self.nearest:
            near = [f"`{_short(n['dataset'])}` (similarity {n['similarity']:.2f}, best: `{n['winner']}`)"
                    for n in self.nearest]
            lines += ["", "Nearest profiled datasets: " + ", ".join(near)]
        lines += ["", *[f"- {n}" for n in self.notes]] if self.notes else []
        return "\n".join(lines) + "\n"


def recommendation_table(rec: Recommendation, full: bool = False):
    """A ``rich`` table of ``rec`` (rank, model, score, why) for the terminal."""
    from rich.table import Table

    how = "measured" if rec.source == "measured" else "predicted" + (" with the zero-shot probe" if rec.probe else "")
    if rec.source == "probed":
        how += f", then re-ranked by a {rec.probe_budget.get('budget')}-step budgeted probe"
    t = Table(title=f"models for {rec.dataset} ({how}; higher score is better)", title_justify="left")
    t.add_column("rank", justify="right", no_wrap=True)
    t.add_column("model", no_wrap=True)
    t.add_column("score", justify="right", no_wrap=True)
    t.add_column("why")
    for e in rec.entries if full else rec.top:
        t.add_row(str(e.rank), e.model, fmt_score(e.score, e.interval), e.why)
    if rec.nearest:
        t.caption = "nearest profiled datasets: " + ", ".join(
            f"{_short(n['dataset'])} ({n['similarity']:.2f}, best {n['winner']})" for n in rec.nearest)
    return t


def contenders_note(contenders: list[str], fitted: dict) -> str:
    """The sentence that says the top of the ranking cannot be told apart, and what to do about it."""
    names = ", ".join(contenders[:4]) + (f" and {len(contenders) - 4} more" if len(contenders) > 4 else "")
    return (f"the top {len(contenders)} overlap ({names}): their scores differ by less than the margin the "
            f"selector's cross-validation calibrated (the measured winner fell within it on "
            f"{fitted.get('margin_coverage', 0.9):.0%} of held-out datasets); probe these "
            f"{len(contenders)} (--probe, or --probe-budget STEPS: a short fine-tune of each) before committing GPU hours")


def _fitted_note(fitted: dict, profiled: int) -> str:
    """One sentence on what the selector's fit chose (``Selector.fitted_summary()`` of one objective)."""
    rounds = fitted.get("rounds", 0)
    what = "the neighbour prior alone (0 boosting rounds)" if rounds == 0 else f"{rounds} boosting rounds over the neighbour prior"
    if "probe_init" in fitted:
        what += f", zero-shot probe weight {fitted['probe_init']:g}"
    how = f"chosen by {fitted['cv_folds']}-fold cross-validation" if "cv_folds" in fitted else "as configured"
    return f"selector: {what}, {how} over the graph's {profiled} profiled datasets"


def _mixture_text(mixture: dict[str, float], show: int = 3) -> str:
    """``"shapes 67%, compositions 33%"``; an even spread over many families reads "8 families evenly"."""
    total = sum(mixture.values()) or 1.0
    mix = sorted(((k, v / total) for k, v in mixture.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))
    if len(mix) > show and mix[0][1] - mix[-1][1] < 1e-3:
        return f"{len(mix)} families evenly"
    text = ", ".join(f"{k} {100 * v:.0f}%" for k, v in mix[:show])
    return text + (f" (+{len(mix) - show} more)" if len(mix) > show else "")


def _short(ref: str) -> str:
    return ref.removeprefix("builtin:") if ref.startswith("builtin:") else Path(ref).name or ref


# ------------------------------------------------------------------------------------------ the planner
class Planner:
    """Recommends models for a dataset from a matching graph (see the module docstring).

    Args:
        graph_or_store: ``None`` (the default store), a :class:`~mandc.store.Store`, a
            :class:`~mandc.graph.MatchingGraph`, or a path: ``*.json`` (a store export or a
            ``MatchingGraph.to_json()``) or an SQLite store file.
        selector_config: a ``SelectorConfig`` (or a dict of its fields); default ``SelectorConfig()``.
        k: similarity edges per dataset when the graph is built from a store.
        cache_dir: where fitted selectors, their predictions and folders' features are cached (default
            ``$MANDC_HOME/cache``); ``False`` disables the disk cache.
    """

    def __init__(self, graph_or_store=None, selector_config=None, k: int = DEFAULT_K, cache_dir=None):
        self.store: Store | None = None
        self._graph = None
        self.k = k
        src = graph_or_store
        #: the graph this planner reads, as given (a path, or None for the default store): a Plan records it,
        #: so that ``Plan.run`` feeds its measurement into the same graph
        self.graph_source = str(Path(src).expanduser().resolve()) if isinstance(src, (str, os.PathLike)) else None
        target = open_graph(src)
        if isinstance(target, Store):
            self.store = target
        else:
            self._graph = target
        self._cfg = selector_config
        #: fitted selectors and their predictions (:mod:`mandc.cache`)
        self.cache = SelectorCache(cache_dir)
        #: folders' DatasetFeatures by content hash (:mod:`mandc.cache`)
        self.features_cache = FeaturesCache(cache_dir)

    # ------------------------------------------------------------------ graph and selector
    def graph(self):
        """A copy of the current matching graph."""
        return graph_of(self.store if self.store is not None else self._graph, self.k)

    def _graph_key(self) -> str:
        if self.store is not None:
            return f"store:{self.store.content_hash()}:k{self.k}"
        return "graph:" + hashlib.sha256(canonical_json(self._graph.to_json()).encode()).hexdigest()

    def selector_config(self, probe: bool = False):
        """The ``SelectorConfig`` in use (with ``probe`` switched on for the probe path)."""
        from mandc.select import SelectorConfig

        cfg = self._cfg
        if cfg is None:
            cfg = SelectorConfig()
        elif isinstance(cfg, dict):
            cfg = SelectorConfig(**cfg)
        return dataclasses.replace(cfg, probe=probe) if cfg.probe != probe else cfg

    def fitted_selector(self, graph, cfg, key: str | None = None) -> tuple[object, bool]:
        """``(selector, from_cache)``: the :class:`~mandc.select.Selector` fitted on ``graph`` (the
        planner's current graph), from memory, the disk cache, or fitted now and cached."""
        def fit():
            from mandc.select import Selector

            return Selector(cfg).fit(graph)

        return self.cache.selector(key or selector_key(self._graph_key(), cfg), fit)

    def _predict(self, base, graph, ref: str, cfg, probe_losses: dict, vector=None) -> tuple[dict[str, float], bool, dict]:
        """``(scores, from_cache, fitted)`` for target ``ref``; ``fitted`` is what the selector's fit chose
        (:meth:`~mandc.select.Selector.fitted_summary`: boosting rounds, probe weight).

        A target that is a node of the planner's graph (every catalog dataset of the shipped reference)
        depends only on the cache key, so after a fit the predictions of *all* such nodes that are not
        fully profiled are written to ``predictions-<key>.json`` (``{"predictions": {ref: scores},
        "fitted": ...}``): later calls — in any process — answer from that file without importing torch,
        PyG or LightGBM. A target that is not a node (a folder: ``vector`` is its feature vector) is cached
        in ``targets-<key>.json`` by ref and vector. Probe predictions are never cached."""
        key = selector_key(self._graph_key(), cfg)
        in_base = ref in base.datasets
        if in_base and not cfg.probe:
            hit = self.cache.predictions(key, ref)
            if hit is not None:
                return hit[0], True, hit[1]
        if not in_base and not cfg.probe and vector is not None:
            hit = self.cache.target_predictions(key, ref, vector)
            if hit is not None:
                return hit[0], True, hit[1]
        sel, from_cache = self.fitted_selector(base, cfg, key)
        fitted = sel.fitted_summary()
        if cfg.probe:
            return sel.predict(graph, ref, probe=probe_losses), from_cache, fitted
        if not in_base:
            scores = sel.predict(graph, ref)
            if vector is not None:
                self.cache.save_target_predictions(key, ref, vector, scores, fitted)
            return scores, from_cache, fitted
        models = set(base.models)
        todo = [d for d in base.datasets if d == ref or not set(base.scores(d)) >= models]
        preds = {d: sel.predict(base, d) for d in todo}
        self.cache.save_predictions(key, preds, fitted)
        return preds[ref], from_cache, fitted

    # ------------------------------------------------------------------ the target
    def _target(self, dataset, graph) -> tuple[str, object, bool, dict]:
        """``(ref, loaded SplitDataset or None, added, info)``: the target's node ref in ``graph``, adding the
        node (similarity edges only) when the graph does not have it. ``info`` (for an added target):
        ``{"vector", "n_train", "images_line" (a folder's image account, else None), "features_cached"}``.

        A folder's features come from :class:`~mandc.cache.FeaturesCache` when its content hash is known:
        then the folder is neither decoded nor embedded (and torch is not imported for it)."""
        ds = None
        if isinstance(dataset, (str, os.PathLike)):  # checked first: a known builtin needs no torch import
            ref = dataset_key(dataset)
        else:
            from data.dataset import DatasetError, SplitDataset

            if not isinstance(dataset, SplitDataset):
                raise DatasetError(f"recommend() needs 'builtin:NAME', a folder path or a SplitDataset, "
                                   f"got {type(dataset).__name__}")
            ds = dataset
            ref = dataset.ref if dataset.ref and not dataset.ref.startswith("records:") else f"records:{dataset.name}"
        if ref in graph.datasets:
            return ref, ds, False, {}
        key = None
        if ds is None and not ref.startswith(("builtin:", "records:")) and Path(ref).is_dir():
            key = features_key(ref)
            hit = self.features_cache.get(key)
            if hit is not None:
                feats, info = hit
                vec = feats.to_vector()
                graph.add_dataset(ref, vec, family=None)  # a folder has no family
                return ref, None, True, {**info, "vector": vec, "features_cached": True}
        from data import DatasetFeatures, load_dataset

        if ds is None:
            ds = load_dataset(ref)
        feats = DatasetFeatures.compute(ds)
        vec = feats.to_vector()
        graph.add_dataset(ref, vec, family=ds.family)
        info = {"n_train": len(ds.train), "images_line": None}
        if ds.meta.get("source") != "builtin":
            from data.features import STAT_SIZE
            from data.pixels import image_account

            info["images_line"] = image_account(ds, STAT_SIZE)["line"]
        if key is not None:
            self.features_cache.put(key, feats, info)
        return ref, ds, True, {**info, "vector": vec, "features_cached": False}

    # ------------------------------------------------------------------ recommending
    def recommend(self, dataset, top_k: int = 3, probe: bool = False, probe_budget: int | None = None,
                  probe_top: int | None = None, device: str | None = None, log=None) -> Recommendation:
        """Rank every candidate model of the graph for ``dataset`` (``builtin:NAME``, a folder in the
        imagefolder layout, or a :class:`~data.SplitDataset`); see the module docstring.

        ``probe_budget``: training steps to spend on a budgeted probe (:mod:`mandc.probing`): the first
        ``probe_top`` (default 4) locally available models of the predicted ranking are fine-tuned on the
        dataset by successive halving and re-ordered by their held-out loss; the runs are kept in the store
        as probe records (``device``: where they train, default CUDA when available; ``log``: one line per
        job). It needs a dataset reference (``builtin:NAME`` or a folder), not a loaded dataset."""
        t0 = time.perf_counter()
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if probe_budget is not None:
            if isinstance(probe_budget, bool) or not isinstance(probe_budget, int) or probe_budget < 1:
                raise ValueError(f"probe_budget must be a positive number of training steps, got {probe_budget!r}")
            if not isinstance(dataset, (str, os.PathLike)):
                raise ValueError("probe_budget runs profiling jobs, which need a dataset reference (builtin:NAME "
                                 "or a folder), not a loaded dataset")
        if probe_top is not None and (isinstance(probe_top, bool) or not isinstance(probe_top, int)
                                         or probe_top < 2):
            raise ValueError(f"probe_top must be an integer ≥ 2 (models to compare), got {probe_top!r}")
        # read only: the store's cached graph itself, and an overlay of it that takes the target
        base = self.store.graph(self.k, copy=False) if self.store is not None else self._graph
        graph = base.overlay()
        ref, ds, added, info = self._target(dataset, graph)
        models = graph.models
        if not models:
            raise StoreError("the matching graph has no candidate models")
        notes: list[str] = []
        if added:
            how = "read from the features cache" if info["features_cached"] else "computed"
            notes.append(f"{ref} is new to the graph: it entered with similarity edges only (its features, from "
                         f"its {info['n_train']} training images, were {how})")
            if info["images_line"]:
                notes.append(f"images for the features: {info['images_line']}")

        measured_scores, measured_raw = graph.scores(ref), graph.raw(ref)
        probe_losses: dict[str, float] = {}
        skipped: dict[str, str] = {}
        cfg_dict, cached = {}, False
        if measured_scores and set(measured_scores) >= set(models):
            source, scores = "measured", measured_scores
            runs = graph.runs(ref)
            seeds = max(len(v) for v in runs.values())
            notes.insert(0, f"{ref} is already profiled with every candidate: ranked by its measured held-out loss "
                            f"(mean over up to {seeds} fine-tuning seed(s)), not predicted")
            if probe:
                notes.append("the probe is not needed for a profiled dataset and was not run")
                probe = False
        else:
            source = "predicted"
            if probe:
                if ds is None:
                    from data import load_dataset

                    ds = load_dataset(ref)
                probe_losses, skipped = probe_models(models, ds)
                if skipped:
                    notes.append(f"zero-shot probe skipped for {len(skipped)} model(s) not available locally: "
                                 + ", ".join(f"{m} ({why})" for m, why in skipped.items()))
                if not probe_losses:
                    notes.append("no candidate could be probed: predicted without the probe")
                    probe = False
            cfg = self.selector_config(probe=probe)
            scores, cached, fitted = self._predict(base, graph, ref, cfg, probe_losses, info.get("vector"))
            cfg_dict = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))  # plain JSON types
            cfg_dict["fitted"] = fitted
            notes.append(_fitted_note(next(iter(fitted.values()), {}), len(base.profiled)))  # the first objective
            if measured_scores:
                notes.append(f"{ref} has measurements for {len(measured_scores)} of {len(models)} models (shown as "
                             f"measured_loss); the ranking is predicted")

        entries = self._entries(graph, ref, models, scores, measured_raw, probe_losses)
        first = next(iter(cfg_dict.get("fitted", {}).values()), {}) if source == "predicted" else {}
        probed: dict = {}
        if probe_budget is not None and source == "predicted":
            entries, probed = self._budgeted_probe(ref, entries, probe_budget, probe_top, device, log, notes)
            source = "probed" if probed.get("jobs") else source
        elif probe_budget is not None:
            notes.append("the budgeted probe is not needed for a profiled dataset and was not run")
        contenders = []
        if first.get("margin") is not None and entries:
            margin = float(first["margin"])
            for e in entries:
                e.interval = [round(e.score - margin / 2, 6), round(e.score + margin / 2, 6)]
            contenders = [e.model for e in entries if e.score >= entries[0].score - margin]
            if len(contenders) > 1 and not probed.get("jobs"):
                notes.append(contenders_note(contenders, first))
        nearest = [{"dataset": d, "similarity": round(s, 4), "winner": graph.winner(d), "family": graph.family(d)}
                   for d, s in graph.nearest(ref, n=NEAREST)]
        return Recommendation(
            dataset=ref, entries=entries, top_k=min(top_k, len(entries)), source=source, nearest=nearest, notes=notes,
            probe=probe, probe_skipped=skipped,
            graph={"models": len(models), "datasets": len(base.datasets), "profiled": len(base.profiled),
                   "key": self._graph_key()},
            selector=cfg_dict, cached=cached, seconds=round(time.perf_counter() - t0, 3), contenders=contenders,
            probe_budget=probed)

    def _budgeted_probe(self, ref: str, entries: list[RankedModel], budget: int, k: int | None, device, log,
                        notes: list[str]) -> tuple[list[RankedModel], dict]:
        """:meth:`budgeted_probe` over the entries; the entries re-ordered (ranks renumbered) and the summary."""
        summary, outcome, lines = self.budgeted_probe(ref, [e.model for e in entries], budget, k, device, log)
        notes[:0] = lines[:1]
        notes.extend(lines[1:])
        if outcome is None:
            return entries, summary
        by_model = {e.model: e for e in entries}
        order = outcome.order + [e.model for e in entries if e.model not in outcome.order]
        new_entries = []
        for rank, m in enumerate(order, 1):
            e = dataclasses.replace(by_model[m], rank=rank)
            e.probe_runs = {str(st): round(v, 6) for st, v in sorted(outcome.losses.get(m, {}).items())}
            new_entries.append(e)
        return new_entries, summary

    def budgeted_probe(self, ref: str, ranked: list[str], budget: int, k: int | None = None, device=None,
                       log=None) -> tuple[dict, object, list[str]]:
        """Successive halving (:func:`mandc.probing.successive_halving`) over the first ``k`` (default
        :data:`~mandc.probing.PROBE_MODELS`) locally available models of ``ranked`` on dataset ``ref``, each run
        a probe job kept in the store. Returns ``(summary, outcome, notes)``: the JSON summary (``budget``,
        ``k``, ``rounds``, ``steps``, ``jobs``, ``reused``, ``losses``, ``order``, ``skipped``, ``errors``), the
        :class:`~mandc.probing.ProbeOutcome` (None when the budget probes nothing) and sentences for the reader,
        the first one saying what was run and chosen."""
        from mandc.probing import PROBE_MODELS, JobProbe, halving_rounds, rounds_cost, successive_halving

        k = k or PROBE_MODELS
        skipped, short = {}, []
        for m in ranked:
            if len(short) == k:
                break
            why = unavailable_reason(m)
            if why is None:
                short.append(m)
            else:
                skipped[m] = why
        rounds = halving_rounds(len(short), budget)
        summary = {"budget": budget, "k": len(short), "rounds": [list(r) for r in rounds], "skipped": skipped,
                   "jobs": 0}
        notes = []
        if not rounds:
            notes.append(f"budgeted probe: {budget} steps cannot give two of the {len(short)} available top models "
                         f"5 steps each; nothing was probed (raise --probe-budget)")
        if skipped:
            notes.append(f"budgeted probe: skipped {len(skipped)} model(s) not available locally: "
                         + ", ".join(f"{m} ({why})" for m, why in skipped.items()))
        if not rounds:
            return summary, None, notes
        measure = JobProbe(ref, store=self.store, device=device, log=log)
        out = successive_halving(short, budget, measure, k=len(short))
        plan = ", then ".join(f"{n} × {st} steps" for n, st in rounds)
        reused = len(measure.records) - measure.new
        first = ranked[0]
        notes.insert(0, f"budgeted probe ({budget} steps): {plan} = {rounds_cost(rounds)} training steps in "
                        f"{len(measure.records)} job(s), {reused} reused from the store; best after probing: "
                        f"{out.best}" + ("" if out.best == first else f" (the graph's first pick was {first})"))
        if measure.errors:
            notes.append("budgeted probe: failed for " + ", ".join(f"{m} ({e})" for m, e in measure.errors.items()))
        if self.store is None:
            notes.append("budgeted probe: the graph is not a store, so the probe records were not kept")
        summary.update(steps=out.steps, jobs=len(measure.records), reused=reused, errors=measure.errors,
                       losses={m: {str(st): v for st, v in d.items()} for m, d in out.losses.items()},
                       order=out.order)
        return summary, out, notes

    def _entries(self, graph, ref, models, scores, measured_raw, probe_losses) -> list[RankedModel]:
        near = graph.nearest(ref, n=NEAREST)
        near_scores = {d: graph.scores(d) for d, _ in near}
        winners = {d: graph.winner(d) for d, _ in near}  # once per dataset, not once per (model, dataset)
        order = sorted(models, key=lambda m: (-_finite(scores.get(m)), m))
        out = []
        for rank, m in enumerate(order, 1):
            evidence = [{"dataset": d, "similarity": round(s, 4),
                         "score": None if near_scores[d].get(m) is None else round(near_scores[d][m], 4),
                         "won": winners[d] == m} for d, s in near]
            out.append(RankedModel(model=m, rank=rank, score=float(_finite(scores.get(m))),
                                   measured_loss=measured_raw.get(m), probe_loss=probe_losses.get(m),
                                   evidence=evidence, mixture={f: round(w, 4) for f, w in graph.mixture(m).items()},
                                   description=graph.model_info(m).get("description")))
        return out

    # ------------------------------------------------------------------ planning
    def plan(self, dataset, memory="8GiB", device: str = "cuda", goal: str = "domain", candidates=None,
             steps: int | None = None, token: str | None = None, overrides: dict | None = None, log=None,
             crawl: bool = False, max_params=None, licenses=None, probe_budget: int | None = None,
             probe_top: int | None = None):
        """The :class:`~mandc.plan.Plan` for ``dataset`` under a ``memory`` budget (``"8GiB"``, bytes): model,
        per-layer bits, method and config, and every method's memory estimate (see :mod:`mandc.plan`).
        ``goal``: ``"domain"`` (adapt the denoiser) or ``"subject"`` (learn a token, ``token``);
        ``candidates``: restrict the models (refs of the graph); ``steps``: the method's steps (default its
        recipe); ``overrides``: method options such as ``{"lr": 1e-4}``; ``log``: called with one line per stage;
        ``crawl``: the candidates are the store's crawled Hub models, filtered by ``max_params`` (total, from the
        headers) and ``licenses``. Every candidate gets a memory verdict from its configs and headers alone, and
        the best-ranked one that fits is chosen (``plan.shortlist``: the ranked candidates that fit), or, with
        ``probe_budget`` (training steps), the winner of a budgeted probe over the first ``probe_top`` of them."""
        from mandc.plan import make_plan

        return make_plan(self, dataset, memory=memory, device=device, goal=goal, candidates=candidates, steps=steps,
                         token=token, overrides=overrides, log=log, crawl=crawl, max_params=max_params,
                         licenses=licenses, probe_budget=probe_budget, probe_top=probe_top)

    # ------------------------------------------------------------------ feedback
    def feedback(self, records) -> int:
        """Add measured ProfileRecords (one dict or a list, ``profiler.jobs`` format) to the graph's store,
        so the next recommendation uses them; returns how many. A dataset or model the store does not know
        is added first (dataset features computed from the data, the model line from
        ``profiler.modelinfo.describe_model``); a folder dataset is keyed by its absolute path. With a
        plain MatchingGraph (no store) the records are added in memory only."""
        return feed(self.store if self.store is not None else self._graph, records)


# ------------------------------------------------------------------------------------------ helpers
def unavailable_reason(model: str) -> str | None:
    """Why ``model`` cannot be probed here (nothing is built or downloaded for a probe), or None."""
    from finetune import zoo
    from finetune.refs import ModelRefError, parse_model_ref

    try:
        r = parse_model_ref(model)
    except ModelRefError as e:
        return str(e).split(";")[0]
    if r.kind == "zoo" and not zoo.is_built(r.value):
        return f"not built (mandc zoo build {r.value})"
    if r.kind == "hub":
        return "a Hub model (the probe never downloads)"
    return None


def probe_models(models: list[str], ds) -> tuple[dict[str, float], dict[str, str]]:
    """Zero-shot held-out loss of every locally available candidate on ``ds`` (forward passes only).

    Returns ``(losses, skipped)``: ``{model: loss}`` and ``{model: reason}`` for the ones not probed (a zoo
    model that is not built, a Hub id: nothing is built or downloaded for a probe)."""
    import torch

    from finetune.metrics import heldout_loss
    from finetune.load import load_model

    losses, skipped = {}, {}
    for m in models:
        why = unavailable_reason(m)
        if why is not None:
            skipped[m] = why
            continue
        with torch.no_grad():
            model = load_model(m)
            losses[m] = float(heldout_loss(model, ds.heldout).mean)
        del model
    return losses, skipped


def _finite(x) -> float:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf


