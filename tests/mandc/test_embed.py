"""mandc.embed: the graph as tensors, the positive pairs, GraphSAGE (inductive) and node2vec (transductive)."""
import numpy as np
import pytest
import torch

from mandc.embed import (GraphTensors, Node2VecConfig, Node2VecEmbedder, SageConfig, SageEmbedder, model_matrix,
                         positive_pairs)
from mandc.graph import MatchingGraph
from synthetic_reference import make_reference


@pytest.fixture(scope="module")
def ref():
    return make_reference(n_families=3, per_family=4, n_profiled=3, n_models=5, seed=1)


@pytest.fixture(scope="module")
def graph(ref):
    return MatchingGraph.from_reference(*ref, k=3)


@pytest.fixture(scope="module")
def sage(graph):
    return SageEmbedder(SageConfig(epochs=60)).fit(graph, seed=0)


def test_positive_pairs_are_the_top_models_and_near_ties(graph):
    pos = positive_pairs(graph, pos_top=2)
    for d in graph.profiled:
        sc = graph.scores(d)
        top = sorted(sc, key=lambda m: (-sc[m], m))[:2]
        assert {m for m, dd in pos if dd == d} == set(top)
    # pos_score adds every model at least that good, beyond the top
    loose = positive_pairs(graph, pos_top=1, pos_score=0.5)
    assert loose == {(m, d) for d in graph.profiled for m, s in graph.scores(d).items()
                     if s >= 0.5 or m == graph.winner(d)}


def test_graph_tensors_shapes_and_standardisation(graph):
    t = GraphTensors.from_graph(graph, pos_top=3)
    assert t.models == graph.models and t.datasets == graph.datasets
    assert t.xm.shape == (len(graph.models), model_matrix(graph).shape[1]) and t.xd.shape[0] == len(graph.datasets)
    varying = model_matrix(graph).std(0) > 1e-12
    assert torch.allclose(t.xm.mean(0), torch.zeros(t.xm.shape[1]), atol=1e-5)
    assert torch.allclose(t.xm[:, torch.from_numpy(varying)].std(0, unbiased=False), torch.ones(int(varying.sum())), atol=1e-4)
    pairs = {tuple(e) for e in t.sim.T.tolist()}
    assert pairs == {(b, a) for a, b in pairs}  # both directions of every similarity edge
    assert t.pos.shape == (2, len(positive_pairs(graph, 3)))
    assert GraphTensors.from_graph(graph, pos_top=3, use_data_edges=False).sim.shape == (2, 0)


def test_sage_learns_and_is_inductive(graph, ref, sage):
    assert sage.history[-1] < sage.history[0]
    g = graph.copy()
    g.add_dataset("/new/target", np.asarray(ref[2][0]["vector"]) * 1.01)  # a node the GNN never saw
    zm, zd = sage.embed(g)
    assert set(zd) == set(g.datasets) and zd["/new/target"].shape == (32,)
    assert np.all(np.isfinite(zd["/new/target"]))
    # hiding a dataset's perf edges changes its embedding (the edges are used), batched = single
    d = graph.profiled[0]
    (zm1, zd1), (zm2, zd2) = sage.embed_many(graph, [[], [d]])
    assert not np.allclose(zd1[d], zd2[d])
    assert np.allclose(sage.embed(graph, hide=[d])[1][d], zd2[d], atol=1e-6)


def test_sage_scores_positive_pairs_above_negative_ones(graph, sage):
    """Link prediction is what it learned: ⟨z_m, z_d⟩ is higher, on average, for the positive pairs than
    for the negatives (score < neg_threshold) of the training graph."""
    zm, zd = sage.embed(graph)
    pos = positive_pairs(graph, sage.cfg.pos_top, sage.cfg.pos_score)
    score = lambda m, d: float(zm[m] @ zd[d])  # noqa: E731
    good = [score(m, d) for m, d in pos]
    bad = [score(m, d) for d in graph.profiled for m, s in graph.scores(d).items() if s < sage.cfg.neg_threshold]
    assert good and bad and np.mean(good) > np.mean(bad)


def test_sage_is_deterministic_and_checks_its_input(graph, sage):
    again = SageEmbedder(SageConfig(epochs=60)).fit(graph, seed=0)
    assert again.history == sage.history
    d = graph.datasets[0]
    assert np.array_equal(again.embed(graph)[1][d], sage.embed(graph)[1][d])
    with pytest.raises(RuntimeError, match="before fit"):
        SageEmbedder().embed(graph)
    other = MatchingGraph.from_reference([], [{"ref": "m", "features": {"only_this": 1.0}}],
                                         [{"ref": "builtin:x", "vector": [0.0, 1.0]}], k=1)
    with pytest.raises(ValueError, match="model features differ"):
        sage.embed(other)
    with pytest.raises(ValueError, match="no performance edges"):
        SageEmbedder().fit(other)


def test_node2vec_walks_follow_edges_and_it_is_transductive(graph):
    n2v = Node2VecEmbedder(Node2VecConfig(walks_per_node=3, epochs=2))
    nodes, walks = n2v.walks(graph, np.random.default_rng(0))
    _, adj = n2v._adjacency(graph)
    assert len(walks) == 3 * len(nodes)
    assert all(b in adj[a] for w in walks for a, b in zip(w, w[1:]))  # every step is along an edge
    n2v.fit(graph, seed=0)
    zm, zd = n2v.embed(graph)
    assert len(zm) == len(graph.models) and len(zd) == len(graph.datasets)
    g = graph.copy()
    g.add_dataset("/new/target", graph.vector(graph.datasets[0]))
    with pytest.raises(KeyError, match="transductive"):
        n2v.embed(g)


@pytest.mark.parametrize("local_rows", [1, 60])
def test_embed_many_on_local_neighbourhoods_equals_the_full_batch(local_rows):
    """With ``need``, a batch too large for whole-graph copies runs each copy on its needed nodes' 2-hop
    neighbourhood: the same embeddings (one copy per pass, or several batched per pass)."""
    g = MatchingGraph.from_reference(*make_reference(n_families=6, per_family=6, n_profiled=3, n_models=8, seed=2), k=2)
    sage = SageEmbedder(SageConfig(epochs=5)).fit(g, seed=0)
    hides = [[d] for d in g.profiled] + [[]]
    need = [(sorted(g.scores(d)), [d]) for d in g.profiled] + [(g.models[:3], g.datasets[-2:])]
    full = sage.embed_many(g, hides, need=need, local_rows=10**9)
    local = sage.embed_many(g, hides, need=need, local_rows=local_rows)
    whole = sage.embed_many(g, hides)
    for (fm, fd), (lm, ld), (wm, wd), (ms, ds) in zip(full, local, whole, need):
        assert list(fm) == list(lm) == list(ms) and list(fd) == list(ld) == list(ds)
        for m in ms:
            assert np.allclose(fm[m], lm[m], atol=1e-5) and np.array_equal(fm[m], wm[m])
        for d in ds:
            assert np.allclose(fd[d], ld[d], atol=1e-5) and np.array_equal(fd[d], wd[d])
