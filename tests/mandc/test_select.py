"""Selector and embeddings: fit/predict, inductive new datasets, the leakage guard, bad input."""
import numpy as np
import pytest

from mandc.embed import SageConfig, SageEmbedder
from mandc.graph import MatchingGraph
from mandc.select import PROBE_GRID, TREE_GRID, Selector, SelectorConfig
from synthetic_reference import make_reference

FAST = dict(sage={"epochs": 25}, node2vec={"walks_per_node": 3, "epochs": 2}, n_estimators=40)


@pytest.fixture(scope="module")
def ref():
    return make_reference(n_families=3, per_family=4, n_profiled=3, n_models=5, seed=1)


@pytest.fixture(scope="module")
def graph(ref):
    return MatchingGraph.from_reference(*ref, k=3)


def _perturbed(ref, dataset, seed=0):
    """The reference with ``dataset``'s held-out losses shuffled across models and rescaled."""
    records, models, datasets = ref
    rng = np.random.default_rng(seed)
    mine = [r for r in records if r["job"]["dataset"] == dataset]
    losses = rng.permutation([r["metrics"]["heldout_loss"] for r in mine]) * 3.0
    new = [dict(r) for r in records]
    it = iter(losses)
    for r in new:
        if r["job"]["dataset"] == dataset:
            r["metrics"] = {**r["metrics"], "heldout_loss": float(next(it))}
    return new, models, datasets


@pytest.mark.parametrize("embedding", ["sage", "node2vec", "none"])
def test_fit_predict_and_explain(graph, embedding):
    d = graph.profiled[4]
    h = graph.without_performance(d)
    sel = Selector(SelectorConfig(embedding=embedding, **FAST)).fit(h)
    pred = sel.predict(h, d)
    assert set(pred) == set(graph.models) and all(np.isfinite(list(pred.values())))
    names = sel.feature_names_
    assert ("e.link" in names) == (embedding != "none") and "n.knn_score" in names and "p.mix_cos" in names
    ex = sel.explain(h, d)
    assert len(ex["nearest"]) == 5 and all(r in h.profiled for r, _ in ex["nearest"])
    assert set(ex["winners"]) == {r for r, _ in ex["nearest"]}


def test_selector_beats_random_on_synthetic(graph):
    """The synthetic matrix is learnable from the features: mean regret well under a random pick's."""
    regrets, random_regrets = [], []
    for d in graph.profiled[::2]:
        h = graph.without_performance(d)
        pred = Selector(SelectorConfig(**FAST)).fit(h).predict(h, d)
        sc = graph.scores(d)
        regrets.append(1 - sc[max(pred, key=pred.get)])
        random_regrets.append(1 - np.mean(list(sc.values())))
    assert np.mean(regrets) < 0.6 * np.mean(random_regrets)


@pytest.mark.parametrize("embedding", ["sage", "node2vec"])
def test_leakage_guard(ref, embedding):
    """A held-out dataset's performance edges never reach its own prediction: shuffling its measured
    losses leaves the LODO prediction bit-identical — while a selector fitted on the full graph does
    see them (so the check has the power to fail)."""
    d = ref[2][4]["ref"]
    g1 = MatchingGraph.from_reference(*ref, k=3)
    g2 = MatchingGraph.from_reference(*_perturbed(ref, d), k=3)
    assert g1.scores(d) != g2.scores(d)
    cfg = SelectorConfig(embedding=embedding, probe=True, **FAST)
    probe = g1.zero_shot(d)  # the probe is not a performance edge: the same for both
    p1 = Selector(cfg).fit(g1.without_performance(d)).predict(g1.without_performance(d), d, probe=probe)
    p2 = Selector(cfg).fit(g2.without_performance(d)).predict(g2.without_performance(d), d, probe=probe)
    assert p1 == p2
    # predict() itself hides the target's edges from GraphSAGE: a graph that still holds them gives
    # the same answer as the LODO graph
    if embedding == "sage":
        sel = Selector(cfg).fit(g1.without_performance(d))
        assert sel.predict(g1, d, probe=probe) == sel.predict(g2, d, probe=probe)
    leaky1 = Selector(cfg).fit(g1).predict(g1, d, probe=probe)
    leaky2 = Selector(cfg).fit(g2).predict(g2, d, probe=probe)
    assert leaky1 != leaky2


