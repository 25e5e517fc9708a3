"""The Planner: recommendations for profiled, unprofiled and never-seen datasets, the selector cache,
feedback, the zero-shot probe, the Recommendation's forms and the ``mandc recommend`` command."""
from __future__ import annotations

import json

import pytest
from planner_reference import make_reference, record
from typer.testing import CliRunner

from mandc.planner import Planner, Recommendation, probe_models
from mandc.select import SelectorConfig
from mandc.store import Store


@pytest.fixture(scope="module")
def reference():
    return make_reference()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One selector cache for the module: stores with equal contents share the fitted selector."""
    return tmp_path_factory.mktemp("selector_cache")


@pytest.fixture
def store(tmp_path, reference):
    return Store(tmp_path / "g.sqlite", reference=reference)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small imagefolder of shape images the graph has never seen."""
    from data import load_builtin, write_imagefolder

    return write_imagefolder(load_builtin("shapes_polygons", n=24), tmp_path_factory.mktemp("data") / "my_shapes")


def _check_ranking(rec: Recommendation, models: list[str]) -> None:
    assert sorted(e.model for e in rec.entries) == sorted(models)
    assert [e.rank for e in rec.entries] == list(range(1, len(models) + 1))
    scores = [e.score for e in rec.entries]
    assert scores == sorted(scores, reverse=True) and rec.best == rec.entries[0].model


def test_unprofiled_builtin_is_predicted_and_the_fit_is_cached(tmp_path, store):
    before = store.content_hash()
    rec = Planner(store, cache_dir=tmp_path / "cache").recommend("builtin:shapes_triangles", top_k=2)
    assert rec.source == "predicted" and not rec.cached and rec.dataset == "builtin:shapes_triangles"
    _check_ranking(rec, store.graph().models)
    assert not any("new to the graph" in n for n in rec.notes)   # its shipped vector was used
    assert rec.nearest and all(n["dataset"] in store.graph().profiled and n["winner"] for n in rec.nearest)
    for e in rec.entries:  # evidence is the measured score on the same nearest datasets, winners flagged
        assert [x["dataset"] for x in e.evidence] == [n["dataset"] for n in rec.nearest]
        assert all(x["won"] == (n["winner"] == e.model) for x, n in zip(e.evidence, rec.nearest))
    assert rec.entries[0].mixture and abs(sum(rec.entries[0].mixture.values()) - 1) < 1e-3
    assert len(list((tmp_path / "cache").glob("selector-*.pkl"))) == 1
    cached = json.loads(next((tmp_path / "cache").glob("predictions-*.json")).read_text())
    preds = cached["predictions"]
    assert set(preds) == {"builtin:shapes_triangles", "builtin:digits_inverted", "builtin:gradients_diagonal"}
    # what the fit chose travels with the answer (and with the cache): rounds from the CV's grid
    from mandc.select import TREE_GRID
    assert rec.selector["fitted"] == cached["fitted"] and rec.selector["fitted"]["rank"]["rounds"] in TREE_GRID
    assert any(n.startswith("selector: ") and "cross-validation" in n for n in rec.notes)
    # each score carries the CV-calibrated interval; the contenders are the models whose interval overlaps the top's
    margin = rec.selector["fitted"]["rank"]["margin"]
    for e in rec.entries:
        assert e.interval == pytest.approx([e.score - margin / 2, e.score + margin / 2], abs=1e-6)
    assert rec.contenders == [e.model for e in rec.entries if e.score >= rec.entries[0].score - margin]
    assert rec.contenders[0] == rec.best
    assert any("overlap" in n and "probe these" in n for n in rec.notes) == (len(rec.contenders) > 1)
    board = rec.leaderboard()
    assert list(board.columns[:5]) == ["rank", "model", "score", "score_low", "score_high"]
    assert f"{rec.entries[0].score:.3f} ± {margin / 2:.3f}" in rec.to_markdown()
    assert store.content_hash() == before  # recommending never writes the store
    # a new planner (as in a fresh process) answers from the cached predictions: same answer
    again = Planner(Store(store.path), cache_dir=tmp_path / "cache").recommend("builtin:shapes_triangles", top_k=2)
    assert again.cached and [(e.model, e.score) for e in again.entries] == [(e.model, e.score) for e in rec.entries]
    assert again.selector["fitted"] == rec.selector["fitted"] and again.notes == rec.notes
    # ... and the cached selector, loaded from disk, predicts the same for another unprofiled node
    p = Planner(Store(store.path), cache_dir=tmp_path / "cache")
    sel, from_cache = p.fitted_selector(p.graph(), p.selector_config())
    assert from_cache and sel.predict(p.graph(), "builtin:gradients_diagonal") == preds["builtin:gradients_diagonal"]


def test_profiled_dataset_is_ranked_by_its_measurements(store, cache_dir):
    rec = Planner(store, cache_dir=cache_dir).recommend("builtin:digits_low")
    assert rec.source == "measured" and "already profiled" in rec.notes[0]
    assert rec.best == "zoo:unet-s-digits"  # the digits specialist's loss is lowest by construction
    raw = store.graph().raw("builtin:digits_low")
    assert {e.model: e.measured_loss for e in rec.entries} == raw
    assert rec.entries[0].score == 1.0 and rec.entries[-1].score == 0.0
    assert "measured_loss" in rec.leaderboard().columns


