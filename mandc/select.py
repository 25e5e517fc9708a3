"""The M&C predictor: LightGBM over model, dataset, pair, neighbourhood and graph-embedding features.

One row per (dataset ``d``, model ``m``); rows of one dataset form one ranking group. Feature groups
(each can be switched off in :class:`SelectorConfig`, which is how the ablations are run):

* ``model`` — the model's feature dict (``profiler.modelinfo``: kind, size, depth/width, resolution,
  text width, pretraining steps, pretraining mixture ``mix_<family>``, card embedding).
* ``data`` — the dataset's feature vector (``DatasetFeatures.to_vector()``), the columns that vary over
  the catalog only (:meth:`MatchingGraph.varying`).
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
  ``prior`` (mean score of m over all profiled datasets other than d). A model that has no perf edge on
  a dataset ``j`` but a lineage edge (``lineage=True``, the default) counts there with the score it
  inherits from its base models (:meth:`MatchingGraph.inherited_scores`): a crawled fine-tune of a
  profiled model enters with its base's record instead of none. The other models' features do not
  change (``knn_win`` and ``knn_rank`` compare with measured models only), and neither does anything of a
  model that has its own edge on ``j``; on a complete matrix the group is what it is without lineage.
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
scratch, which ~340 rows cannot support well (measured on the first, 20-step reference, LODO, 2 seeds:
top-1 70.3% → 73.4%, regret 0.0274 → 0.0247). Without neighbour features it has no effect. With the
zero-shot probe the init score also gets ``probe_init · z.probe``: the probe is a measurement on the
target itself, so it can lead and the neighbours and trees correct it.

How far the trees should move that prior, and how much the probe should weigh, are not constants: they
depend on the fine-tuning budget behind the graph (the probe predicts 20-step fine-tuning far better
than 80-step) and on how many datasets the graph holds, which grows with every profiled dataset. So
both are chosen at every fit by grouped K-fold cross-validation over the training datasets
(:meth:`Selector._cv_trees`): the number of boosting rounds from ``TREE_GRID`` (0 = the prior alone)
and, with the probe, its weight from ``PROBE_GRID``, by the validation datasets' mean regret (ties,
common because regret sees only the top pick, by the mean NDCG of their whole rankings). The CV
sees only the graph it is fitted on, so under leave-one-dataset-out the held-out dataset never takes
part in these choices. Measured with ``benchmarks/selection.py --seeds 5`` against the fixed values the
first reference had led to (300 rounds, ``probe_init`` 20; ``--n-estimators 300 --probe-init 20``):
see the README's selection section. The remaining scalars (``knn_init``, learning rate, leaves, column
fraction) are fixed; they were chosen on the 20-step reference's leave-one-dataset-out evaluation.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np

from finetune.options import option
from mandc.graph import MatchingGraph

FEATURE_GROUPS = ("model", "data", "pair", "neighbors", "embedding", "probe")
TREE_GRID = (0, 10, 25, 50, 100, 200)  # boosting rounds the CV of ``n_estimators=None`` chooses from
PROBE_GRID = (0.0, 3.0, 10.0, 30.0)     # probe weights the CV of ``probe_init=None`` chooses from
PAIR_TEMPERATURE = 0.1  # softmax temperature over cosines for p.mix_soft
MARGIN_COVERAGE = 0.9   # the contenders of a prediction hold a dataset's measured winner this often (CV-calibrated)
EMBEDDINGS = ("sage", "node2vec", "none")  # the names of mandc.embed.EMBEDDERS, and no embedding


@dataclass
class SelectorConfig:
    """The selector's options (``help`` in each field's metadata, as in the method configs)."""

    embedding: str = option("sage", "graph embedding: 'sage' (GraphSAGE, inductive), 'node2vec' (transductive) "
                                    "or 'none'")
    use_data_edges: bool = option(True, "False: no data–data edges (GNN without the sim relation, no neighbour "
                                        "features)")
    model_features: bool = option(True, "feature group 'model': each model's own features (m.*)")
    data_features: bool = option(True, "feature group 'data': the target dataset's vector (d.*)")
    pair_features: bool = option(True, "feature group 'pair': the target against each model's pretraining "
                                       "mixture (p.*)")
    neighbor_features: bool = option(True, "feature group 'neighbors': results on the most similar profiled "
                                           "datasets (n.*)")
    emb_vectors: bool = option(False, "also feed the raw embedding vectors (2·dim columns)")
    crossfit: int = option(4, "> 1: out-of-fold GNN embeddings for the training rows (K extra GNN fits)")
    probe: bool = option(False, "zero-shot probe features (predict then needs probe=)")
    objective: str = option("rank", "'rank' (LGBMRanker), 'regress' (LGBMRegressor) or 'both'")
    label: str = option("score", "ranker relevance: 'score' = floor(4·score) (0..4), 'rank' = 3/2/1 for the top 3")
    knn: int = option(5, "neighbours for the neighbour features")
    lineage: bool = option(True, "a model unmeasured on a neighbour dataset takes its base models' score there "
                                 "(n.*; MatchingGraph.inherited_scores); False: unmeasured is NaN")
    knn_init: float = option(3.0, "> 0: boost from the neighbour prior, init score = knn_init · n.knn_score")
    probe_init: float | None = option(None, "with the probe: + probe_init · z.probe in the init score (None: "
                                            "chosen with the trees by CV from PROBE_GRID)")
    seed: int = option(0, "GNN init and masks, node2vec walks, LightGBM bagging")
    # LightGBM: ~340 rows (31 datasets × 11 models) and ~95 columns, so shallow, slow trees that each
    # see 30% of the columns (with the probe 80%, so that most trees can split on its two columns —
    # measured on the 20-step reference: 78% vs 75% top-1 over 2 seeds). How many trees the data
    # support changes with the graph (it grows with every profiled dataset), so it is not a constant:
    n_estimators: int | None = option(None, "boosting rounds; None: chosen at each fit by grouped K-fold CV from "
                                            "TREE_GRID (0 = the prior alone)")
    cv_folds: int = option(4, "folds (of training datasets) of that CV")
    learning_rate: float = option(0.03, "LightGBM learning rate")
    num_leaves: int = option(7, "LightGBM leaves per tree")
    min_child_samples: int = option(10, "LightGBM minimum rows per leaf")
    subsample: float = option(0.8, "LightGBM row bagging (every iteration)")
    colsample_bytree: float | None = option(None, "LightGBM column fraction per tree; None: 0.3, or 0.8 with the "
                                                  "probe")
    reg_lambda: float = option(1.0, "LightGBM L2 regularisation")
    sage: dict = option({}, "SageConfig overrides (mandc.embed)")
    node2vec: dict = option({}, "Node2VecConfig overrides (mandc.embed)")

    def __post_init__(self):
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"SelectorConfig.embedding must be one of {', '.join(map(repr, EMBEDDINGS))}, "
                             f"got {self.embedding!r}")
        if self.objective not in ("rank", "regress", "both"):
            raise ValueError(f"SelectorConfig.objective must be 'rank', 'regress' or 'both', got {self.objective!r}")
        if self.crossfit > 1 and self.emb_vectors:
            raise ValueError("SelectorConfig.crossfit needs emb_vectors=False (vectors of different GNN fits are not comparable)")
        if self.n_estimators is not None and self.n_estimators < 0:
            raise ValueError(f"SelectorConfig.n_estimators must be ≥ 0 or None (chosen by CV), got {self.n_estimators}")
        if self.n_estimators is None and self.cv_folds < 2:
            raise ValueError(f"SelectorConfig.cv_folds must be ≥ 2 to choose n_estimators by CV, got {self.cv_folds}")
        if self.label not in ("score", "rank"):
            raise ValueError(f"SelectorConfig.label must be 'score' or 'rank', got {self.label!r}")

    def colsample(self) -> float:
        """The column fraction per tree (the default depends on the probe, see the field comment)."""
        if self.colsample_bytree is not None:
            return self.colsample_bytree
        return 0.8 if self.probe else 0.3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def help(cls) -> dict[str, tuple[object, str]]:
        """``{field: (default, help)}``, like :meth:`finetune.methods.MethodConfig.help`."""
        return {f.name: (f.default_factory() if f.default is MISSING else f.default, f.metadata["help"])
                for f in fields(cls)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


# ------------------------------------------------------------------ feature groups
# One function per group of FEATURE_GROUPS: ``{column name: values [len(models)]}`` for target dataset ``d``.
def model_columns(graph: MatchingGraph, models: list[str], keys: list[str]) -> dict[str, np.ndarray]:
    """``m.<key>``: each model's own features (NaN where a model lacks one)."""
    feats = [graph.model_features(m) for m in models]  # once per model, not once per (model, key)
    return {f"m.{k}": np.array([f.get(k, np.nan) for f in feats], dtype=np.float64) for k in keys}