def test_bad_input(graph):
    with pytest.raises(ValueError, match="embedding must be"):
        SelectorConfig(embedding="gat")
    with pytest.raises(ValueError, match="objective must be"):
        SelectorConfig(objective="classify")
    d = graph.profiled[0]
    h = graph.without_performance(d)
    sel = Selector(SelectorConfig(embedding="none", probe=True, n_estimators=20)).fit(h)
    with pytest.raises(ValueError, match="zero-shot probe"):
        sel.predict(h, d)
    with pytest.raises(RuntimeError, match="before fit"):
        Selector().predict(h, d)
    tiny = MatchingGraph.from_reference([], [{"ref": "zoo:a", "features": {"x": 1.0}}],
                                        [{"ref": "builtin:a", "vector": [1.0, 2.0]}, {"ref": "builtin:b", "vector": [2.0, 1.0]}], k=1)
    with pytest.raises(ValueError, match="at least 2 profiled"):
        Selector().fit(tiny)


def test_regressor_and_both_objectives(graph):
    d = graph.profiled[1]
    h = graph.without_performance(d)
    for obj in ("regress", "both"):
        pred = Selector(SelectorConfig(embedding="none", objective=obj, n_estimators=30)).fit(h).predict(h, d)
        assert set(pred) == set(graph.models)


@pytest.mark.parametrize("embedding", ["sage", "node2vec"])
def test_deterministic_across_a_json_round_trip(graph, embedding):
    """Same seed, same graph content (rebuilt from JSON, so networkx's neighbour order may differ):
    the same prediction, bit for bit (parallel evaluation ships graphs to workers as JSON)."""
    d = graph.profiled[3]
    h = graph.without_performance(d)
    h2 = MatchingGraph.from_json(h.to_json())
    cfg = SelectorConfig(embedding=embedding, **FAST)
    assert Selector(cfg).fit(h).predict(h, d) == Selector(cfg).fit(h2).predict(h2, d)


def test_crossfit_rows_never_see_their_own_labels(ref):
    """With crossfit, a training dataset's embedding comes from a GNN that never saw its perf edges:
    shuffling that dataset's losses leaves it unchanged (without crossfit it changes: the GNN was
    trained on them)."""
    d = ref[2][5]["ref"]
    g1 = MatchingGraph.from_reference(*ref, k=3)
    g2 = MatchingGraph.from_reference(*_perturbed(ref, d), k=3)
    cfg = SelectorConfig(crossfit=3, sage={"epochs": 10})
    rows = []
    for g in (g1, g2):
        sel = Selector(cfg)
        sel.embedder = SageEmbedder(SageConfig(epochs=10)).fit(g, seed=0)
        oof = dict(zip(g.profiled, sel._crossfit_embeddings(g, g.profiled)))
        rows.append((oof[d], sel.embedder.embed(g, hide=[d])))
    (oof1, in1), (oof2, in2) = rows
    assert all(np.array_equal(oof1[1][x], oof2[1][x]) for x in (d,)) and all(
        np.array_equal(oof1[0][m], oof2[0][m]) for m in oof1[0])
    assert not np.allclose(in1[1][d], in2[1][d])
    with pytest.raises(ValueError, match="crossfit needs emb_vectors=False"):
        SelectorConfig(crossfit=2, emb_vectors=True)