def test_never_seen_folder_enters_with_similarity_edges_only(store, folder, cache_dir):
    planner = Planner(store, cache_dir=cache_dir)
    rec = planner.recommend(folder, top_k=3)
    assert rec.dataset == str(folder.resolve()) and rec.source == "predicted"
    assert any("new to the graph" in n for n in rec.notes)
    _check_ranking(rec, store.graph().models)
    assert rec.nearest[0]["family"] == "shapes"  # real image/caption features put it beside the shape datasets
    assert rec.dataset not in planner.graph().datasets  # the store's graph is unchanged
    assert all(e.measured_loss is None for e in rec.entries)
    board = rec.leaderboard()
    assert list(board.columns) == ["rank", "model", "score", "score_low", "score_high", "why"] and len(board) == 3
    assert board["score"].is_monotonic_decreasing and len(rec.leaderboard(full=True)) == 4
    # JSON and Markdown forms
    back = Recommendation.from_json(json.loads(json.dumps(rec.to_json())))
    assert back == rec
    md = rec.to_markdown()
    assert md.count("\n| ") == 3 + 1 and rec.best in md


def test_feedback_makes_the_dataset_profiled(tmp_path, reference, folder, cache_dir):
    store = Store(tmp_path / "g.sqlite", reference=reference)
    planner = Planner(store, cache_dir=cache_dir)
    ref = str(folder.resolve())
    rec = record("zoo:unet-s-broad", str(folder), 0, 0.07)
    planner.feedback(rec)
    assert store.dataset(ref) is not None and store.records(source="user")[0]["job"]["dataset"] == ref
    after = planner.recommend(folder)
    assert not any("new to the graph" in n for n in after.notes) and not after.cached  # new contents, refitted
    by_model = {e.model: e for e in after.entries}
    assert by_model["zoo:unet-s-broad"].measured_loss == pytest.approx(0.07)
    assert any("measurements for 1 of 4" in n for n in after.notes)
    # a planner over a plain MatchingGraph keeps feedback in memory
    in_memory = Planner(store.graph(), cache_dir=cache_dir)
    assert in_memory.feedback([record("zoo:unet-s-digits", str(folder), 1, 0.09)]) == 1
    assert in_memory.graph().raw(ref) == {"zoo:unet-s-broad": pytest.approx(0.07), "zoo:unet-s-digits": pytest.approx(0.09)}
    assert len(store.records(source="user")) == 1


def test_probe_scores_local_models_and_skips_the_rest(tmp_path, reference, cache_dir):
    from tiny_models import tiny_model

    from data import load_builtin

    local = tiny_model("unet", seed=0).save_pretrained(tmp_path / "tiny")
    store = Store(tmp_path / "g.sqlite", reference=reference)
    store.add_model(str(local), {"is_dit": 0.0, "log10_params": 4.0, "depth": 2.0, "width": 16.0, "mix_shapes": 1.0})
    ds = load_builtin("shapes_triangles", n=24)
    losses, skipped = probe_models([str(local), "zoo:unet-s-shapes", "org/not-here"], ds)
    assert set(losses) == {str(local)} and 0 < losses[str(local)] < 10
    assert "not built" in skipped["zoo:unet-s-shapes"] and "Hub" in skipped["org/not-here"]

    # the probe path is under test here, not the embedding: a selector without one fits faster
    planner = Planner(store, selector_config=SelectorConfig(embedding="none"), cache_dir=cache_dir)
    rec = planner.recommend("builtin:shapes_triangles", probe=True)
    assert rec.probe and rec.selector["probe"] is True
    assert set(rec.probe_skipped) == {m for m in store.graph().models if m.startswith("zoo:")}
    assert [e.probe_loss is not None for e in rec.entries].count(True) == 1
    assert "probe_loss" in rec.leaderboard().columns


def test_cli_recommend_json_and_errors(tmp_path, store, cache_dir, monkeypatch):
    from mandc.cli import app

    monkeypatch.setenv("MANDC_HOME", str(tmp_path / "home"))
    export = store.export_json(tmp_path / "graph.json")
    runner = CliRunner()
    for graph in (export, store.path):
        r = runner.invoke(app, ["recommend", "builtin:gradients_diagonal", "--graph", str(graph), "--top-k", "2", "--json"],
                          catch_exceptions=False)
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        assert d["dataset"] == "builtin:gradients_diagonal" and d["top_k"] == 2 and len(d["entries"]) == 4
        assert all(e["why"] for e in d["entries"]) and d["source"] == "predicted" and d["best"] == d["entries"][0]["model"]
    r = runner.invoke(app, ["recommend", "builtin:gradients_diagonal", "--graph", str(store.path), "--top-k", "2"])
    assert r.exit_code == 0 and "rank" in r.stdout and r.stdout.count("zoo:") >= 2
    r = runner.invoke(app, ["recommend", "builtin:no_such_data", "--graph", str(store.path)])
    assert r.exit_code == 2 and "no_such_data" in r.output
    r = runner.invoke(app, ["recommend", "builtin:gradients_diagonal", "--graph", str(tmp_path / "missing.sqlite")])
    assert r.exit_code == 2 and "does not exist" in r.output
