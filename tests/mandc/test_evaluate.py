"""LODO and LOFO evaluation: metric definitions, the exact random baseline, noise ceiling, matrix stats, the JSON."""
import itertools
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mandc.evaluate import (SELECTOR_NAMES, evaluate, held_out_groups, load_graph, matrix_stats, noise_ceiling,
                            random_expectation, score_ranking)
from mandc.graph import MatchingGraph
from synthetic_reference import make_reference


@pytest.fixture(scope="module")
def graph():
    return MatchingGraph.from_reference(*make_reference(n_families=3, per_family=3, n_profiled=3, n_models=4, seed=2), k=3)


def test_score_ranking_definitions():
    raw = {"a": 1.0, "b": 2.0, "c": 4.0, "d": 3.0}
    scores = {m: (4.0 - v) / 3.0 for m, v in raw.items()}  # a = 1 (best) … c = 0 (worst)
    perfect = score_ranking({m: -v for m, v in raw.items()}, scores, raw)
    assert perfect == {"top1": 1.0, "top3": 1.0, "rel1": 1.0, "regret": 0.0, "kendall": pytest.approx(1.0)}
    second = score_ranking({"b": 3, "d": 2, "a": 1, "c": 0}, scores, raw)
    assert second["top1"] == 0.0 and second["top3"] == 1.0
    assert second["rel1"] == pytest.approx(0.5) and second["regret"] == pytest.approx(1 / 3)
    worst = score_ranking({m: v for m, v in raw.items()}, scores, raw)
    assert worst["top3"] == 0.0 and worst["kendall"] == pytest.approx(-1.0) and worst["regret"] == pytest.approx(1.0)


def test_random_expectation_is_exact():
    raw = {"a": 1.0, "b": 1.5, "c": 4.0, "d": 3.0, "e": 2.0}
    lo, hi = min(raw.values()), max(raw.values())
    scores = {m: (hi - v) / (hi - lo) for m, v in raw.items()}
    perms = [score_ranking({m: -i for i, m in enumerate(p)}, scores, raw) for p in itertools.permutations(raw)]
    brute = {k: np.mean([p[k] for p in perms]) for k in perms[0]}
    exact = random_expectation(scores, raw)
    for k in ("top1", "top3", "rel1", "regret", "kendall"):
        assert exact[k] == pytest.approx(brute[k], abs=1e-12), k


def _rec(model, dataset, seed, loss):
    return {"job_id": f"{model}{dataset}{seed}", "job": {"model": model, "dataset": dataset, "seed": seed},
            "status": "ok", "metrics": {"heldout_loss": loss, "zero_shot_loss": 1.0}}


def test_noise_ceiling_and_matrix_stats():
    models = [{"ref": m, "features": {}} for m in ("a", "b", "c")]
    datasets = [{"ref": f"d{i}", "vector": [float(i), 1.0 - i]} for i in range(4)]
    # d0, d1: a wins under both seeds; d2: a under seed 0, b under seed 1; d3: c under both
    losses = {"d0": {"a": (1, 1), "b": (2, 2), "c": (3, 3)}, "d1": {"a": (1, 1.1), "b": (2, 2), "c": (3, 3)},
              "d2": {"a": (1, 3), "b": (2, 1), "c": (3, 3)}, "d3": {"a": (3, 3), "b": (2, 2), "c": (1, 1)}}
    records = [_rec(m, d, s, v[s]) for d, per in losses.items() for m, v in per.items() for s in (0, 1)]
    g = MatchingGraph.from_reference(records, models, datasets, k=1)
    assert noise_ceiling(g) == pytest.approx(3 / 4)
    # mean losses: d2 → a 2.0, b 1.5: b wins; winners a, a, b, c
    assert matrix_stats(g) == {"models": 3, "datasets": 4, "max_winner_share": 0.5, "distinct_winners": 3}
    single = MatchingGraph.from_reference([r for r in records if r["job"]["seed"] == 0], models, datasets, k=1)
    assert noise_ceiling(single) is None


def test_evaluate_json_format(graph):
    sel = ("mandc", "mandc_probe", "random", "most_frequent", "largest", "nearest_winner", "lgbm_features", "zero_shot")
    from mandc.select import SelectorConfig

    base = SelectorConfig(sage={"epochs": 15}, n_estimators=30)
    res = evaluate(graph, seeds=2, selectors=sel, base=base, workers=1, datasets=graph.profiled[::3])
    out = json.loads(json.dumps(res.to_json()))
    assert set(out) == {"protocol", "matrix", "noise_ceiling", "selectors"} and out["protocol"] == "lodo"
    assert set(out["matrix"]) == {"models", "datasets", "max_winner_share", "distinct_winners"}
    assert out["matrix"]["models"] == 4 and out["matrix"]["datasets"] == 9
    assert 0.0 <= out["noise_ceiling"] <= 1.0
    assert set(out["selectors"]) == set(sel)
    for name, m in out["selectors"].items():
        assert set(m) == {"top1", "top3", "rel1", "regret", "kendall"}
        assert 0 <= m["top1"] <= m["top3"] <= 1 and 0 < m["rel1"] <= 1 and 0 <= m["regret"] <= 1 and -1 <= m["kendall"] <= 1
    assert out["selectors"]["random"]["top1"] == pytest.approx(0.25)
    assert len(res.per_seed["mandc"]["top1"]) == 2 and len(res.per_dataset["mandc"]) == 3
    md = res.to_markdown()
    assert "| mandc |" in md and "Noise ceiling" in md
    with pytest.raises(ValueError, match="unknown selector"):
        evaluate(graph, seeds=1, selectors=("oracle",))