def test_knn_init_boosts_from_the_neighbour_prior(graph):
    """With a vanishing learning rate the trees add nothing, so the ranking is the neighbour prior's;
    with knn_init=0 the same trees give (near-)constant scores."""
    d = graph.profiled[0]
    h = graph.without_performance(d)
    cfg = SelectorConfig(embedding="none", learning_rate=1e-9, n_estimators=5, knn_init=3.0)
    sel = Selector(cfg).fit(h)
    models, names, X = sel.features(h, d)
    knn = X[:, names.index("n.knn_score")]
    pred = sel.predict(h, d)
    assert np.allclose([pred[m] for m in models], 3.0 * knn, atol=1e-6)
    flat = Selector(SelectorConfig(embedding="none", learning_rate=1e-9, n_estimators=5, knn_init=0.0)).fit(h).predict(h, d)
    assert np.ptp(list(flat.values())) < 1e-6 < np.ptp(knn)


def _cv_problem(signal_in_feature: bool, n_groups=12, n_models=5, seed=0):
    """Rows of ``n_groups`` datasets × ``n_models`` models: a normalised score per row, one feature
    column and an init score. Either the feature holds the score (the trees can learn it, the prior
    is noise) or the prior holds it (the feature is noise)."""
    rng = np.random.default_rng(seed)
    groups = [n_models] * n_groups
    scores = [rng.permutation(np.linspace(0.0, 1.0, n_models)) for _ in range(n_groups)]
    s = np.concatenate(scores)
    noise = rng.normal(size=len(s))
    X = np.stack([s if signal_in_feature else noise, rng.normal(size=len(s))], 1)
    init = noise if signal_in_feature else 3.0 * s
    label = [np.minimum(np.floor(4 * x), 4).astype(int) for x in scores]
    return X, label, scores, groups, init, [f"builtin:d{i}" for i in range(n_groups)]


def test_tree_count_is_chosen_by_grouped_cv():
    """``n_estimators=None``: validation datasets pick their model with the staged predictions.
    When only the features carry the score the CV needs trees (they cut the prior's regret ten-fold); when the
    prior already ranks perfectly and the features are noise it keeps zero rounds."""
    sel = Selector(SelectorConfig(embedding="none", colsample_bytree=1.0, min_child_samples=2))
    sel.feature_names_ = ["f", "g"]
    X, label, scores, groups, init, names = _cv_problem(signal_in_feature=True)
    n, cv = sel._cv_trees("rank", X, label, scores, groups, init, names)
    assert cv["grid"] == list(TREE_GRID) and n > 0
    assert cv["regret"][cv["grid"].index(n)] == min(cv["regret"]) < 0.1 * cv["regret"][0]
    X, label, scores, groups, init, names = _cv_problem(signal_in_feature=False)
    n, cv = sel._cv_trees("rank", X, label, scores, groups, init, names)
    assert n == 0 and cv["regret"][0] == 0.0
    # without a prior, zero rounds (a constant ranking) is not a candidate
    n, cv = sel._cv_trees("rank", X, label, scores, groups, None, names)
    assert 0 not in cv["grid"] and n > 0


def test_zero_rounds_is_the_prior_alone_and_cv_is_recorded(graph):
    d = graph.profiled[0]
    h = graph.without_performance(d)
    prior = Selector(SelectorConfig(embedding="none", n_estimators=0)).fit(h)
    models, names, X = prior.features(h, d)
    pred = prior.predict(h, d)
    assert np.allclose([pred[m] for m in models], 3.0 * X[:, names.index("n.knn_score")])
    assert prior.cv_ == {} and not any(prior.feature_importance().values())
    sel = Selector(SelectorConfig(embedding="none", objective="both")).fit(h)
    assert set(sel.cv_) == {"rank", "regress"}
    for booster, kind in zip(sel._lgbm, ("rank", "regress")):
        cv = sel.cv_[kind]
        n = 0 if booster is None else booster.n_estimators
        best = [t for t, r in zip(cv["grid"], cv["regret"]) if r == min(cv["regret"])]  # lowest regret...
        assert n in best and cv["ndcg"][cv["grid"].index(n)] == max(cv["ndcg"][cv["grid"].index(t)] for t in best)  # ...best NDCG
    with pytest.raises(ValueError, match="n_estimators must be"):
        SelectorConfig(n_estimators=-1)
    with pytest.raises(ValueError, match="cv_folds must be"):
        SelectorConfig(cv_folds=1)


