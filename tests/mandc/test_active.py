"""Active profiling (mandc.active.suggest) on subsets of the shipped reference."""
from __future__ import annotations

import pytest

from data.reference import load_reference
from mandc.active import ANCHOR, suggest
from mandc.graph import MatchingGraph
from mandc.select import SelectorConfig, rank_of

FAST = SelectorConfig(embedding="none", n_estimators=10)  # LightGBM only: ~50 ms a fit


@pytest.fixture(scope="module")
def reference():
    records, models, datasets = load_reference()
    records = [r for r in records if r["status"] == "ok"]
    return records, models, datasets, MatchingGraph.from_reference(records, models, datasets)


def _graph(reference, keep):
    records, models, datasets, _ = reference
    return MatchingGraph.from_reference([r for r in records if keep(r["job"]["model"], r["job"]["dataset"])],
                                        models, datasets)


def test_new_models_then_new_datasets_first_and_measured_pairs_never(reference):
    full = reference[3]
    new_model, new_data = full.models[3], full.profiled[5]
    drop = {(m, d) for i, (m, d) in enumerate((m, d) for d in full.profiled for m in full.models) if i % 3 == 0}
    g = _graph(reference, lambda m, d: m != new_model and d != new_data and (m, d) not in drop)
    out = suggest(g, 40, cfg=FAST)
    assert len(out) == 40 and len({(m, d) for m, d, _ in out}) == 40
    assert all(m not in g.scores(d) for m, d, _ in out)  # nothing measured is proposed again
    assert out[0][0] == new_model and "has no measurement yet" in out[0][2]
    unmeasured = [d for d in g.datasets if not g.scores(d)]  # new_data and the catalog's unprofiled ones
    firsts = [d for _, d, _ in out[1:1 + len(unmeasured)]]
    assert sorted(firsts) == sorted(unmeasured)  # then one pair on each dataset without a measurement
    assert all("has no measurement yet" in why for *_, why in out[1:1 + len(unmeasured)])


def test_the_missing_winner_of_an_open_dataset_beats_a_settled_dataset(reference):
    """Dataset A lacks only its best model, dataset B only its worst: measuring A's best can change
    A's winner, measuring B's worst cannot change B's."""
    full = reference[3]
    a, b = full.profiled[0], full.profiled[1]
    a_best, b_worst = rank_of(full.scores(a))[0], rank_of(full.scores(b))[-1]
    g = _graph(reference, lambda m, d: (m, d) not in {(a_best, a), (b_worst, b)})
    out = suggest(g, 2, candidates=[(b_worst, b), (a_best, a)], cfg=FAST, seed=1)
    assert [(m, d) for m, d, _ in out] == [(a_best, a), (b_worst, b)]
    assert "beats the measured best" in out[0][2]
    p = [float(why.split("p≈")[1].split()[0]) for *_, why in out]
    assert p[0] > p[1] and p[1] < ANCHOR


def test_a_row_of_likely_winners_gets_an_anchor(reference):
    """A dataset where only the models the ensemble ranks best are measured gets its predicted worst
    model suggested, to fix the low end of its min-max scale."""
    full = reference[3]
    d = full.profiled[2]
    top = rank_of(full.scores(d))[:2]
    g = _graph(reference, lambda m, x: x != d or m in top)
    out = suggest(g, 3, candidates=[(m, d) for m in full.models if m not in top], cfg=FAST)
    assert len(out) == 3 and all(x == d for _, x, _ in out)
    assert any("anchors" in why for *_, why in out)


def test_candidates_and_bad_input(reference):
    full = reference[3]
    few = _graph(reference, lambda m, d: d == full.profiled[0])  # one profiled dataset: no selector
    out = suggest(few, 3)
    assert len(out) == 3 and all("too few measured datasets" in why for *_, why in out)
    assert all(d != full.profiled[0] for _, d, _ in out)  # its measured pairs are not proposed
    assert suggest(full, 5, candidates=[(full.models[0], full.profiled[0])]) == []  # measured already
    with pytest.raises(KeyError, match="not in the graph"):
        suggest(full, 1, candidates=[("zoo:nope", full.profiled[0])])
    with pytest.raises(ValueError, match="n must be"):
        suggest(full, 0)


def test_profile_suggest_command(monkeypatch):
    import json

    from typer.testing import CliRunner

    import mandc.active as active
    from mandc.cli import app

    monkeypatch.setattr(active, "SelectorConfig", lambda: FAST)  # the CLI's default selector, made cheap
    model = load_reference()[1][0]["ref"]
    res = CliRunner().invoke(app, ["profile", "--suggest", "3", "--models", model, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("["):])
    assert len(out) == 3 and {o["model"] for o in out} == {model}  # on datasets the store has not measured
    assert all(o["reason"] for o in out)
    assert CliRunner().invoke(app, ["profile", "--run"]).exit_code == 2
    assert CliRunner().invoke(app, ["profile", "--models", "zoo:a"]).exit_code == 2  # no --datasets
