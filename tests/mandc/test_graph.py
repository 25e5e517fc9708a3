"""MatchingGraph: construction, normalisation, leave-one-out copies, new targets, records, JSON."""
import json

import numpy as np
import pytest

from mandc.graph import MatchingGraph
from synthetic_reference import make_reference


@pytest.fixture(scope="module")
def ref():
    return make_reference(n_families=3, per_family=4, n_profiled=3, n_models=5)


@pytest.fixture()
def graph(ref):
    return MatchingGraph.from_reference(*ref, k=3)


def test_nodes_edges_and_normalisation(graph, ref):
    records, models, datasets = ref
    assert graph.models == [m["ref"] for m in models]
    assert graph.datasets == [d["ref"] for d in datasets]
    assert len(graph.profiled) == 9 and len(graph.datasets) == 12
    assert len(graph.edges("perf")) == 9 * 5
    d = graph.profiled[0]
    raw, sc = graph.raw(d), graph.scores(d)
    # raw = mean held-out loss over the two seeds
    mine = [r["metrics"]["heldout_loss"] for r in records if r["job"]["dataset"] == d and r["job"]["model"] == models[0]["ref"]]
    assert len(mine) == 2 and raw[models[0]["ref"]] == pytest.approx(np.mean(mine))
    # min–max normalised, best (lowest loss) = 1, worst = 0
    best, worst = min(raw, key=raw.get), max(raw, key=raw.get)
    assert sc[best] == 1.0 and sc[worst] == 0.0
    for m in raw:
        assert sc[m] == pytest.approx((raw[worst] - raw[m]) / (raw[worst] - raw[best]))
    # every dataset has ≥ k sim edges; weights are cosines
    for ds in graph.datasets:
        sims = [n for n in graph.G.neighbors(f"d:{ds}") if graph.G.edges[f"d:{ds}", n]["kind"] == "sim"]
        assert len(sims) >= 3
    assert all(-1.0 - 1e-9 <= a["weight"] <= 1.0 + 1e-9 for _, _, a in graph.edges("sim"))
    # unprofiled datasets have no perf edges
    unprofiled = set(graph.datasets) - set(graph.profiled)
    assert unprofiled and all(graph.scores(u) == {} for u in unprofiled)


def test_without_performance_removes_only_that_dataset(graph):
    d = graph.profiled[2]
    h = graph.without_performance(d)
    assert d not in h.profiled and h.scores(d) == {}
    assert len(h.edges("perf")) == len(graph.edges("perf")) - len(graph.models)
    for other in graph.profiled:
        if other != d:
            assert h.scores(other) == graph.scores(other)  # per-dataset normalisation unaffected
    assert len(h.edges("sim")) == len(graph.edges("sim"))   # it keeps its similarity edges
    assert d in graph.profiled                               # the original is untouched
    with pytest.raises(KeyError, match="not in the graph"):
        graph.without_performance("builtin:nope")


def test_add_dataset_gets_similarity_edges_only(graph, ref):
    before = {(u, v): a["weight"] for u, v, a in graph.edges("sim")}
    vec = np.asarray(ref[2][0]["vector"]) + 0.01
    graph.add_dataset("/data/new", vec)
    node = "d:/data/new"
    kinds = [graph.G.edges[node, n]["kind"] for n in graph.G.neighbors(node)]
    assert kinds == ["sim"] * graph.k
    assert graph.nearest("/data/new", n=1)[0][0] == ref[2][0]["ref"]  # its near-copy is the nearest
    after = {(u, v): a["weight"] for u, v, a in graph.edges("sim") if node not in (u, v)}
    assert after == before  # no existing edge moved
    assert "/data/new" not in graph.profiled
    with pytest.raises(ValueError, match="expected 17"):
        graph.add_dataset("/data/bad", [1.0, 2.0])
    with pytest.raises(ValueError, match="non-finite"):
        graph.add_dataset("/data/bad", np.full(17, np.nan))


def test_add_records_idempotent_skips_failed_and_names_unknowns(graph, ref):
    records = ref[0]
    n = len(graph.edges("perf"))
    graph.add_records(records)  # the same job ids again: nothing changes
    assert len(graph.edges("perf")) == n
    d = graph.profiled[0]
    assert all(len(r) == 2 for r in graph.runs(d).values())
    graph.add_records([{**records[0], "job_id": "failed1", "status": "failed", "metrics": {}}])
    assert len(graph.runs(d)[records[0]["job"]["model"]]) == 2
    bad = {**records[0], "job_id": "x", "job": {**records[0]["job"], "model": "zoo:missing"}}
    with pytest.raises(ValueError, match="zoo:missing"):
        graph.add_records([bad])
    # a new measurement on an unprofiled dataset makes it profiled and re-normalises it
    u = next(x for x in graph.datasets if x not in graph.profiled)
    new = [{**records[0], "job_id": f"u{i}", "job": {**records[0]["job"], "dataset": u, "model": m},
            "metrics": {"heldout_loss": 0.1 + 0.01 * i, "zero_shot_loss": 0.2}} for i, m in enumerate(graph.models[:3])]
    graph.add_records(new)
    assert u in graph.profiled
    assert graph.scores(u) == pytest.approx({graph.models[0]: 1.0, graph.models[1]: 0.5, graph.models[2]: 0.0})