def test_probe_weight_is_chosen_by_cv(ref):
    """``probe_init=None``: the probe's weight in the init score is cross-validated with the rounds.
    A probe that is the fine-tuned loss itself earns a positive weight and ranks a held-out dataset
    perfectly; the weight is recorded with the CV curve."""
    records, models, datasets = ref
    exact = [{**r, "metrics": {**r["metrics"], "zero_shot_loss": r["metrics"]["heldout_loss"]}} for r in records]
    g = MatchingGraph.from_reference(exact, models, datasets, k=3)
    d = g.profiled[2]
    h = g.without_performance(d)
    sel = Selector(SelectorConfig(embedding="none", probe=True, knn_init=0.0)).fit(h)
    assert sel.cv_["rank"]["probe_init"] in PROBE_GRID and sel.cv_["rank"]["probe_init"] > 0
    probe = {m: float(np.mean(v)) for m, v in g.raw(d).items()}
    pred = sel.predict(h, d, probe=probe)
    assert max(pred, key=pred.get) == min(probe, key=probe.get)


def test_config_options_carry_help_and_embedders_come_from_the_registry(graph):
    from mandc.embed import EMBEDDERS
    from mandc.select import EMBEDDINGS, make_embedder

    opts = SelectorConfig.help()
    assert set(opts) == set(SelectorConfig().to_dict()) and all(h for _, h in opts.values())
    assert opts["knn"][0] == 5 and opts["sage"][0] == {}
    assert SelectorConfig().sage is not SelectorConfig().sage  # a mutable default is never shared
    assert set(EMBEDDINGS) == {*EMBEDDERS, "none"}
    with pytest.raises(ValueError, match="'sage', 'node2vec', 'none'"):
        SelectorConfig(embedding="gcn")
    emb = make_embedder(SelectorConfig(embedding="node2vec", node2vec={"walks_per_node": 2, "epochs": 1}), graph)
    assert type(emb) is EMBEDDERS["node2vec"] and emb.cfg.walks_per_node == 2
    assert make_embedder(SelectorConfig(embedding="none"), graph) is None


def test_feature_groups_are_separate_functions_in_the_fitted_order(graph):
    from mandc import select as S

    d = graph.profiled[0]
    h = graph.without_performance(d)
    sel = Selector(SelectorConfig(embedding="none", **{k: v for k, v in FAST.items() if k == "n_estimators"})).fit(h)
    models, names, X = sel.features(h, d)
    ctx = sel._context(h)
    groups = [S.model_columns(h, models, sel.model_keys_), S.data_columns(h, d, len(models)),
              S.pair_columns(h, ctx, d, models), S.neighbor_columns(ctx, d, models, sel.cfg.knn)]
    assert names == [n for g in groups for n in g]
    assert np.array_equal(X, np.stack([v for g in groups for v in g.values()], 1), equal_nan=True)
    probe = S.probe_columns({models[0]: 1.0, models[1]: 2.0}, models)
    assert probe["z.probe"][0] == 1.0 and probe["z.probe"][1] == 0.0 and np.isnan(probe["z.probe"][2])