def test_lofo_holds_out_whole_families(graph, monkeypatch):
    """Under LOFO every fit sees none of the held-out family's performance edges, each family is held out
    once, and each of its datasets is scored; with one profiled dataset a family, LOFO is LODO."""
    from mandc.select import SelectorConfig

    groups = held_out_groups(graph, "lofo")
    assert sorted(map(sorted, groups)) == sorted(sorted(d for d in graph.profiled if graph.family(d) == f)
                                                 for f in {graph.family(d) for d in graph.profiled})
    assert held_out_groups(graph, "lodo") == [[d] for d in graph.profiled]
    with pytest.raises(ValueError, match="protocol must be one of lodo, lofo"):
        held_out_groups(graph, "lopo")
    import mandc.evaluate as ev

    seen = []  # (selector, the profiled datasets of the graph it is fitted on)
    fit = ev._fit
    monkeypatch.setattr(ev, "_fit", lambda name, seed, h, *a: seen.append((name, set(h.profiled))) or fit(name, seed, h, *a))
    base = SelectorConfig(sage={"epochs": 5}, n_estimators=10)
    sel = ("mandc", "nearest_winner", "random")
    res = evaluate(graph, seeds=1, selectors=sel, base=base, workers=1, protocol="lofo")
    everything = set(graph.profiled)
    for name in ("mandc", "nearest_winner"):  # one fit per family, without exactly that family's datasets
        missing = sorted(sorted(everything - prof) for n, prof in seen if n == name)
        assert missing == sorted(map(sorted, groups))
    assert res.to_json()["protocol"] == "lofo" and "Leave-one-family-out (3 families" in res.to_markdown()
    assert all(set(res.per_dataset[n]) == everything for n in sel)
    monkeypatch.setattr(ev, "_fit", fit)
    single = MatchingGraph.from_reference(*make_reference(n_families=4, per_family=2, n_profiled=1, n_models=4, seed=5), k=3)
    # 4 profiled datasets: a held-out one leaves 3 for the 4-fold cross-fitting, so one fold is empty
    lofo = evaluate(single, seeds=1, selectors=sel, base=base, workers=1, protocol="lofo")
    lodo = evaluate(single, seeds=1, selectors=sel, base=base, workers=1, protocol="lodo")
    assert lofo.per_dataset == lodo.per_dataset


def test_load_graph_from_store_and_export(tmp_path):
    from mandc.store import Store

    ref = make_reference(n_families=2, per_family=3, n_profiled=2, n_models=3, seed=3)
    with Store(tmp_path / "g.sqlite", reference=ref) as store:
        store.export_json(tmp_path / "export.json")
    want = MatchingGraph.from_reference(*ref, k=5)
    for path in (tmp_path / "g.sqlite", tmp_path / "export.json"):
        g = load_graph(str(path))
        assert g.profiled == want.profiled and g.scores(g.profiled[0]) == pytest.approx(want.scores(g.profiled[0]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_graph(str(tmp_path / "missing.json"))


def test_cli_evaluate_on_a_graph_file(graph, tmp_path):
    from mandc.cli import app

    path = tmp_path / "g.json"
    path.write_text(json.dumps(graph.to_json()))
    assert load_graph(str(path)).to_json() == graph.to_json()
    r = CliRunner().invoke(app, ["evaluate", "--graph", str(path), "--seeds", "1", "--workers", "1",
                                 "--selectors", "random,largest,nearest_winner,lgbm_features", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert set(out["selectors"]) == {"random", "largest", "nearest_winner", "lgbm_features"}
    r = CliRunner().invoke(app, ["evaluate", "--graph", str(path), "--selectors", "oracle"])
    assert r.exit_code == 2 and "unknown selector" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--graph", str(path), "--seeds", "1", "--workers", "1", "--protocol",
                                 "lofo", "--selectors", "random,nearest_winner", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["protocol"] == "lofo"
    r = CliRunner().invoke(app, ["evaluate", "--graph", str(path), "--protocol", "lopo"])
    assert r.exit_code == 2 and "--protocol must be one of lodo, lofo" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    r = CliRunner().invoke(app, ["evaluate", "--graph", str(bad)])
    assert r.exit_code == 2 and "expected a MatchingGraph JSON" in r.output
    assert set(SELECTOR_NAMES) >= {"mandc", "mandc_probe", "random", "zero_shot", "node2vec", "no_data_edges", "no_embedding"}