def test_json_round_trip_is_exact(graph):
    graph.add_dataset("/data/new", graph.vector(graph.datasets[0]) * 0.9)
    d = json.loads(json.dumps(graph.to_json()))
    g2 = MatchingGraph.from_json(d)
    assert g2.to_json() == graph.to_json()
    assert g2.scores(graph.profiled[0]) == graph.scores(graph.profiled[0])
    assert g2.nearest("/data/new") == graph.nearest("/data/new")
    with pytest.raises(ValueError, match="not a MatchingGraph"):
        MatchingGraph.from_json({"nodes": []})


def test_bad_reference_input(ref):
    records, models, datasets = ref
    with pytest.raises(ValueError, match="vector has 3 values"):
        MatchingGraph.from_reference(records, models, datasets[:1] + [{**datasets[1], "vector": [1, 2, 3]}])
    with pytest.raises(ValueError, match="appears twice"):
        MatchingGraph.from_reference([], models, datasets[:2] + datasets[:1])
    with pytest.raises(ValueError, match="is not in the graph"):
        MatchingGraph.from_reference(records, models[:2], datasets)


def test_winner_breaks_an_exact_tie_by_the_first_ref_and_its_users_agree(ref):
    """Two models with identical losses on a dataset: ``winner`` is the best score, and among the tied
    models the ref that sorts first; the planner's evidence, the selector's explanation and the
    most-frequent-winner baseline all name that same model."""
    from mandc.evaluate import MostFrequentWinner, matrix_stats

    records, models, datasets = ref
    graph = MatchingGraph.from_reference(records, models, datasets, k=3)
    d = graph.profiled[0]
    best = graph.winner(d)
    raw = graph.raw(d)
    assert best == min(raw, key=raw.get) and graph.scores(d)[best] == 1.0
    # make the alphabetically first other model tie the winner exactly, seed by seed
    rival = min(m for m in graph.models if m != best)
    losses = {r["job"]["seed"]: r["metrics"]["heldout_loss"] for r in records
              if r["job"]["dataset"] == d and r["job"]["model"] == best}
    tied = [json.loads(json.dumps(r)) for r in records]
    for r in tied:
        if r["job"]["dataset"] == d and r["job"]["model"] == rival:
            r["metrics"]["heldout_loss"] = losses[r["job"]["seed"]]
    tg = MatchingGraph.from_reference(tied, models, datasets, k=3)
    assert tg.scores(d)[rival] == tg.scores(d)[best] == 1.0
    first = min(best, rival)
    assert tg.winner(d) == first
    unprofiled = next(x for x in tg.datasets if x not in tg.profiled)
    assert tg.winner(unprofiled) is None
    # the same choice everywhere a winner is named
    from mandc.select import Selector

    target = next(x for x in tg.datasets if x != d and d in dict(tg.nearest(x, n=3)))
    assert Selector().explain(tg, target, n=3)["winners"][d] == first
    wins = {m: sum(tg.winner(x) == m for x in tg.profiled) for m in tg.models}
    assert {m: int(s) for m, s in MostFrequentWinner().fit(tg).score.items()} == wins  # + mean score / 100 < 1
    assert matrix_stats(tg)["distinct_winners"] == sum(n > 0 for n in wins.values())


def _with_bookkeeping(ref):
    """The synthetic reference with the three bookkeeping columns in front, constant over the catalog
    as in the shipped one (80 images of 32×32)."""
    records, models, datasets = ref
    lines = []
    for d in datasets:
        names = ["log2_size", "log2_width", "log2_height"] + d["feature_names"]
        lines.append({**d, "vector": [np.log2(81), 5.0, 5.0] + d["vector"], "feature_names": names})
    return records, models, lines


def _user(ref, vector, size, side):
    return {"ref": ref, "name": ref, "family": None, "vector": [float(np.log2(1 + size)), float(np.log2(side)),
                                                                float(np.log2(side))] + list(vector)}