def test_the_cv_calibrates_a_margin_and_contenders_are_the_models_within_it(graph):
    """The margin is the conformal quantile of the CV's out-of-fold gaps pred(top pick) − pred(winner) at the
    chosen rounds; the contenders of a prediction are the models within it of the top, best first."""
    from mandc.select import MARGIN_COVERAGE, _conformal_quantile

    assert _conformal_quantile(np.arange(10.0), 0.9) == 9.0   # ⌈11·0.9⌉ = 10th smallest of 10
    assert _conformal_quantile(np.arange(20.0), 0.5) == 10.0  # ⌈21·0.5⌉ = 11th smallest
    d = graph.profiled[2]
    h = graph.without_performance(d)
    sel = Selector(SelectorConfig(embedding="none")).fit(h)
    cv = sel.cv_["rank"]
    n = 0 if sel._lgbm[0] is None else sel._lgbm[0].n_estimators
    assert len(cv["margin"]) == len(cv["grid"]) and all(m >= 0 for m in cv["margin"])
    assert sel.margin_ == cv["margin"][cv["grid"].index(n)]
    fitted = sel.fitted_summary()["rank"]
    assert fitted["margin"] == sel.margin_ and fitted["margin_coverage"] == MARGIN_COVERAGE
    pred = sel.predict(h, d)
    top = max(pred.values())
    cont = sel.contenders(pred)
    assert cont[0] == max(pred, key=pred.get)
    assert set(cont) == {m for m, p in pred.items() if p >= top - sel.margin_}
    sel.margin_ = 0.0
    assert sel.contenders(pred) == [m for m in pred if pred[m] == top]
    fixed = Selector(SelectorConfig(embedding="none", n_estimators=10)).fit(h)  # no CV: no calibrated margin
    assert fixed.margin_ is None and fixed.contenders(pred) is None and "margin" not in fixed.fitted_summary()["rank"]
    both = Selector(SelectorConfig(embedding="none", objective="both")).fit(h)  # rank averages: no margin
    assert both.margin_ is None


def _with_unmeasured_child(ref):
    """``ref`` plus ``zoo:child``: no perf edge anywhere, a lineage edge to model 0 (card ``base_model``) and
    model 0's features with its capacity and card embedding moved (a fine-tune is not a copy)."""
    records, models, datasets = ref
    parent = models[0]
    feats = dict(parent["features"])
    feats["log10_params"] += 0.3
    feats.update({k: v + 0.2 for k, v in feats.items() if k.startswith("card_emb_")})
    child = {"ref": "zoo:child", "features": feats, "info": {**parent["info"], "base_model": parent["ref"]}}
    return MatchingGraph.from_reference(records, models + [child], datasets, k=3), parent["ref"]


def test_an_unmeasured_child_inherits_its_parents_evidence_and_nothing_else_moves(ref):
    g, parent = _with_unmeasured_child(ref)
    cfg = dict(sage={"epochs": 25}, n_estimators=40, crossfit=0)
    on, off = (Selector(SelectorConfig(lineage=flag, **cfg)).fit(g) for flag in (True, False))
    gaps_on, gaps_off = [], []
    for d in g.profiled:
        p_on, p_off = on.predict(g, d), off.predict(g, d)
        # every model with its own measurements is predicted exactly as without lineage
        assert {m: v for m, v in p_on.items() if m != "zoo:child"} == {m: v for m, v in p_off.items() if m != "zoo:child"}
        rank = {m: i for i, m in enumerate(sorted(p_on, key=lambda m: -p_on[m]))}
        assert abs(rank["zoo:child"] - rank[parent]) <= 1          # placed next to its parent
        gaps_on.append(abs(p_on["zoo:child"] - p_on[parent]))
        gaps_off.append(abs(p_off["zoo:child"] - p_off[parent]))
        _, names, X = on.features(g, d)
        row = dict(zip(names, X[on.models_.index("zoo:child")]))
        prow = dict(zip(names, X[on.models_.index(parent)]))
        assert all(row[k] == prow[k] for k in names if k.startswith("n."))  # the parent's neighbour record
        _, _, Xoff = off.features(g, d)
        assert np.isnan(Xoff[off.models_.index("zoo:child"), names.index("n.knn_score")])
    assert np.mean(gaps_on) < 0.5 * np.mean(gaps_off)
