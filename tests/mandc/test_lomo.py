"""Leave-one-model-out (``mandc.lomo``) on the small synthetic reference, with a model whose base is known."""
from __future__ import annotations

import copy

import pytest
from synthetic_reference import make_reference

from mandc.graph import MatchingGraph
from mandc.lomo import evaluate_lomo, insert_ranking, to_markdown


def _graph_with_a_child():
    """The synthetic graph plus ``m_child``: the features of ``m0`` and, on every dataset, 0.1% more loss
    than ``m0``; its card names ``m0`` as its base model."""
    records, models, datasets = make_reference()
    parent = models[0]
    child = copy.deepcopy(parent) | {"ref": "m_child", "name": "m_child"}
    child["info"] = dict(parent.get("info") or {}, base_model=parent["ref"])
    extra = []
    for r in records:
        if r["job"]["model"] == parent["ref"]:
            c = copy.deepcopy(r)
            c["job"]["model"], c["job_id"] = "m_child", r["job_id"] + "-child"
            c["metrics"]["heldout_loss"] *= 1.001
            extra.append(c)
    return MatchingGraph.from_reference(records + extra, models + [child], datasets, k=5), parent["ref"]


def test_without_model_drops_only_its_edges_and_renormalises():
    g, parent = _graph_with_a_child()
    h = g.without_model("m_child")
    for d in g.profiled:
        assert "m_child" not in h.scores(d) and set(h.scores(d)) == set(g.scores(d)) - {"m_child"}
        assert max(h.scores(d).values()) == 1.0 and min(h.scores(d).values()) == 0.0
    assert "m_child" in h.models and h.model_features("m_child") == g.model_features("m_child")
    with pytest.raises(KeyError):
        g.without_model("nope")


def test_insert_ranking():
    assert insert_ranking(["a", "b"], "m", 1) == {"a": 3.0, "m": 2.0, "b": 1.0}


def test_lineage_places_a_near_copy_of_its_base_and_beats_random():
    g, parent = _graph_with_a_child()
    res = evaluate_lomo(g, seeds=1, methods=("lgbm_features", "base_model", "family_mean", "random"),
                        models=["m_child", parent, g.models[2]])
    assert res["with_base"] == ["m_child"]
    child = res["per_model"]["m_child"]
    # its base's score puts it right below the base: never picks it over the true winner, τ ≈ 1
    assert child["base_model"]["regret"] <= 0.01 and child["base_model"]["kendall"] > 0.95
    assert child["base_model"]["kendall"] > child["random"]["kendall"] + 0.1
    assert child["base_model"]["rank_err"] < child["random"]["rank_err"] and child["base_model"]["rank_err"] <= 0.5
    assert set(res["methods"]) == {"lgbm_features", "base_model", "family_mean", "random"}
    md = to_markdown(res)
    assert "| base_model |" in md and "the 1 with a base model:" in md and "the 2 without:" in md
    assert set(res["no_base"]) == set(res["methods"])
    with pytest.raises(ValueError, match="unknown LOMO"):
        evaluate_lomo(g, methods=("oracle",))
