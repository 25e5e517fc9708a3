"""The M&C predictor: LightGBM over model, dataset, pair, neighbourhood and graph-embedding features.

One row per (dataset ``d``, model ``m``); rows of one dataset form one ranking group. Feature groups
(each can be switched off in :class:`SelectorConfig`, which is how the ablations are run):

* ``model`` — the model's feature dict (``profiler.modelinfo``: kind, size, depth/width, resolution,
  text width, pretraining steps, pretraining mixture ``mix_<family>``, card embedding).
* ``data`` — the dataset's feature vector (``DatasetFeatures.to_vector()``).
* ``pair`` — how close the target is to what the model was pretrained on, from features only (no
  performance edge). With ``u(·)`` the unit standardised dataset vector, ``J`` the graph's datasets that
  have a catalog family (the target excluded), ``c_f`` the unit mean of ``u`` over family ``f`` and
  ``w_m`` the model's pretraining mixture (its ``mix_<family>`` features, normalised to sum 1):
  ``mix_cos = cos(u(d), Σ_f w_mf c_f)``, ``mix_sim = Σ_f w_mf ⟨u(d), c_f⟩``,
  ``mix_soft = Σ_j softmax_j(⟨u(d), u(j)⟩ / 0.1) · w_m[f(j)]`` (the mixture weight of the family the
  target most resembles) and ``mix_nn = max_{j: w_m[f(j)] > 0} ⟨u(d), u(j)⟩``.
* ``neighbors`` — the model's measured performance on the target's ``knn`` most similar *profiled*
  datasets ``j`` (cosine ``s_j`` of standardised vectors, weights ``ω_j = max(s_j, 0)``, plus a small
  floor): ``knn_score = Σ ω_j score(m, j) / Σ ω_j``, ``knn_win`` (the same mean of "m was best on j"),
  ``knn_rank`` (mean rank of m on the neighbours, 0 = best), ``nn1_score`` (score on the nearest), and
  ``prior`` (mean score of m over all profiled datasets other than d).
* ``embedding`` — from the graph embedding (GraphSAGE or node2vec): ``link = ⟨z_m, z_d⟩`` and
  ``cos = cos(z_m, z_d)`` (plus the vectors themselves with ``emb_vectors``).
* ``probe`` (optional) — the model's zero-shot loss on the target, min–max normalised over the
  candidates (higher = lower loss) and its rank.

Leakage: a row of dataset ``d`` never sees ``d``'s own performance edges. Neighbour features skip ``d``;
GraphSAGE rows come from a forward pass with ``d``'s performance edges hidden, and with ``crossfit = K``
(default 4) a training row's embedding comes from a GNN fitted on a graph *without* its fold's edges
(out-of-fold, like stacking): otherwise the GNN, supervised on ``d``, hands LightGBM an in-sample link
score that is far better than any it can produce for a new dataset, and LightGBM over-trusts it
(measured on the first, 20-step reference: 67.5% → 71.2% top-1, regret 0.033 → 0.027, 5 seeds). ``predict`` hides
the target's edges as well, so even a graph that still holds them cannot leak them into the prediction
(node2vec, being transductive, relies on the caller: leave-one-dataset-out passes
``graph.without_performance(d)``).

The predictor is ``LGBMRanker`` (lambdarank, one group per dataset, integer relevance from the
normalised score) or ``LGBMRegressor`` on the normalised score, or both (their per-dataset ranks are
averaged). The output is higher-is-better.

With ``knn_init = λ > 0`` (default 3) boosting starts from the graph's neighbour prior instead of zero:
every row's initial score is ``λ · knn_score`` (LightGBM's ``init_score``, added back at prediction),
so the trees learn corrections to "what won on the most similar datasets" rather than a ranking from
scratch, which ~340 rows cannot support well. Measured (LODO, 2 seeds, GraphSAGE with crossfit):
top-1 70.3% → 73.4%, regret 0.0274 → 0.0247. Without neighbour features it has no effect. With the
zero-shot probe the init score also gets ``probe_init · z.probe`` (default 20, and 100 trees instead of
300): the probe is a measurement on the target itself, so it leads and the neighbours and trees correct
it (``benchmarks/selection.py --seeds 5`` on the 20-step reference: 77.5% → 81.2% top-1, regret 0.022 → 0.008;
on the 80-step reference the probe is weaker and ``mandc_probe`` gains less: 71.9% → 74.4%). These weights were chosen on the same
leave-one-dataset-out evaluation that reports them (no nested split: 32 datasets are too few), so the
figures are optimistic by the amount a few tuned scalars can overfit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mandc.graph import MatchingGraph

FEATURE_GROUPS = ("model", "data", "pair", "neighbors", "embedding", "probe")
PAIR_TEMPERATURE = 0.1  # softmax temperature over cosines for p.mix_soft


@dataclass
class SelectorConfig:
    embedding: str = "sage"          # "sage" | "node2vec" | "none"
    use_data_edges: bool = True      # False: no data–data edges (GNN without sim relation, no neighbour features)
    model_features: bool = True
    data_features: bool = True
    pair_features: bool = True
    neighbor_features: bool = True
    emb_vectors: bool = False        # also feed the raw embedding vectors (2·dim columns)
    crossfit: int = 4                # > 1: out-of-fold GNN embeddings for the training rows (K extra GNN fits)
    probe: bool = False              # zero-shot probe features (predict then needs probe=)
    objective: str = "rank"          # "rank" (LGBMRanker) | "regress" (LGBMRegressor) | "both"
    label: str = "score"             # ranker relevance: "score" = floor(4·score) (0..4), "rank" = 3/2/1 for the top 3
    knn: int = 5                     # neighbours for the neighbour features
    knn_init: float = 3.0            # > 0: boost from the neighbour prior, init score = knn_init · n.knn_score
    probe_init: float = 20.0         # with the probe: + probe_init · z.probe in the init score
    seed: int = 0                    # GNN init/masks, node2vec walks, LightGBM bagging
    # LightGBM: ~340 rows (31 datasets × 11 models) and ~95 columns, so many shallow, slow trees that
    # each see 30% of the columns (chosen on the reference by M&C's own LODO regret; with the probe,
    # 80%, so that most trees can split on its two columns — measured: 78% vs 75% top-1 over 2 seeds)
    n_estimators: int | None = None  # None: 300, or 100 with the probe (its init score needs fewer corrections)
    learning_rate: float = 0.03
    num_leaves: int = 7
    min_child_samples: int = 10
    subsample: float = 0.8           # row bagging (every iteration)
    colsample_bytree: float | None = None  # None: 0.3, or 0.8 with the probe
    reg_lambda: float = 1.0
    sage: dict = field(default_factory=dict)      # SageConfig overrides
    node2vec: dict = field(default_factory=dict)  # Node2VecConfig overrides

    def __post_init__(self):
        if self.embedding not in ("sage", "node2vec", "none"):
            raise ValueError(f"SelectorConfig.embedding must be 'sage', 'node2vec' or 'none', got {self.embedding!r}")
        if self.objective not in ("rank", "regress", "both"):
            raise ValueError(f"SelectorConfig.objective must be 'rank', 'regress' or 'both', got {self.objective!r}")
        if self.crossfit > 1 and self.emb_vectors:
            raise ValueError("SelectorConfig.crossfit needs emb_vectors=False (vectors of different GNN fits are not comparable)")
        if self.label not in ("score", "rank"):
            raise ValueError(f"SelectorConfig.label must be 'score' or 'rank', got {self.label!r}")

    def trees(self) -> int:
        """The number of boosting rounds (the default depends on the probe, see the field comment)."""
        if self.n_estimators is not None:
            return self.n_estimators
        return 100 if self.probe else 300

    def colsample(self) -> float:
        """The column fraction per tree (the default depends on the probe, see the field comment)."""
        if self.colsample_bytree is not None:
            return self.colsample_bytree
        return 0.8 if self.probe else 0.3

    def to_dict(self) -> dict:
        return asdict(self)


def _mixture(graph: MatchingGraph, model: str) -> dict[str, float]:
    """``{family: weight}`` from the model's ``mix_<family>`` features, normalised to sum 1 ({} if none)."""
    mix = {k[4:]: v for k, v in graph.model_features(model).items() if k.startswith("mix_") and v > 0}
    total = sum(mix.values())
    return {f: w / total for f, w in mix.items()} if total > 0 else {}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