@pytest.mark.parametrize("rule", ["content", "all"])
def test_a_dataset_of_another_size_and_resolution_moves_no_other_neighbours(rule):
    """A store rebuilds its graph from all its datasets, so feeding one user dataset back must not
    change which datasets the others find nearest. Under the content rule it does not; under the
    earlier rule (every column, statistics over every dataset) the two user datasets, alone in
    differing on size and resolution, become each other's nearest whatever they show."""
    records, models, lines = _with_bookkeeping(make_reference(n_families=4, per_family=10, n_profiled=3, n_models=3))
    rng = np.random.default_rng(7)
    fam = {f: np.mean([d["vector"][3:] for d in lines if d["family"] == f], 0) for f in ("fam0", "fam1")}
    dim = len(fam["fam0"])
    u1 = _user("/data/u1", fam["fam0"] + 0.3 * rng.standard_normal(dim), 102, 64)  # looks like fam0
    u2 = _user("/data/u2", fam["fam1"] + 0.3 * rng.standard_normal(dim), 300, 48)  # looks like fam1
    before = MatchingGraph.from_reference(records, models, lines + [u1], k=3, rule=rule)
    after = MatchingGraph.from_reference(records, models, lines + [u1, u2], k=3, rule=rule)

    def order(g, d):  # every other dataset of `before`, nearest first
        return [r for r, _ in g.nearest(d, n=len(g.datasets), profiled_only=False) if r != "/data/u2"]

    changed = [d for d in before.datasets if order(after, d) != order(before, d)]
    u1_near = after.nearest("/data/u1", n=1, profiled_only=False)[0][0]
    if rule == "all":
        assert "/data/u1" in changed and u1_near == "/data/u2"
        return
    assert changed == []
    assert u1_near.startswith("builtin:fam0_")
    assert after.nearest("/data/u2", n=1, profiled_only=False)[0][0].startswith("builtin:fam1_")
    # the same as adding u2 as a target to the graph without it: the statistics are the catalog's
    target = before.copy()
    target.add_dataset("/data/u2", u2["vector"])
    assert target.similarity("/data/u2") == pytest.approx(after.similarity("/data/u2"))
    # bookkeeping is invisible to similarity; a column the catalog holds constant leaves the predictor
    z = after.standardized(np.stack([after.vector("/data/u1"), after.vector("/data/u2")]))
    assert np.all(z[:, :3] == 0) and np.all(np.abs(z) <= 5.0)
    assert after.varying() == list(range(3, 3 + dim))


def test_a_near_constant_column_cannot_dominate_similarity(ref):
    """A column whose catalog spread is tiny but not zero: a user dataset far off on it is clipped to
    ±CLIP_Z standard deviations there, so its content still decides its neighbours."""
    from mandc.graph import CLIP_Z

    records, models, datasets = ref
    rng = np.random.default_rng(3)
    lines = [{**d, "vector": d["vector"] + [1.0 + 1e-4 * rng.standard_normal()],
              "feature_names": d["feature_names"] + ["almost_constant"]} for d in datasets]
    twin = next(d for d in lines if d["family"] == "fam1")
    user = {"ref": "/data/u", "family": None, "vector": twin["vector"][:-1] + [2.0]}
    g = MatchingGraph.from_reference(records, models, lines + [user], k=3)
    assert np.abs(g.standardized(g.vector("/data/u")[None])).max() == pytest.approx(CLIP_Z)
    assert g.nearest("/data/u", n=1, profiled_only=False)[0][0] == twin["ref"]


def _lineage_reference(ref):
    """``ref`` plus three unmeasured models: ``zoo:child`` (card ``base_model``: model 0), ``zoo:grandchild``
    (zoo ``parent``: the bare name ``child``) and ``hub:org/merge@abc`` (no card base; the store's typed edges
    name model 1 and model 2 by their Hub ids without a revision, as ``mandc hub crawl`` records them)."""
    records, models, datasets = ref
    m0, m1, m2 = (m["ref"] for m in models[:3])
    extra = [{"ref": "zoo:child", "features": models[0]["features"], "info": {"base_model": m0}},
             {"ref": "zoo:grandchild", "features": models[0]["features"], "info": {"parent": "child"}},
             {"ref": "hub:org/merge@abc", "features": models[1]["features"], "info": {}},
             {"ref": "hub:org/b1@s1", "features": models[1]["features"], "info": {}}]
    lineage = [{"model": "hub:org/merge@abc", "base": "hub:org/b1", "relation": "merge"},
               {"model": "hub:org/merge@abc", "base": m2, "relation": "merge"},
               {"model": "hub:org/merge@abc", "base": "hub:org/gone", "relation": "merge"}]  # not in the graph
    # hub:org/b1@s1 is measured like model 1 (a copy of its records)
    copies = [dict(r, job_id=r["job_id"] + "-b1", job={**r["job"], "model": "hub:org/b1@s1"})
              for r in records if r["job"]["model"] == m1]
    return MatchingGraph.from_reference(records + copies, models + extra, datasets, k=3, lineage=lineage), (m0, m1, m2)


