"""The M&C matching graph: models, datasets, fine-tuning-performance edges and data-similarity edges.

Nodes (networkx, undirected):

* ``"m:<model ref>"`` — ``kind="model"``, ``x`` = the model's feature dict (``profiler.modelinfo``
  keys: ``is_dit``, ``log10_params``, ``mix_<family>``, ...), ``info`` = free-form card facts.
* ``"d:<dataset ref>"`` — ``kind="dataset"``, ``x`` = the ``DatasetFeatures.to_vector()`` list
  (``D`` floats, names in ``G.graph["feature_names"]``), ``family`` (catalog family or ``None``).

Edges:

* ``kind="perf"`` between a model and a dataset, one per profiled pair. ``runs`` maps each ok
  ProfileRecord's ``job_id`` to ``{"seed", "loss", "zero_shot"}``; ``raw`` is the mean held-out loss
  over the runs (lower is better), ``zero_shot`` the mean zero-shot loss, and ``weight`` the
  per-dataset min–max normalised score (higher is better)::

      weight(m, d) = (max_m' raw(m', d) - raw(m, d)) / (max_m' raw(m', d) - min_m' raw(m', d))

  so the best model of ``d`` scores 1 and the worst 0 (all 1 when the models tie or only one is
  profiled). The normalisation of a dataset uses only that dataset's own edges, so removing one
  dataset's edges (leave-one-dataset-out) leaves every other weight unchanged.
* ``kind="lineage"`` between two models: ``model`` was made from ``base`` (``relation``: ``finetune``,
  ``adapter``, ``merge`` or ``quantized``, as a Hub card's ``base_model_relation`` says). From a model's
  card facts (``info["base_model"]``, or the zoo's ``info["parent"]``) and from the store's typed lineage
  edges (``Store.lineage()``, what ``mandc hub crawl`` records); a base that is no model node of the
  graph is dropped (there is nothing of it to inherit). :meth:`inherited_scores` reads them.
* ``kind="sim"`` between two datasets: ``weight`` = cosine similarity of their standardised vectors.
  Each dataset keeps an edge to its ``k`` most similar datasets (the union over both endpoints, so a
  node can have more than ``k``). The standardisation is fixed when the graph is built
  (``G.graph["vec_mean"]``, ``["vec_std"]``, ``["vec_mask"]``, ``["vec_clip"]``), so a dataset added
  later gets its edges without moving any existing edge.

**What similarity sees** (:func:`standardisation`, rule ``"content"``). Similarity is about what the
images and captions show, so:

* the statistics are fitted on the catalog datasets (those with a ``family``; all datasets when fewer
  than two have one), never on user datasets, so feeding a user dataset back (a store rebuilds its
  graph with :meth:`from_reference`) moves no other dataset's standardised vector;
* the bookkeeping columns :data:`BOOKKEEPING_FEATURES` (dataset size, image width and height) are left
  out (mask 0): how many images a folder holds and at what resolution they were saved says nothing
  about their content, and the catalog holds them constant, so any difference a user dataset has there
  would be measured against a zero spread;
* so is every column with (near-)zero spread over the fitted datasets: it cannot tell any two of them
  apart, and standardising by its spread would put a dataset that differs there arbitrarily far away;
* the standardised values are clipped to ``±CLIP_Z`` standard deviations, so a column whose spread
  is small but not zero cannot let one dataset's outlying value dominate the cosine.

Rule ``"all"`` is the earlier one (every column, statistics over every given dataset, a constant
column centred but not scaled, no clipping), kept so ``benchmarks/feedback.py`` can compare the two.
The LightGBM predictor reads the raw vectors (:func:`mandc.select.data_columns`), not these, bookkeeping
included, but only the columns that vary over the fitted datasets (:meth:`MatchingGraph.varying`): a
column the catalog holds constant teaches the trees nothing from the catalog, and once user datasets
differ there it would only let them tell user datasets from catalog ones.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import networkx as nx
import numpy as np

GRAPH_VERSION = 1
#: Dataset-feature columns that describe how a dataset is stored, not what it shows; similarity never
#: sees them (see the module docstring).
BOOKKEEPING_FEATURES = ("log2_size", "log2_width", "log2_height")
#: Standardised values are clipped to ±CLIP_Z (above every catalog dataset's largest |z|, 4.96 on the
#: shipped reference, so the catalog's own similarities are unchanged by the clip).
CLIP_Z = 5.0
#: A column whose spread over the fitted datasets is at most this (relative to 1 + |mean|) is constant.
MIN_SPREAD = 1e-6
RULES = ("content", "all")


def standardisation(x: np.ndarray, names: list[str] | None, fit: np.ndarray | None = None,
                    rule: str = "content") -> dict:
    """The similarity standardisation of vectors ``x [N, D]`` (column ``names``, or None): a dict with
    ``vec_mean``, ``vec_std`` (``[D]`` lists), ``vec_mask`` (1 = similarity uses the column) and
    ``vec_clip`` (None = no clipping), fitted on the rows where ``fit`` (bool ``[N]``) is true
    (default: all), and ``vec_varies`` (1 = the column is not constant over those rows: what the
    predictor's data features keep). Rule ``"content"`` or ``"all"``: see the module docstring."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(map(repr, RULES))}, got {rule!r}")
    x = np.asarray(x, dtype=np.float64)
    if rule == "all":
        sd = x.std(0)
        return {"vec_mean": x.mean(0).tolist(), "vec_std": np.where(sd > 1e-12, sd, 1.0).tolist(),
                "vec_mask": [1.0] * x.shape[1], "vec_clip": None, "vec_varies": [1.0] * x.shape[1]}
    rows = x[fit] if fit is not None and int(np.sum(fit)) >= 2 else x
    mu, sd = rows.mean(0), rows.std(0)
    flat = sd <= MIN_SPREAD * (1.0 + np.abs(mu))
    book = np.array([n in BOOKKEEPING_FEATURES for n in names]) if names else np.zeros(x.shape[1], bool)
    return {"vec_mean": mu.tolist(), "vec_std": np.where(flat, 1.0, sd).tolist(),
            "vec_mask": (~(flat | book)).astype(np.float64).tolist(), "vec_clip": CLIP_Z,
            "vec_varies": (~flat).astype(np.float64).tolist()}


def _mref(ref: str) -> str:
    return f"m:{ref}"


def _dref(ref: str) -> str:
    return f"d:{ref}"


class MatchingGraph:
    """Models and datasets joined by performance and similarity edges (see the module docstring).

    Build it with :meth:`from_reference` (records, models and datasets lines of the shipped
    reference, or of a store), add targets with :meth:`add_dataset`, measurements with
    :meth:`add_records`; :meth:`without_performance` is the leave-one-dataset-out copy.
    """

    def __init__(self, G: nx.Graph | None = None):
        self.G = G if G is not None else nx.Graph(version=GRAPH_VERSION, k=5, feature_names=None,
                                                  vec_mean=None, vec_std=None, vec_mask=None, vec_clip=None,
                                                  vec_varies=None)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_reference(cls, records: list[dict], models: list[dict], datasets: list[dict],
                       k: int = 5, rule: str = "content", lineage: Iterable[dict] = ()) -> "MatchingGraph":
        """The graph of ``models`` lines (``{"ref", "features", "info"}``), ``datasets`` lines
        (``{"ref", "vector", "family", "feature_names"?}``) and ProfileRecords (failed ones are skipped).

        The vector standardisation is fitted by :func:`standardisation` (``rule``; by default on the
        datasets with a family); every dataset then gets sim edges to its ``k`` nearest others. Lineage edges
        come from each model line's ``info`` (``base_model``, else ``parent``) and from ``lineage``
        (``[{"model", "base", "relation"}]``, the store's edges). Raises ``ValueError`` for duplicate refs, vectors of different
        lengths, non-finite values, or records that name a model/dataset missing from the lines."""
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        g = cls()
        g.G.graph["k"] = int(k)
        for m in models:
            g.add_model(m["ref"], m.get("features") or {}, m.get("info") or {})
        for m in models:
            info = m.get("info") or {}
            base = info.get("base_model") or info.get("parent")
            if isinstance(base, str) and base:
                g.add_lineage(m["ref"], base, info.get("base_model_relation") or "finetune")
        for e in lineage:
            g.add_lineage(e["model"], e["base"], e.get("relation") or "finetune")
        names = next((d["feature_names"] for d in datasets if d.get("feature_names")), None)
        vecs = []
        for d in datasets:
            ref = d.get("ref")
            if not ref:
                raise ValueError(f"dataset line without a ref: {str(d)[:120]}")
            if g.G.has_node(_dref(ref)):
                raise ValueError(f"dataset {ref} appears twice in the datasets lines")
            v = _check_vector(ref, d.get("vector"), len(vecs[0]) if vecs else None)
            vecs.append(v)
            g.G.add_node(_dref(ref), kind="dataset", x=v.tolist(), family=d.get("family"))
        if names is not None and vecs and len(names) != len(vecs[0]):
            raise ValueError(f"feature_names has {len(names)} entries but vectors have {len(vecs[0])}")
        g.G.graph["feature_names"] = list(names) if names is not None else None
        if vecs:
            x = np.stack(vecs)
            fit = np.array([bool(d.get("family")) for d in datasets])
            g.G.graph.update(standardisation(x, g.G.graph["feature_names"], fit, rule))
            refs = [d["ref"] for d in datasets]
            sim = g._cosine(x, x)
            np.fill_diagonal(sim, -np.inf)
            for i, ref in enumerate(refs):
                for j in np.argsort(-sim[i], kind="stable")[: min(k, len(refs) - 1)]:
                    g.G.add_edge(_dref(ref), _dref(refs[j]), kind="sim", weight=float(sim[i, j]))
        g.add_records(records)
        return g

    def add_model(self, ref: str, features: dict, info: dict | None = None) -> None:
        """A candidate model node (features: ``{name: float}``); replaces the features of a known one."""
        bad = {k: v for k, v in features.items() if not isinstance(v, (int, float)) or not math.isfinite(v)}
        if bad:
            raise ValueError(f"model {ref}: features must be finite numbers, got {bad}")
        node = _mref(ref)
        if self.G.has_node(node):
            self.G.nodes[node].update(x=dict(features), info=dict(info or {}))
        else:
            self.G.add_node(node, kind="model", x={k: float(v) for k, v in features.items()}, info=dict(info or {}))

    def add_lineage(self, model: str, base: str, relation: str = "finetune") -> list[str]:
        """Lineage edges ``model → base`` (see the module docstring); ``base`` is a model ref, a bare zoo name
        (``unet-s-broad`` → ``zoo:unet-s-broad``) or a Hub id without revision (``hub:org/name`` → every
        ``hub:org/name@<sha>`` node). Returns the base refs linked (none when ``model`` or the base is not a
        model node of the graph, or the base is ``model`` itself)."""
        if not self.G.has_node(_mref(model)):
            return []
        refs = self.models
        found = [r for r in (base, f"zoo:{base}") if r in refs][:1] or sorted(r for r in refs if r.startswith(base + "@"))
        found = [b for b in found if b != model]
        for b in found:
            self.G.add_edge(_mref(model), _mref(b), kind="lineage", model=model, base=b, relation=str(relation))
        return found

    def add_dataset(self, ref: str, vector, family: str | None = None) -> None:
        """A new target dataset: a node with sim edges to its ``k`` nearest datasets, no perf edges.

        Existing edges do not move (the standardisation is the graph's fixed one). Adding a ref that
        is already a node updates its vector/family and recomputes only its own sim edges."""
        if self.G.graph.get("vec_mean") is None:
            raise ValueError("this graph has no dataset vectors yet; build it with from_reference first")
        v = _check_vector(ref, vector, len(self.G.graph["vec_mean"]))
        node = _dref(ref)
        if self.G.has_node(node):
            self.G.remove_edges_from([(node, n) for n in list(self.G.neighbors(node))
                                      if self.G.edges[node, n]["kind"] == "sim"])
            self.G.nodes[node].update(x=v.tolist(), family=family)
        else:
            self.G.add_node(node, kind="dataset", x=v.tolist(), family=family)
        others = [d for d in self.datasets if d != ref]
        if not others:
            return
        sim = self.similarity(ref, others)
        for j in np.argsort(-np.asarray([sim[o] for o in others]), kind="stable")[: self.G.graph["k"]]:
            self.G.add_edge(node, _dref(others[j]), kind="sim", weight=float(sim[others[j]]))

    def add_records(self, records: Iterable[dict]) -> None:
        """Add ProfileRecords as perf edges (status ``"ok"`` and purpose ``"profile"`` only; a ``job_id`` already present is
        replaced, so adding the same records twice changes nothing). Re-normalises the datasets touched.
        Raises ``ValueError`` naming a record whose model or dataset is not a node of the graph."""
        touched = set()
        for r in records:
            if r.get("status") != "ok" or r.get("purpose", "profile") != "profile":  # probes: mandc.probing
                continue
            job, metrics = r.get("job") or {}, r.get("metrics") or {}
            model, dataset = job.get("model"), job.get("dataset")
            if not self.G.has_node(_mref(model)):
                raise ValueError(f"record {r.get('job_id')}: model {model!r} is not in the graph (add_model first)")
            if not self.G.has_node(_dref(dataset)):
                raise ValueError(f"record {r.get('job_id')}: dataset {dataset!r} is not in the graph (add_dataset first)")
            loss = metrics.get("heldout_loss")
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                raise ValueError(f"record {r.get('job_id')}: heldout_loss must be a finite number, got {loss!r}")
            zs = metrics.get("zero_shot_loss")
            zs = float(zs) if isinstance(zs, (int, float)) and math.isfinite(zs) else None
            u, v = _mref(model), _dref(dataset)
            if not self.G.has_edge(u, v):
                self.G.add_edge(u, v, kind="perf", runs={})
            self.G.edges[u, v]["runs"][str(r["job_id"])] = {"seed": job.get("seed"), "loss": float(loss), "zero_shot": zs}
            touched.add(dataset)
        for d in touched:
            self._normalise(d)

    def _normalise(self, dataset: str) -> None:
        node = _dref(dataset)
        edges = [self.G.edges[node, m] for m in self.G.neighbors(node) if self.G.edges[node, m]["kind"] == "perf"]
        for e in edges:
            runs = e["runs"].values()
            e["raw"] = float(np.mean([r["loss"] for r in runs]))
            zs = [r["zero_shot"] for r in runs if r["zero_shot"] is not None]
            e["zero_shot"] = float(np.mean(zs)) if zs else None
        raw = [e["raw"] for e in edges]
        lo, hi = min(raw), max(raw)
        for e in edges:
            e["weight"] = 1.0 if hi - lo <= 1e-12 * max(abs(hi), 1.0) else (hi - e["raw"]) / (hi - lo)

    def without_performance(self, dataset_ref) -> "MatchingGraph":
        """A deep copy with every perf edge of ``dataset_ref`` (a ref, or a list of refs) removed; the
        nodes and their sim edges stay. This is what leave-one-dataset-out gives the selector: nothing
        measured on that dataset."""
        refs = [dataset_ref] if isinstance(dataset_ref, str) else list(dataset_ref)
        missing = [r for r in refs if not self.G.has_node(_dref(r))]
        if missing:
            raise KeyError(f"dataset {missing[0]!r} is not in the graph")
        G = _copy_graph(self.G)
        for r in refs:
            node = _dref(r)
            G.remove_edges_from([(node, n) for n in list(G.neighbors(node)) if G.edges[node, n]["kind"] == "perf"])
        return MatchingGraph(G)

    def without_model(self, model_ref: str) -> "MatchingGraph":
        """A deep copy with every perf edge of ``model_ref`` removed (its node and features stay) and the
        datasets it was measured on re-normalised over the other models: what leave-one-model-out gives
        the selector, a model that enters with features and lineage only."""
        node = _mref(model_ref)
        if not self.G.has_node(node):
            raise KeyError(f"model {model_ref!r} is not in the graph")
        G = _copy_graph(self.G)
        datasets = [n for n in G.neighbors(node) if G.edges[node, n]["kind"] == "perf"]
        G.remove_edges_from([(node, d) for d in datasets])
        h = MatchingGraph(G)
        for d in datasets:
            if any(G.edges[d, n]["kind"] == "perf" for n in G.neighbors(d)):
                h._normalise(d[2:])
        return h

    def copy(self) -> "MatchingGraph":
        return MatchingGraph(_copy_graph(self.G))

    def overlay(self) -> "MatchingGraph":
        """A graph that reads this one's nodes and edges without copying them (O(nodes), not O(edges)), to
        which :meth:`add_dataset` can add a dataset this graph does not hold without changing this graph:
        an adjacency row is copied when an edge is added to or removed from it. Only that and reading are
        allowed on it (attribute dicts are shared; for anything else use :meth:`copy`). What recommending
        for a new target needs, on a graph of any size."""
        H = _Overlay()
        H.graph.update(self.G.graph)
        H._node, H._adj = dict(self.G._node), dict(self.G._adj)
        return MatchingGraph(H)

    # ------------------------------------------------------------------ reading
    @property
    def models(self) -> list[str]:
        """Model refs, in insertion order."""
        return [n[2:] for n, a in self.G.nodes(data=True) if a["kind"] == "model"]

    @property
    def datasets(self) -> list[str]:
        """Every dataset ref (profiled, unprofiled and targets), in insertion order."""
        return [n[2:] for n, a in self.G.nodes(data=True) if a["kind"] == "dataset"]

    @property
    def profiled(self) -> list[str]:
        """Dataset refs with at least one perf edge."""
        return [d for d in self.datasets if any(self.G.edges[_dref(d), n]["kind"] == "perf"
                                                 for n in self.G.neighbors(_dref(d)))]

    @property
    def k(self) -> int:
        return int(self.G.graph["k"])

    @property
    def feature_names(self) -> list[str] | None:
        return self.G.graph.get("feature_names")

    def _perf(self, dataset_ref: str) -> dict[str, dict]:
        node = _dref(dataset_ref)
        if not self.G.has_node(node):
            raise KeyError(f"dataset {dataset_ref!r} is not in the graph")
        # sorted by model ref: networkx's neighbour order depends on insertion history (e.g. a JSON round
        # trip), and downstream float sums must not
        return {n[2:]: self.G.edges[node, n] for n in sorted(self.G.neighbors(node)) if self.G.edges[node, n]["kind"] == "perf"}

    def scores(self, dataset_ref: str) -> dict[str, float]:
        """Model ref → normalised score on ``dataset_ref`` in [0, 1] (higher is better; {} if unprofiled)."""
        return {m: e["weight"] for m, e in self._perf(dataset_ref).items()}

    def bases(self, ref: str) -> list[str]:
        """The models ``ref`` was made from (its lineage edges), sorted; ``[]`` for a root or a non-model."""
        node = _mref(ref)
        if not self.G.has_node(node):
            return []
        return sorted(a["base"] for n in self.G.neighbors(node)
                      if (a := self.G.edges[node, n])["kind"] == "lineage" and a["model"] == ref)

    def inherited_scores(self, dataset_ref: str) -> dict[str, float]:
        """Model ref → the score it inherits on ``dataset_ref`` through lineage, for every model without a
        perf edge there: the mean of its bases' scores, a base without one counting with its own inherited
        score (so a fine-tune of a fine-tune reaches the profiled ancestor). Models with a perf edge there,
        and those with no measured ancestor, are absent: measured evidence is never overridden."""
        measured = self.scores(dataset_ref)
        memo: dict[str, float | None] = {}

        def value(m: str, seen: frozenset) -> float | None:
            if m in measured:
                return measured[m]
            if m not in memo:
                vals = [v for b in self.bases(m) if b not in seen and (v := value(b, seen | {b})) is not None]
                memo[m] = float(np.mean(vals)) if vals else None
            return memo[m]

        out = {}
        for m in self.models:
            if m not in measured and (v := value(m, frozenset({m}))) is not None:
                out[m] = v
        return out

    def winner(self, dataset_ref: str) -> str | None:
        """The best model on ``dataset_ref``: the highest normalised score (= the lowest mean held-out loss);
        among exactly tied models, the ref that sorts first (as :func:`mandc.select.rank_of` orders them).
        None if the dataset is unprofiled."""
        scores = self.scores(dataset_ref)
        return min(scores, key=lambda m: (-scores[m], m)) if scores else None

    def mixture(self, ref: str) -> dict[str, float]:
        """Model ``ref``'s pretraining mixture ``{family: weight}`` as the selector sees it: its ``mix_<family>``
        features, normalised to sum 1 (``{}`` if it has none)."""
        mix = {k[4:]: v for k, v in self.G.nodes[_mref(ref)]["x"].items() if k.startswith("mix_") and v > 0}
        total = sum(mix.values())
        return {f: w / total for f, w in mix.items()} if total > 0 else {}

    def raw(self, dataset_ref: str) -> dict[str, float]:
        """Model ref → mean held-out loss over seeds on ``dataset_ref`` (lower is better)."""
        return {m: e["raw"] for m, e in self._perf(dataset_ref).items()}

    def zero_shot(self, dataset_ref: str) -> dict[str, float]:
        """Model ref → mean zero-shot (before fine-tuning) loss on ``dataset_ref``, where recorded."""
        return {m: e["zero_shot"] for m, e in self._perf(dataset_ref).items() if e["zero_shot"] is not None}

    def runs(self, dataset_ref: str) -> dict[str, list[dict]]:
        """Model ref → the individual runs ``[{"job_id", "seed", "loss", "zero_shot"}]`` on ``dataset_ref``."""
        return {m: [{"job_id": j, **r} for j, r in e["runs"].items()] for m, e in self._perf(dataset_ref).items()}

    def model_features(self, ref: str) -> dict[str, float]:
        return dict(self.G.nodes[_mref(ref)]["x"])

    def model_info(self, ref: str) -> dict:
        return dict(self.G.nodes[_mref(ref)].get("info") or {})

    def vector(self, dataset_ref: str) -> np.ndarray:
        """The dataset's feature vector ``[D]`` float64."""
        node = _dref(dataset_ref)
        if not self.G.has_node(node):
            raise KeyError(f"dataset {dataset_ref!r} is not in the graph")
        return np.asarray(self.G.nodes[node]["x"], dtype=np.float64)

    def family(self, dataset_ref: str) -> str | None:
        return self.G.nodes[_dref(dataset_ref)].get("family")

    def standardized(self, vectors: np.ndarray) -> np.ndarray:
        """``clip((x - mean) / std, ±clip) · mask`` with the graph's fixed standardisation (the module
        docstring says which columns similarity sees and why); ``[N, D] -> [N, D]``. This is what
        similarity, the GNN's dataset inputs and the selector's pair/neighbour features see."""
        a = self.G.graph
        z = (np.asarray(vectors, dtype=np.float64) - np.asarray(a["vec_mean"])) / np.asarray(a["vec_std"])
        if a.get("vec_clip") is not None:
            z = np.clip(z, -a["vec_clip"], a["vec_clip"])
        if a.get("vec_mask") is not None:  # graphs saved before the mask existed use every column
            z = z * np.asarray(a["vec_mask"])
        return z

    def varying(self) -> list[int]:
        """Indices of the vector columns that vary over the datasets the standardisation was fitted on
        (every column for a graph saved before this was recorded)."""
        v = self.G.graph.get("vec_varies")
        n = len(self.G.graph["vec_mean"]) if self.G.graph.get("vec_mean") is not None else 0
        return list(range(n)) if v is None else [i for i, f in enumerate(v) if f]

    def _cosine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        za, zb = self.standardized(a), self.standardized(b)
        za /= np.maximum(np.linalg.norm(za, axis=1, keepdims=True), 1e-12)
        zb /= np.maximum(np.linalg.norm(zb, axis=1, keepdims=True), 1e-12)
        return za @ zb.T

    def similarity(self, dataset_ref: str, others: list[str] | None = None) -> dict[str, float]:
        """Cosine similarity (standardised vectors) of ``dataset_ref`` to each of ``others``
        (default: every other dataset node)."""
        others = [d for d in self.datasets if d != dataset_ref] if others is None else list(others)
        if not others:
            return {}
        sim = self._cosine(self.vector(dataset_ref)[None], np.stack([self.vector(o) for o in others]))[0]
        return dict(zip(others, sim.tolist()))

    def nearest(self, dataset_ref: str, n: int = 5, profiled_only: bool = True) -> list[tuple[str, float]]:
        """The ``n`` most similar other datasets ``[(ref, cosine)]``, best first (by default only
        those with perf edges)."""
        pool = self.profiled if profiled_only else self.datasets
        sim = self.similarity(dataset_ref, [d for d in pool if d != dataset_ref])
        return sorted(sim.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def edges(self, kind: str) -> list[tuple[str, str, dict]]:
        """``(u, v, attrs)`` of one edge kind, nodes as ``"m:..."``/``"d:..."`` ids, ``u < v``, sorted
        (a deterministic order whatever the insertion history)."""
        out = []
        for u, v, a in self.G.edges(data=True):
            if a["kind"] == kind:
                out.append((u, v, a) if u < v else (v, u, a))
        return sorted(out, key=lambda e: (e[0], e[1]))

    def __repr__(self) -> str:
        return (f"MatchingGraph({len(self.models)} models, {len(self.datasets)} datasets "
                f"({len(self.profiled)} profiled), {len(self.edges('perf'))} perf + {len(self.edges('sim'))} sim edges"
                + (f", {n} lineage" if (n := len(self.edges('lineage'))) else "") + ")")

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        """Plain JSON: graph attributes, nodes and edges with all their attributes (an exact round trip)."""
        nodes = [{"id": n, **a} for n, a in self.G.nodes(data=True)]
        edges = [{"u": u, "v": v, **a} for u, v, a in self.G.edges(data=True)]
        return {"format": "mandc.MatchingGraph", "version": GRAPH_VERSION, "graph": dict(self.G.graph),
                "nodes": nodes, "edges": edges}

    @classmethod
    def from_json(cls, d: dict) -> "MatchingGraph":
        if not isinstance(d, dict) or d.get("format") != "mandc.MatchingGraph":
            raise ValueError("not a MatchingGraph JSON (expected an object with format 'mandc.MatchingGraph')")
        if d.get("version") != GRAPH_VERSION:
            raise ValueError(f"MatchingGraph JSON version {d.get('version')!r} is not supported (expected {GRAPH_VERSION})")
        G = nx.Graph(**copy.deepcopy(d["graph"]))
        for n in d["nodes"]:
            a = copy.deepcopy(n)
            G.add_node(a.pop("id"), **a)
        for e in d["edges"]:
            a = copy.deepcopy(e)
            G.add_edge(a.pop("u"), a.pop("v"), **a)
        return cls(G)


def _check_vector(ref: str, vector, dim: int | None) -> np.ndarray:
    if vector is None:
        raise ValueError(f"dataset {ref}: no feature vector")
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if dim is not None and v.size != dim:
        raise ValueError(f"dataset {ref}: vector has {v.size} values, expected {dim}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"dataset {ref}: vector has non-finite values at {np.flatnonzero(~np.isfinite(v)).tolist()}")
    return v


_ATOMIC = (str, int, float, bool, type(None))


def _plain_copy(x):
    """A deep copy of JSON-like data (dicts, lists, scalars; anything else through ``copy.deepcopy``)."""
    if isinstance(x, dict):
        return {k: v if type(v) in _ATOMIC else _plain_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [v if type(v) in _ATOMIC else _plain_copy(v) for v in x]
    return x if type(x) in _ATOMIC else copy.deepcopy(x)


def _copy_graph(G: nx.Graph) -> nx.Graph:
    """What ``copy.deepcopy(G)`` gives — the same nodes, adjacency order and (copied) attributes, each
    undirected edge's one attribute dict shared by both directions — several times faster on a graph of
    100k perf edges, whose attributes are plain JSON-like data (``copy.deepcopy``'s memo bookkeeping per
    object is what it spends its time on)."""
    H = G.__class__()
    H.graph.update(copy.deepcopy(G.graph))
    for n, a in G._node.items():
        H._node[n] = _plain_copy(a)
    shared: dict[int, dict] = {}  # id of G's edge dict -> its copy
    for u, nbrs in G._adj.items():
        H._adj[u] = {v: shared[id(a)] if id(a) in shared else shared.setdefault(id(a), _plain_copy(a))
                     for v, a in nbrs.items()}
    return H


class _Overlay(nx.Graph):
    """A graph sharing another's node and edge dicts (:meth:`MatchingGraph.overlay`): adding or removing an
    edge first gives the touched nodes their own adjacency rows (and an existing edge its own attributes)."""

    def __init__(self, *args, **kwargs):
        self._owned: set = set()
        super().__init__(*args, **kwargs)

    def _own(self, n) -> None:
        if n in self._adj and n not in self._owned:
            self._adj[n] = dict(self._adj[n])
            self._owned.add(n)

    def add_edge(self, u, v, **attr):
        self._own(u)
        self._own(v)
        if u in self._adj and v in self._adj[u]:
            self._adj[u][v] = self._adj[v][u] = dict(self._adj[u][v])
        super().add_edge(u, v, **attr)

    def remove_edge(self, u, v):
        self._own(u)
        self._own(v)
        super().remove_edge(u, v)

    def remove_edges_from(self, ebunch):
        ebunch = list(ebunch)
        for e in ebunch:
            self._own(e[0])
            self._own(e[1])
        super().remove_edges_from(ebunch)