def data_columns(graph: MatchingGraph, d: str, n_models: int) -> dict[str, np.ndarray]:
    """``d.<name>``: the target's feature vector, the same for every model, without the columns the
    graph's catalog holds constant (:meth:`MatchingGraph.varying`: they teach the trees nothing, and a
    user dataset that differs there would be told apart from the catalog by bookkeeping alone)."""
    v = graph.vector(d)
    fn = graph.feature_names or [str(i) for i in range(len(v))]
    return {f"d.{fn[i]}": np.full(n_models, v[i]) for i in graph.varying()}


def pair_columns(graph: MatchingGraph, ctx: dict, d: str, models: list[str]) -> dict[str, np.ndarray]:
    """``p.mix_cos, p.mix_sim, p.mix_soft, p.mix_nn``: how close the target is to what each model was
    pretrained on (its mixture over the families of the datasets that have one; see the module doc)."""
    ud = ctx["u"][d]
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
    fam_index = {f: i for i, f in enumerate(fams)}
    code = np.array([fam_index[g] for g in fam], dtype=np.int64)  # each j's family, as an index into fams
    C = np.stack([cents[f] for f in fams]) if fams else None         # [F, D] family centroids
    cols = {"mix_cos": [], "mix_sim": [], "mix_soft": [], "mix_nn": []}
    for m in models:
        mix = graph.mixture(m)
        wf = np.array([mix.get(f, 0.0) for f in fams])
        w = wf[code]                                                # the mixture weight of each j's family
        if not fds or not any(f in mix for f in fams):
            for v in cols.values():
                v.append(np.nan)
            continue
        cols["mix_cos"].append(float(ud @ _unit(wf @ C)))
        cols["mix_sim"].append(float(wf @ (C @ ud) / max(wf.sum(), 1e-12)))
        cols["mix_soft"].append(float(soft @ w))
        cols["mix_nn"].append(float(cos[w > 0].max()) if np.any(w > 0) else -1.0)
    return {f"p.{k}": np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def neighbor_columns(ctx: dict, d: str, models: list[str], knn: int) -> dict[str, np.ndarray]:
    """``n.knn_score, n.knn_win, n.knn_rank, n.nn1_score, n.prior``: each model's measured results on the
    ``knn`` profiled datasets most similar to the target (see the module doc); NaN with none profiled.
    Where ``ctx["inherited"]`` is given, a model unmeasured on ``j`` reads its inherited score there."""
    names = ("knn_score", "knn_win", "knn_rank", "nn1_score", "prior")
    others = [j for j in ctx["profiled"] if j != d]
    if not others:
        return {f"n.{n}": np.full(len(models), np.nan) for n in names}
    ud = ctx["u"][d]
    # score of each model on each other profiled dataset, NaN where not measured: [len(others), len(models)]
    S = ctx["S"][np.ix_([ctx["profiled_index"][j] for j in others], [ctx["model_index"][m] for m in models])]
    # E: the evidence, S with lineage filling where a model is unmeasured (the measured models' columns are S's)
    E = S
    inh = ctx.get("inherited") or {}
    if any(inh.values()):
        E = S.copy()
        col = {m: i for i, m in enumerate(models)}
        for r, j in enumerate(others):
            for m, v in inh.get(j, {}).items():
                if m in col and np.isnan(E[r, col[m]]):
                    E[r, col[m]] = v
    sims = np.array([ctx["u"][j] for j in others]) @ ud
    near = np.lexsort((np.array(others), -sims))[:knn]             # by similarity, ties by ref
    w = np.maximum(sims[near], 0.0)[:, None] + 1e-3                 # [k, 1]
    Sn, En = S[near], E[near]                                       # [k, M]
    known = ~np.isnan(Sn)
    best = np.nanmax(np.where(np.isnan(S), -np.inf, S), 1)[near][:, None]
    n_j = known.sum(1, keepdims=True)
    # rank of m on j: how many measured models beat it, over (models on j - 1); 0 = best
    # (a per-row sort, not the [k, M, M] comparison: O(k·M log M) for a candidate list of any size)
    srt = np.sort(np.where(known, Sn, -np.inf), 1)
    better = np.stack([Sn.shape[1] - np.searchsorted(srt[i], En[i], side="right") for i in range(len(Sn))]) \
        if len(Sn) else np.zeros(Sn.shape, dtype=np.int64)
    rank = np.where(~np.isnan(En), better / np.maximum(n_j - 1, 1), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (np.nansum(w * En, 0) / (w * ~np.isnan(En)).sum(0), (w * (En >= best)).sum(0) / w.sum(),
                  np.nanmean(rank, 0) if len(near) else np.full(len(models), np.nan), En[0], np.nanmean(E, 0))
    return {f"n.{n}": np.asarray(v, dtype=np.float64) for n, v in zip(names, values)}


def embedding_columns(emb, d: str, models: list[str], vectors: bool) -> dict[str, np.ndarray]:
    """``e.link = ⟨z_m, z_d⟩``, ``e.cos``; with ``vectors`` also the raw ``z_d`` (``e.d<i>``) and ``z_m``
    (``e.m<i>``). ``emb = (zm, zd)``: ``{model: [dim]}``, ``{dataset: [dim]}``."""
    zm, zd = emb
    e_d = zd[d]
    cols = {"e.link": np.array([float(zm[m] @ e_d) for m in models]),
            "e.cos": np.array([float(_unit(zm[m]) @ _unit(e_d)) for m in models])}
    if vectors:
        cols.update({f"e.d{i}": np.full(len(models), e_d[i]) for i in range(len(e_d))})
        cols.update({f"e.m{i}": np.array([zm[m][i] for m in models]) for i in range(len(e_d))})
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def probe_columns(probe: dict | None, models: list[str]) -> dict[str, np.ndarray]:
    """``z.probe``: the zero-shot loss on the target, min–max normalised (1 = lowest loss; 1 for every
    known model when they cannot be told apart), ``z.probe_rank``: the share of models with a lower loss."""
    p = np.array([probe.get(m, np.nan) if probe else np.nan for m in models], dtype=np.float64)
    ok = ~np.isnan(p)
    if ok.sum() >= 2 and np.ptp(p[ok]) > 0:
        lo, hi = np.nanmin(p), np.nanmax(p)
        z = (hi - p) / (hi - lo)
    else:
        z = np.where(ok, 1.0, np.nan)
    rank = [np.sum(p[ok] < x) / max(ok.sum() - 1, 1) if not np.isnan(x) else np.nan for x in p]
    return {"z.probe": np.asarray(z, dtype=np.float64), "z.probe_rank": np.asarray(rank, dtype=np.float64)}


class Selector:
    """Ranks a graph's models for a dataset: ``Selector(cfg).fit(graph).predict(graph, d) -> {model: score}``."""

    def __init__(self, cfg: SelectorConfig | None = None):
        self.cfg = cfg or SelectorConfig()
        self.embedder = None
        self.models_: list[str] = []
        self.feature_names_: list[str] = []
        self.model_keys_: list[str] = []
        self._lgbm: list = []    # one fitted booster per objective (None: zero rounds)
        self.cv_: dict = {}       # objective → the CV curve behind the chosen number of rounds
        self._probe_w: list = []  # the probe weight in each booster's init score (cfg.probe_init or the CV's)
        self.margin_: float | None = None  # see contenders(); None when no CV ran or with objective="both"
        self.fitted_ = False

    # ------------------------------------------------------------------ features
    def _context(self, graph: MatchingGraph) -> dict:
        """Per-graph quantities shared by all rows: profiled datasets, their scores, the unit-normalised
        standardised vectors ``u``, the family of every dataset that has one and (``lineage``) the scores
        the unmeasured models inherit on each profiled dataset."""
        profiled = graph.profiled
        u = {d: _unit(graph.standardized(graph.vector(d)[None])[0]) for d in graph.datasets}
        fam = {d: graph.family(d) for d in graph.datasets if graph.family(d)}
        scores = {d: graph.scores(d) for d in profiled}
        mi = {m: i for i, m in enumerate(graph.models)}
        S = np.full((len(profiled), len(mi)), np.nan)  # [profiled, models] scores, NaN = not measured
        for i, d in enumerate(profiled):
            S[i, [mi[m] for m in scores[d]]] = list(scores[d].values())
        ctx = {"profiled": profiled, "scores": scores, "u": u, "family": fam, "S": S, "model_index": mi,
               "profiled_index": {d: i for i, d in enumerate(profiled)}}
        if getattr(self.cfg, "lineage", False):  # getattr: a selector pickled before the option reads as off
            ctx["inherited"] = {d: graph.inherited_scores(d) for d in profiled}
        return ctx

    def _rows(self, graph: MatchingGraph, ctx: dict, d: str, models: list[str], emb,
              probe: dict | None) -> tuple[np.ndarray, list[str]]:
        """``(X [len(models), F], names)`` for dataset ``d``: the configured feature groups' columns, in the
        order of ``FEATURE_GROUPS`` (after fitting, the order of ``self.feature_names_``)."""
        cfg = self.cfg
        cols: dict[str, np.ndarray] = {}
        if cfg.model_features:
            cols.update(model_columns(graph, models, self.model_keys_))
        if cfg.data_features:
            cols.update(data_columns(graph, d, len(models)))
        if cfg.pair_features:
            cols.update(pair_columns(graph, ctx, d, models))
        if cfg.neighbor_features and cfg.use_data_edges:
            cols.update(neighbor_columns(ctx, d, models, cfg.knn))
        if emb is not None:
            cols.update(embedding_columns(emb, d, models, cfg.emb_vectors))
        if cfg.probe:
            cols.update(probe_columns(probe, models))
        names = list(cols)
        if self.feature_names_ and names != self.feature_names_:
            raise RuntimeError("feature layout changed between fit and predict")  # a bug, not bad input
        X = np.stack([np.asarray(v, dtype=np.float64) for v in cols.values()], 1) if cols else np.zeros((len(models), 0))
        return X, names

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
            embs = self.embedder.embed_many(graph, [[d] for d in profiled], need=[(list(ctx["scores"][d]), [d]) for d in profiled])
        else:
            embs = [self._embedding(graph)] * len(profiled)
        X, y, yr, groups = [], [], [], []
        for d, emb in zip(profiled, embs):
            sc = ctx["scores"][d]
            models = [m for m in self.models_ if m in sc]
            probe = graph.zero_shot(d) if cfg.probe else None
            rows, names = self._rows(graph, ctx, d, models, emb, probe)
            X.append(rows)
            s = np.array([sc[m] for m in models])
            y.append(s)
            order = (-s).argsort(kind="stable")
            rel = np.zeros(len(models), dtype=int)
            rel[order[:3]] = [3, 2, 1][: min(3, len(models))]
            yr.append(np.minimum(np.floor(4 * s), 4).astype(int) if cfg.label == "score" else rel)
            groups.append(len(models))
        self.feature_names_ = names
        X = np.concatenate(X)
        self._lgbm, self._probe_w, self.cv_, self.margin_ = [], [], {}, None
        weights = PROBE_GRID if cfg.probe and cfg.probe_init is None else (cfg.probe_init or 0.0,)
        for kind in ("rank", "regress"):
            if cfg.objective not in (kind, "both"):
                continue
            label = yr if kind == "rank" else y
            n, w, cv = cfg.n_estimators, weights[0], None
            if cfg.n_estimators is None or len(weights) > 1:  # cross-validate (rounds, probe weight)
                cands = [(*self._cv_trees(kind, X, label, y, groups, self._init_score(X, v), profiled,
                                          fixed=cfg.n_estimators), v) for v in weights]
                n, cv, w = min(cands, key=lambda c: _cv_key(c[1], c[0]) + (c[2],))  # ties: as in _cv_trees, then a smaller weight
                self.cv_[kind] = {**cv, "probe_init": w} if cfg.probe else cv
                if cfg.objective != "both":
                    self.margin_ = cv["margin"][cv["grid"].index(n)]
            self._probe_w.append(w)
            self._lgbm.append(self._booster(kind, X, label, groups, self._init_score(X, w), n) if n > 0 else None)
        self.fitted_ = True
        return self

    def _booster(self, kind: str, X: np.ndarray, label: list, groups: list[int], init, n: int):
        """A fitted ``LGBMRanker`` (``kind="rank"``, one group per dataset) or ``LGBMRegressor`` with
        ``n`` boosting rounds on rows ``X [N, F]`` with per-dataset labels ``label``."""
        import lightgbm as lgb

        cfg = self.cfg
        common = dict(n_estimators=n, learning_rate=cfg.learning_rate, num_leaves=cfg.num_leaves,
                      min_child_samples=cfg.min_child_samples, subsample=cfg.subsample, subsample_freq=1,
                      colsample_bytree=cfg.colsample(), reg_lambda=cfg.reg_lambda, random_state=cfg.seed,
                      n_jobs=1, verbose=-1)
        if kind == "rank":
            return lgb.LGBMRanker(objective="lambdarank", **common).fit(X, np.concatenate(label), group=groups, init_score=init)
        return lgb.LGBMRegressor(objective="regression", **common).fit(X, np.concatenate(label), init_score=init)

    def _cv_trees(self, kind, X, label, scores, groups, init, profiled, fixed: int | None = None) -> tuple[int, dict]:
        """The number of boosting rounds from ``TREE_GRID`` (just ``fixed`` when given: the curve then
        only scores a probe weight) with the lowest mean regret in grouped
        K-fold cross-validation over the training datasets (``cv_folds``; the crossfit folds when
        their number matches, so a validation row's GNN embedding never saw its own edges).

        For every fold, one booster of the grid's largest number of rounds is fitted on the other folds and its
        staged predictions (``init + Σ_{t ≤ T} tree_t``) pick a model on each validation dataset ``d``:
        ``regret_T(d) = max_m s(m, d) - s(argmax_m pred_T(m, d), d)`` with ``s`` the normalised score.
        ``T = 0`` (the prior alone) competes only when there is a prior (``knn_init``/``probe_init``).
        Ties go to the better mean NDCG of the validation rankings (gains ``s``), then to fewer rounds.
        Returns ``(T, {"grid": [...], "regret": [...], "ndcg": [...], "margin": [...]})``: the means per
        grid entry, and the conformal margin per grid entry (see :meth:`contenders`): the
        ``⌈(n+1)·MARGIN_COVERAGE⌉``-th smallest of the ``n`` validation datasets' gaps
        ``pred_T(top pick) − pred_T(measured winner) ≥ 0``."""
        grid = [t for t in TREE_GRID if t > 0 or init is not None] if fixed is None else [fixed]
        starts = np.cumsum([0] + groups)
        where = {d: i for i, d in enumerate(profiled)}
        folds = _dataset_folds(profiled, min(self.cfg.cv_folds, len(profiled)), self.cfg.seed)
        regret = np.zeros((len(grid), len(profiled)))  # [T, dataset]
        ndcg = np.zeros((len(grid), len(profiled)))
        gap = np.zeros((len(grid), len(profiled)))

        def rows(gs):
            return np.concatenate([np.arange(starts[g], starts[g + 1]) for g in gs])

        for fold in folds:
            val = [where[d] for d in fold]
            trn = [i for i in range(len(profiled)) if i not in set(val)]
            rt, rv = rows(trn), rows(val)
            b = self._booster(kind, X[rt], [label[g] for g in trn], [groups[g] for g in trn],
                              None if init is None else init[rt], max(grid)) if max(grid) > 0 else None
            base = np.zeros(len(rv)) if init is None else init[rv]
            for k, t in enumerate(grid):
                pred = base + (b.predict(X[rv], num_iteration=t) if t > 0 else 0.0)
                off = 0
                for g in val:
                    p, sc = pred[off:off + groups[g]], scores[g]
                    regret[k, g] = sc.max() - sc[int(np.argmax(p))]
                    ndcg[k, g] = _ndcg(p, sc)
                    gap[k, g] = p.max() - p[sc >= sc.max()].max()  # how far below the top pick a winner sits
                    off += groups[g]
        mean, rank_q = regret.mean(1), ndcg.mean(1)
        # regret looks at the top pick only, so equal regrets are common: the whole ranking (NDCG)
        # breaks those ties, then fewer rounds
        cv = {"grid": grid, "regret": [round(float(r), 5) for r in mean], "ndcg": [round(float(r), 5) for r in rank_q],
              "margin": [round(_conformal_quantile(g, MARGIN_COVERAGE), 6) for g in gap]}
        return min(grid, key=lambda t: _cv_key(cv, t)), cv

    def _init_score(self, X: np.ndarray, probe_w: float = 0.0):
        """``knn_init · n.knn_score + probe_w · z.probe`` per row (None when both are off): the trees
        then learn corrections to the graph's neighbour prior (and the probe) instead of a ranking
        from scratch."""
        init = np.zeros(len(X))
        for name, w in (("n.knn_score", self.cfg.knn_init), ("z.probe", probe_w)):
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
        folds = _dataset_folds(profiled, cfg.crossfit, cfg.seed)
        out = {}
        for k, fold in enumerate(folds):
            gk = graph.without_performance(fold)
            ek = SageEmbedder(SageConfig(**{**cfg.sage, "use_data_edges": cfg.use_data_edges})).fit(gk, seed=cfg.seed + 1 + k)
            need = [(list(graph.scores(d)), [d]) for d in fold]  # a row needs its own dataset and measured models
            for d, e in zip(fold, ek.embed_many(gk, [[d] for d in fold], need=need)):
                out[d] = e
        cache[key] = [out[d] for d in profiled]
        return cache[key]

    def features(self, graph: MatchingGraph, dataset_ref: str, probe: dict | None = None):
        """``(models, names, X [M, F])``: the rows ``predict`` scores for ``dataset_ref``."""
        if not self.fitted_:
            raise RuntimeError("Selector.predict before fit")
        if self.cfg.probe and not probe:
            raise ValueError("this selector uses the zero-shot probe: pass probe={model ref: zero-shot loss}")
        models = [m for m in self.models_ if m in set(graph.models)]
        emb = self._embedding(graph, hide=[dataset_ref]) if self.cfg.embedding != "none" else None
        X, _ = self._rows(graph, self._context(graph), dataset_ref, models, emb, probe)
        return models, self.feature_names_, X

    def predict(self, graph: MatchingGraph, dataset_ref: str, probe: dict | None = None) -> dict[str, float]:
        """Model ref → predicted score for ``dataset_ref`` (higher = better). ``probe``: model ref →
        zero-shot loss on the target (required when the config uses the probe)."""
        models, _, X = self.features(graph, dataset_ref, probe)
        preds = []
        for r, w in zip(self._lgbm, self._probe_w):
            init = self._init_score(X, w)
            preds.append((np.zeros(len(X)) if init is None else init)
                         + (0.0 if r is None else np.asarray(r.predict(X), dtype=np.float64)))
        if len(preds) == 1:
            out = preds[0]
        else:  # average of per-dataset ranks (0 = worst) of ranker and regressor
            out = np.mean([p.argsort(kind="stable").argsort(kind="stable") for p in preds], 0)
        return dict(zip(models, out.tolist()))

    def contenders(self, pred: dict[str, float]) -> list[str] | None:
        """The models that may be the best, best first: those predicted within ``margin_`` of the top pick.

        ``margin_`` is calibrated by the fit's cross-validation (split-conformal over its validation
        datasets): on a new dataset exchangeable with the training ones, the measured winner is among the
        contenders with probability about ``MARGIN_COVERAGE``. Equivalently, each model's score carries
        the interval ``score ± margin_/2``, and the contenders are those whose interval overlaps the top
        pick's. None when the fit has no margin (fixed rounds without CV, or ``objective="both"``)."""
        if self.margin_ is None or not pred:
            return None
        top = max(pred.values())
        return [m for m in rank_of(pred) if pred[m] >= top - self.margin_]

    def explain(self, graph: MatchingGraph, dataset_ref: str, n: int = 5) -> dict:
        """Why: the ``n`` nearest profiled datasets ``[(ref, cosine)]`` and the best model on each."""
        near = graph.nearest(dataset_ref, n=n)
        return {"nearest": near, "winners": {ref: graph.winner(ref) for ref, _ in near}}

    def fitted_summary(self) -> dict[str, dict]:
        """What the fit chose, per objective: ``{"rank": {"rounds": T, "probe_init": w}}`` (``probe_init``
        only with the probe; ``cv_folds`` when the CV chose them)."""
        out = {}
        kinds = [k for k in ("rank", "regress") if self.cfg.objective in (k, "both")]
        for kind, r, w in zip(kinds, self._lgbm, self._probe_w):
            out[kind] = {"rounds": 0 if r is None else int(r.n_estimators)}
            if self.cfg.probe:
                out[kind]["probe_init"] = float(w)
            if kind in self.cv_:
                out[kind]["cv_folds"] = self.cfg.cv_folds
            if self.margin_ is not None:
                out[kind]["margin"] = float(self.margin_)
                out[kind]["margin_coverage"] = MARGIN_COVERAGE
        return out

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature, summed over the fitted LightGBM models, largest first."""
        imp = np.zeros(len(self.feature_names_))
        for r in self._lgbm:
            if r is not None:  # None: zero rounds, the prior alone
                imp += r.booster_.feature_importance(importance_type="gain")
        return dict(sorted(zip(self.feature_names_, imp.tolist()), key=lambda kv: -kv[1]))


def _cv_key(cv: dict, rounds: int) -> tuple:
    """Sort key of a CV result at ``rounds``: lower mean regret, then higher mean NDCG, then fewer rounds."""
    k = cv["grid"].index(rounds)
    return cv["regret"][k], -cv["ndcg"][k], rounds


def _conformal_quantile(values: np.ndarray, coverage: float) -> float:
    """The ``⌈(n+1)·coverage⌉``-th smallest of ``n`` values (the largest when that exceeds ``n``): the
    split-conformal threshold that a new exchangeable value stays under with probability ≥ ``coverage``."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = min(len(v), int(np.ceil((len(v) + 1) * coverage)))
    return float(v[k - 1]) if len(v) else 0.0


def _ndcg(pred: np.ndarray, gain: np.ndarray) -> float:
    """NDCG of the ranking ``pred`` (higher first) with gains ``gain`` (the normalised scores)."""
    disc = 1.0 / np.log2(np.arange(2, len(gain) + 2))
    ideal = float(np.sort(gain)[::-1] @ disc)
    return float(gain[np.argsort(-pred, kind="stable")] @ disc) / ideal if ideal > 0 else 1.0


def _dataset_folds(datasets: list[str], k: int, seed: int) -> list[list[str]]:
    """``datasets`` split into ``k`` folds by a seeded permutation (the same split for the same seed,
    so the CV of the tree count reuses the crossfit folds)."""
    rng = np.random.default_rng(seed)
    order = [datasets[i] for i in rng.permutation(len(datasets))]
    return [order[i::k] for i in range(k)]


def make_embedder(cfg: SelectorConfig, graph: MatchingGraph):
    """The embedder ``cfg`` asks for (from :data:`mandc.embed.EMBEDDERS`, its config overridden by the
    ``cfg`` field of the same name), fitted on ``graph`` with ``cfg.seed``; None for ``"none"``."""
    if cfg.embedding == "none":
        return None
    from mandc.embed import EMBEDDERS

    cls = EMBEDDERS[cfg.embedding]
    overrides = {**getattr(cfg, cfg.embedding), "use_data_edges": cfg.use_data_edges}
    return cls(cls.Config(**overrides)).fit(graph, seed=cfg.seed)


def embedder_key(cfg: SelectorConfig) -> tuple:
    """Selectors with equal keys can share one fitted embedder."""
    sub = getattr(cfg, cfg.embedding) if cfg.embedding != "none" else {}
    return (cfg.embedding, cfg.use_data_edges, cfg.seed, cfg.crossfit if cfg.embedding == "sage" else 0,
            tuple(sorted(sub.items())))


def rank_of(pred: dict[str, float]) -> list[str]:
    """Model refs sorted best first (ties broken by name, deterministic)."""
    return sorted(pred, key=lambda m: (-pred[m], m))