def test_lineage_edges_come_from_cards_and_the_store_and_resolve_refs(ref):
    g, (m0, m1, m2) = _lineage_reference(ref)
    assert g.bases("zoo:child") == [m0]
    assert g.bases("zoo:grandchild") == ["zoo:child"]               # bare zoo name → zoo:child
    assert g.bases("hub:org/merge@abc") == sorted(["hub:org/b1@s1", m2])  # hub id → its revision; gone dropped
    assert g.bases(m0) == [] and g.bases("nope") == []             # a base is no child of its child
    rel = {(a["model"], a["base"]): a["relation"] for _, _, a in g.edges("lineage")}
    assert rel[("hub:org/merge@abc", m2)] == "merge" and rel[("zoo:child", m0)] == "finetune"
    assert repr(g).endswith(", 4 lineage)")
    g2 = MatchingGraph.from_json(json.loads(json.dumps(g.to_json())))
    assert g2.bases("hub:org/merge@abc") == g.bases("hub:org/merge@abc")
    # leave-one-model-out keeps the lineage (a model enters with features and lineage only)
    assert g.without_model(m0).bases("zoo:child") == [m0]


def test_inherited_scores_follow_lineage_and_never_override_a_measurement(ref):
    g, (m0, m1, m2) = _lineage_reference(ref)
    for d in g.profiled:
        sc, inh = g.scores(d), g.inherited_scores(d)
        assert inh["zoo:child"] == sc[m0] and inh["zoo:grandchild"] == sc[m0]   # two hops up
        assert inh["hub:org/merge@abc"] == pytest.approx((sc["hub:org/b1@s1"] + sc[m2]) / 2)  # merge: the mean
        assert not set(inh) & set(sc)                               # measured models inherit nothing
    # a measurement of the child itself wins over the inheritance, for it and for its own children
    d = g.profiled[0]
    r = next(r for r in ref[0] if r["job"]["model"] == m1 and r["job"]["dataset"] == d)
    g.add_records([dict(r, job_id="child-own", job={**r["job"], "model": "zoo:child"})])
    assert "zoo:child" not in g.inherited_scores(d)
    assert g.inherited_scores(d)["zoo:grandchild"] == g.scores(d)["zoo:child"]
    assert g.inherited_scores(g.profiled[1])["zoo:child"] == g.scores(g.profiled[1])[m0]


def test_copies_are_deep_copies_in_the_same_order(graph):
    """``copy()`` (and so ``without_performance``) equals ``copy.deepcopy``: the same node and adjacency
    order, equal attributes, nothing shared with the original, one edge dict for both directions."""
    import copy

    g = graph.copy()
    g.add_dataset("/new/target", graph.vector(graph.datasets[0]) * 1.01)
    c, d = g.copy(), copy.deepcopy(g.G)
    assert list(c.G.nodes) == list(d.nodes) and [list(c.G.adj[n]) for n in c.G] == [list(d.adj[n]) for n in d]
    assert json.dumps(c.to_json()) == json.dumps(MatchingGraph(d).to_json()) and c.G.graph == d.graph
    u, v, a = c.edges("perf")[0]
    assert a is c.G.edges[v, u] and a is not g.G.edges[u, v]
    next(iter(a["runs"].values()))["loss"] = -1.0
    c.G.nodes[v]["x"]["log10_params"] = -1.0  # u < v: u is the dataset, v the model
    assert -1.0 not in [r["loss"] for r in g.G.edges[u, v]["runs"].values()]
    assert g.G.nodes[v]["x"]["log10_params"] != -1.0 and c.G.nodes[u]["x"] == g.G.nodes[u]["x"]


def test_an_overlay_takes_a_new_dataset_like_a_copy_and_leaves_the_graph_alone(graph):
    before = json.dumps(graph.to_json())
    vec = graph.vector(graph.datasets[1]) * 0.97
    o, c = graph.overlay(), graph.copy()
    o.add_dataset("/new/target", vec)
    c.add_dataset("/new/target", vec)
    assert json.dumps(o.to_json()) == json.dumps(c.to_json())
    assert [list(o.G.adj[n]) for n in o.G] == [list(c.G.adj[n]) for n in c.G]
    assert json.dumps(graph.to_json()) == before and "/new/target" not in graph.datasets
    o.G.remove_edges_from([("d:/new/target", n) for n in list(o.G.neighbors("d:/new/target"))])
    assert json.dumps(graph.to_json()) == before