class Selector:
    """Ranks a graph's models for a dataset: ``Selector(cfg).fit(graph).predict(graph, d) -> {model: score}``."""

    def __init__(self, cfg: SelectorConfig | None = None):
        self.cfg = cfg or SelectorConfig()
        self.embedder = None
        self.models_: list[str] = []
        self.feature_names_: list[str] = []
        self.model_keys_: list[str] = []
        self._lgbm: list = []

    # ------------------------------------------------------------------ features
    def _context(self, graph: MatchingGraph) -> dict:
        """Per-graph quantities shared by all rows: profiled datasets, their scores, the unit-normalised
        standardised vectors ``u`` and the family of every dataset that has one."""
        profiled = graph.profiled
        u = {d: _unit(graph.standardized(graph.vector(d)[None])[0]) for d in graph.datasets}
        fam = {d: graph.family(d) for d in graph.datasets if graph.family(d)}
        return {"profiled": profiled, "scores": {d: graph.scores(d) for d in profiled}, "u": u, "family": fam}

    def _rows(self, graph: MatchingGraph, ctx: dict, d: str, models: list[str], emb, probe: dict | None) -> np.ndarray:
        """Feature matrix ``[len(models), F]`` for dataset ``d`` (the order of ``self.feature_names_``)."""
        cfg = self.cfg
        cols: list[np.ndarray] = []
        names: list[str] = []

        def add(name, values):
            names.append(name)
            cols.append(np.asarray(values, dtype=np.float64))

        if cfg.model_features:
            for k in self.model_keys_:
                add(f"m.{k}", [graph.model_features(m).get(k, np.nan) for m in models])
        if cfg.data_features:
            v = graph.vector(d)
            fn = graph.feature_names or [str(i) for i in range(len(v))]
            for i, x in enumerate(v):
                add(f"d.{fn[i]}", np.full(len(models), x))
        ud = ctx["u"][d]
        if cfg.pair_features:
            # datasets with a family, the target excluded (a user's folder has no family, a catalog
            # target must not describe itself)
            fds = [j for j in ctx["family"] if j != d]
            fam = [ctx["family"][j] for j in fds]
            U = np.stack([ctx["u"][j] for j in fds]) if fds else np.zeros((0, len(ud)))
            cos = U @ ud                                                   # [J]
            soft = np.exp((cos - cos.max()) / PAIR_TEMPERATURE) if fds else cos
            soft = soft / soft.sum() if fds else soft
            fams = sorted(set(fam))
            cents = {f: _unit(U[[i for i, g in enumerate(fam) if g == f]].mean(0)) for f in fams}
            cols_p = {"mix_cos": [], "mix_sim": [], "mix_soft": [], "mix_nn": []}
            for m in models:
                mix = _mixture(graph, m)
                w = np.array([mix.get(f, 0.0) for f in fam])               # the mixture weight of each j's family
                if not fds or not any(f in mix for f in fams):
                    for v in cols_p.values():
                        v.append(np.nan)
                    continue
                wf = np.array([mix.get(f, 0.0) for f in fams])
                C = np.stack([cents[f] for f in fams])
                cols_p["mix_cos"].append(float(ud @ _unit(wf @ C)))
                cols_p["mix_sim"].append(float(wf @ (C @ ud) / max(wf.sum(), 1e-12)))
                cols_p["mix_soft"].append(float(soft @ w))
                cols_p["mix_nn"].append(float(cos[w > 0].max()) if np.any(w > 0) else -1.0)
            for k, v in cols_p.items():
                add(f"p.{k}", v)
        if cfg.neighbor_features and cfg.use_data_edges:
            others = [j for j in ctx["profiled"] if j != d]
            S = np.array([[ctx["scores"][j].get(m, np.nan) for m in models] for j in others]).reshape(len(others), len(models))
            if others:
                sims = np.array([ctx["u"][j] for j in others]) @ ud
                near = np.lexsort((np.array(others), -sims))[: cfg.knn]  # by similarity, ties by ref
                w = np.maximum(sims[near], 0.0)[:, None] + 1e-3             # [k, 1]
                Sn = S[near]                                                # [k, M]
                known = ~np.isnan(Sn)
                best = np.nanmax(np.where(np.isnan(S), -np.inf, S), 1)[near][:, None]
                n_j = known.sum(1, keepdims=True)
                # rank of m on j: how many models beat it, over (models on j - 1); 0 = best
                better = (Sn[:, None, :] > Sn[:, :, None]).sum(2)
                rank = np.where(known, better / np.maximum(n_j - 1, 1), np.nan)
                with np.errstate(invalid="ignore", divide="ignore"):
                    add("n.knn_score", np.nansum(w * Sn, 0) / (w * known).sum(0))
                    add("n.knn_win", (w * (Sn >= best)).sum(0) / w.sum())
                    add("n.knn_rank", np.nanmean(rank, 0) if len(near) else np.full(len(models), np.nan))
                    add("n.nn1_score", Sn[0])
                    add("n.prior", np.nanmean(S, 0))
            else:
                for n in ("knn_score", "knn_win", "knn_rank", "nn1_score", "prior"):
                    add(f"n.{n}", np.full(len(models), np.nan))
        if emb is not None:
            zm, zdd = emb
            e_d = zdd[d]
            add("e.link", [float(zm[m] @ e_d) for m in models])
            add("e.cos", [float(_unit(zm[m]) @ _unit(e_d)) for m in models])
            if cfg.emb_vectors:
                for i in range(len(e_d)):
                    add(f"e.d{i}", np.full(len(models), e_d[i]))
                for i in range(len(e_d)):
                    add(f"e.m{i}", [zm[m][i] for m in models])
        if cfg.probe:
            p = np.array([probe.get(m, np.nan) if probe else np.nan for m in models], dtype=np.float64)
            ok = ~np.isnan(p)
            if ok.sum() >= 2 and np.ptp(p[ok]) > 0:
                lo, hi = np.nanmin(p), np.nanmax(p)
                add("z.probe", (hi - p) / (hi - lo))
            else:
                add("z.probe", np.where(ok, 1.0, np.nan))
            add("z.probe_rank", [np.sum(p[ok] < x) / max(ok.sum() - 1, 1) if not np.isnan(x) else np.nan for x in p])
        if self.feature_names_ and names != self.feature_names_:
            raise RuntimeError("feature layout changed between fit and predict")  # a bug, not bad input
        self._last_names = names
        return np.stack(cols, 1) if cols else np.zeros((len(models), 0))

    def _embedding(self, graph: MatchingGraph, hide=()):
        if self.embedder is None:
            return None
        return self.embedder.embed(graph, hide=hide)

    # ------------------------------------------------------------------ fit / predict
    def fit(self, graph: MatchingGraph, embedder=None) -> "Selector":
        """Train the embedder (if any) and LightGBM on ``graph``'s perf edges only. ``embedder``: an
        already fitted embedder of the configured kind *on this same graph* (evaluation shares one
        between selectors that differ only in LightGBM features)."""
        import lightgbm as lgb

        cfg = self.cfg
        profiled = graph.profiled
        if len(profiled) < 2:
            raise ValueError(f"the graph needs at least 2 profiled datasets to fit a selector, it has {len(profiled)}")
        self.models_ = graph.models
        self.model_keys_ = sorted({k for m in self.models_ for k in graph.model_features(m)})
        self.feature_names_ = []
        self.embedder = embedder if embedder is not None else make_embedder(cfg, graph)
        ctx = self._context(graph)
        if cfg.embedding == "sage" and cfg.crossfit > 1:
            embs = self._crossfit_embeddings(graph, profiled)
        elif cfg.embedding == "sage":  # each training dataset embedded with its own perf edges hidden
            embs = self.embedder.embed_many(graph, [[d] for d in profiled])
        else:
            embs = [self._embedding(graph)] * len(profiled)
        X, y, yr, groups = [], [], [], []
        for d, emb in zip(profiled, embs):
            sc = ctx["scores"][d]
            models = [m for m in self.models_ if m in sc]
            probe = graph.zero_shot(d) if cfg.probe else None
            X.append(self._rows(graph, ctx, d, models, emb, probe))
            s = np.array([sc[m] for m in models])
            y.append(s)
            order = (-s).argsort(kind="stable")
            rel = np.zeros(len(models), dtype=int)
            rel[order[:3]] = [3, 2, 1][: min(3, len(models))]
            yr.append(np.minimum(np.floor(4 * s), 4).astype(int) if cfg.label == "score" else rel)
            groups.append(len(models))
        self.feature_names_ = self._last_names
        X = np.concatenate(X)
        common = dict(n_estimators=cfg.trees(), learning_rate=cfg.learning_rate, num_leaves=cfg.num_leaves,
                      min_child_samples=cfg.min_child_samples, subsample=cfg.subsample, subsample_freq=1,
                      colsample_bytree=cfg.colsample(), reg_lambda=cfg.reg_lambda, random_state=cfg.seed,
                      n_jobs=1, verbose=-1)
        self._lgbm = []
        init = self._init_score(X)
        if cfg.objective in ("rank", "both"):
            r = lgb.LGBMRanker(objective="lambdarank", **common)
            r.fit(X, np.concatenate(yr), group=groups, init_score=init)
            self._lgbm.append(r)
        if cfg.objective in ("regress", "both"):
            r = lgb.LGBMRegressor(objective="regression", **common)
            r.fit(X, np.concatenate(y), init_score=init)
            self._lgbm.append(r)
        return self

    def _init_score(self, X: np.ndarray):
        """``knn_init · n.knn_score`` per row (None when off): the trees then learn corrections to
        the graph's neighbour prior instead of a ranking from scratch."""
        init = np.zeros(len(X))
        for name, w in (("n.knn_score", self.cfg.knn_init), ("z.probe", self.cfg.probe_init)):
            if w > 0 and name in self.feature_names_:
                init += w * np.nan_to_num(X[:, self.feature_names_.index(name)], nan=0.5)
        return init if init.any() else None

    def _crossfit_embeddings(self, graph: MatchingGraph, profiled: list[str]) -> list:
        """Out-of-fold GraphSAGE embeddings for the training rows: the profiled datasets are split into
        ``crossfit`` folds, and a fold's rows come from a GNN trained on a graph without that fold's
        perf edges (neither message passing nor supervision saw them). Without it a training row's
        link score is an in-sample fit of its own label, far more accurate than at prediction time,
        and LightGBM learns to over-trust it (stacking leakage)."""
        from mandc.embed import SageConfig, SageEmbedder

        cfg = self.cfg
        key = (cfg.crossfit, tuple(profiled))
        cache = self.embedder.__dict__.setdefault("_oof_cache", {})  # shared with selectors sharing the embedder
        if key in cache:
            return cache[key]
        rng = np.random.default_rng(cfg.seed)
        order = [profiled[i] for i in rng.permutation(len(profiled))]
        folds = [order[i::cfg.crossfit] for i in range(cfg.crossfit)]
        out = {}
        for k, fold in enumerate(folds):
            gk = graph.without_performance(fold)
            ek = SageEmbedder(SageConfig(**{**cfg.sage, "use_data_edges": cfg.use_data_edges})).fit(gk, seed=cfg.seed + 1 + k)
            for d, e in zip(fold, ek.embed_many(gk, [[d] for d in fold])):
                out[d] = e
        cache[key] = [out[d] for d in profiled]
        return cache[key]

    def features(self, graph: MatchingGraph, dataset_ref: str, probe: dict | None = None):
        """``(models, names, X [M, F])``: the rows ``predict`` scores for ``dataset_ref``."""
        if not self._lgbm:
            raise RuntimeError("Selector.predict before fit")
        if self.cfg.probe and not probe:
            raise ValueError("this selector uses the zero-shot probe: pass probe={model ref: zero-shot loss}")
        models = [m for m in self.models_ if m in set(graph.models)]
        emb = self._embedding(graph, hide=[dataset_ref]) if self.cfg.embedding != "none" else None
        X = self._rows(graph, self._context(graph), dataset_ref, models, emb, probe)
        return models, self.feature_names_, X

    def predict(self, graph: MatchingGraph, dataset_ref: str, probe: dict | None = None) -> dict[str, float]:
        """Model ref → predicted score for ``dataset_ref`` (higher = better). ``probe``: model ref →
        zero-shot loss on the target (required when the config uses the probe)."""
        models, _, X = self.features(graph, dataset_ref, probe)
        init = self._init_score(X)
        preds = [np.asarray(r.predict(X), dtype=np.float64) + (0.0 if init is None else init) for r in self._lgbm]
        if len(preds) == 1:
            out = preds[0]
        else:  # average of per-dataset ranks (0 = worst) of ranker and regressor
            out = np.mean([p.argsort(kind="stable").argsort(kind="stable") for p in preds], 0)
        return dict(zip(models, out.tolist()))

    def explain(self, graph: MatchingGraph, dataset_ref: str, n: int = 5) -> dict:
        """Why: the ``n`` nearest profiled datasets ``[(ref, cosine)]`` and the best model on each."""
        near = graph.nearest(dataset_ref, n=n)
        winners = {}
        for ref, _ in near:
            sc = graph.scores(ref)
            winners[ref] = max(sc, key=lambda m: (sc[m], m)) if sc else None
        return {"nearest": near, "winners": winners}

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature, summed over the fitted LightGBM models, largest first."""
        imp = np.zeros(len(self.feature_names_))
        for r in self._lgbm:
            imp += r.booster_.feature_importance(importance_type="gain")
        return dict(sorted(zip(self.feature_names_, imp.tolist()), key=lambda kv: -kv[1]))


def make_embedder(cfg: SelectorConfig, graph: MatchingGraph):
    """The embedder ``cfg`` asks for, fitted on ``graph`` with ``cfg.seed`` (None for ``"none"``)."""
    if cfg.embedding == "sage":
        from mandc.embed import SageConfig, SageEmbedder

        return SageEmbedder(SageConfig(**{**cfg.sage, "use_data_edges": cfg.use_data_edges})).fit(graph, seed=cfg.seed)
    if cfg.embedding == "node2vec":
        from mandc.embed import Node2VecConfig, Node2VecEmbedder

        return Node2VecEmbedder(Node2VecConfig(**{**cfg.node2vec, "use_data_edges": cfg.use_data_edges})).fit(graph, seed=cfg.seed)
    return None


def embedder_key(cfg: SelectorConfig) -> tuple:
    """Selectors with equal keys can share one fitted embedder."""
    sub = cfg.sage if cfg.embedding == "sage" else cfg.node2vec if cfg.embedding == "node2vec" else {}
    return (cfg.embedding, cfg.use_data_edges, cfg.seed, cfg.crossfit if cfg.embedding == "sage" else 0,
            tuple(sorted(sub.items())))


def rank_of(pred: dict[str, float]) -> list[str]:
    """Model refs sorted best first (ties broken by name, deterministic)."""
    return sorted(pred, key=lambda m: (-pred[m], m))

