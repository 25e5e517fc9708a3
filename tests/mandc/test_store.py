"""The SQLite graph store: seeding, round trips (SQLite, JSON), re-seeding that keeps user rows, bad files."""
from __future__ import annotations

import json
import sqlite3

import pytest
from planner_reference import make_reference, record, write_reference

import mandc.store
from mandc.graph import MatchingGraph
from mandc.store import Store, StoreError


@pytest.fixture(scope="module")
def reference():
    return make_reference()


def _graph_json(g: MatchingGraph) -> str:
    return json.dumps(g.to_json(), sort_keys=True)


def test_seed_and_sqlite_round_trip(tmp_path, reference):
    folder = write_reference(tmp_path / "ref", reference)
    path = tmp_path / "g.sqlite"
    with Store(path, reference=folder) as s:
        n = s.counts()
        assert (n["records"], n["models"], n["datasets"], n["user_records"]) == (len(reference[0]), 4, 9, 0)
        assert n["profiled"] == 6 and s.reference_origin == "custom"
        g1 = s.graph(k=3)
        h1 = s.content_hash()
    # a fresh process-like reopen: same rows, same graph, and the shipped reference does not replace a custom one
    with Store(path) as s:
        assert s.content_hash() == h1
        g2 = s.graph(k=3)
    direct = MatchingGraph.from_reference(*reference, k=3)
    assert _graph_json(g1) == _graph_json(g2) == _graph_json(direct)
    unprofiled = ("builtin:shapes_triangles", "builtin:digits_inverted", "builtin:gradients_diagonal")
    assert sorted(g2.profiled) == sorted(d["ref"] for d in reference[2] if d["ref"] not in unprofiled)
    assert g2.raw("builtin:shapes_circles") == direct.raw("builtin:shapes_circles")


def test_json_export_import(tmp_path, reference):
    s = Store(tmp_path / "a.sqlite", reference=reference)
    s.add_records([record("zoo:unet-s-broad", "builtin:shapes_triangles", 0, 0.05)])
    out = s.export_json(tmp_path / "export.json")
    assert json.loads(out.read_text())["format"] == "mandc.Store"
    t = Store(":memory:", reference=False)
    assert t.counts()["records"] == 0
    t.import_json(out)
    assert t.content_hash() == s.content_hash()
    assert (t.reference_origin, t.reference_hash) == (s.reference_origin, s.reference_hash)
    assert len(t.records(source="user")) == 1
    assert _graph_json(t.graph()) == _graph_json(s.graph())
    # a bad export leaves the store as it was
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "mandc.Store", "schema": 1, "models": [{"ref": "zoo:x"}],
                               "datasets": [], "records": [{"source": "user", "record": {"job_id": "1"}}]}))
    with pytest.raises(StoreError, match="ProfileRecord"):
        t.import_json(bad)
    assert t.content_hash() == s.content_hash()
    with pytest.raises(StoreError, match="not a mandc store export"):
        t.import_json({"format": "other"})


def test_user_records_survive_a_reseed(tmp_path, reference, monkeypatch):
    records, models, datasets = reference
    shipped = write_reference(tmp_path / "shipped", reference)
    monkeypatch.setattr(mandc.store, "shipped_reference_dir", lambda: shipped)  # stands in for data/reference
    path = tmp_path / "g.sqlite"
    s = Store(path)
    assert s.reference_origin == "shipped" and s.counts()["records"] == len(records)
    # user rows: a new dataset with its record, and a re-measurement that shares a job_id with the reference
    s.add_dataset("/data/mine", datasets[0]["vector"], family=None)
    mine = record("zoo:unet-s-shapes", "/data/mine", 0, 0.04)
    same_job = dict(records[0], metrics={"heldout_loss": 0.5, "zero_shot_loss": 0.6})
    s.add_records([mine, same_job])
    s._con.execute("DELETE FROM records WHERE job_id = ?", (records[5]["job_id"],))  # a marker: reseeding restores it
    s.close()

    # reopening with the same shipped reference changes nothing
    s = Store(path)
    assert s.counts()["records"] == len(records) and s.counts()["user_records"] == 2
    s.close()

    # a newer shipped reference: one record dropped, one loss changed
    new_records = [dict(r) for r in records[2:]]
    new_records[0] = dict(new_records[0], metrics={"heldout_loss": 0.123, "zero_shot_loss": 0.2})
    write_reference(shipped, (new_records, models, datasets))
    s = Store(path)
    by_id = {r["job_id"]: r for r in s.records()}
    assert records[1]["job_id"] not in by_id                                   # dropped reference row is gone
    assert by_id[new_records[0]["job_id"]]["metrics"]["heldout_loss"] == 0.123  # changed row replaced
    assert by_id[mine["job_id"]] == mine                                       # user rows kept...
    assert by_id[records[0]["job_id"]]["metrics"]["heldout_loss"] == 0.5        # ...and win over the reference
    assert s.dataset("/data/mine")["source"] == "user"
    assert "/data/mine" in s.graph().profiled


def test_transactions_are_atomic(tmp_path, reference):
    s = Store(tmp_path / "g.sqlite", reference=reference)
    before = s.content_hash()
    with pytest.raises(StoreError, match="status"):
        s.add_records([record("zoo:unet-s-broad", "builtin:shapes_triangles", 0, 0.05),
                       record("zoo:unet-s-broad", "builtin:shapes_triangles", 1, 0.05, status="weird")])
    with pytest.raises(RuntimeError, match="half-way"):
        with s.transaction():
            s.add_records([record("zoo:unet-s-broad", "builtin:digits_inverted", 0, 0.05)])
            s.add_model("zoo:new", {"log10_params": 5.0})
            raise RuntimeError("half-way")
    assert s.content_hash() == before
    with pytest.raises(StoreError, match="builtin:bad: vector has 3 values"):
        s.add_dataset("builtin:bad", [0.0, 1.0, 2.0])
    with pytest.raises(StoreError, match="NaN"):
        s.add_records([record("zoo:unet-s-broad", "builtin:shapes_triangles", 0, float("nan"))])
    assert s.content_hash() == before


def test_corrupt_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="junk.sqlite is not a usable mandc graph store"):
        Store(junk, reference=False)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE songs (title TEXT)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a mandc graph store.*songs"):
        Store(foreign, reference=False)
    empty = Store(tmp_path / "empty.sqlite", reference=False)
    with pytest.raises(StoreError, match="empty"):
        empty.graph()


def test_orphan_records_are_left_out_with_a_warning(tmp_path, reference):
    s = Store(tmp_path / "g.sqlite", reference=reference)
    s.add_records([record("zoo:gone", "builtin:shapes_circles", 0, 0.05)])
    with pytest.warns(UserWarning, match="zoo:gone"):
        g = s.graph()
    assert "zoo:gone" not in g.models


def test_an_empty_store_stays_unseeded_and_a_new_one_seeds_from_the_shipped_reference(tmp_path, reference, monkeypatch):
    monkeypatch.setattr(mandc.store, "shipped_reference_dir", lambda: write_reference(tmp_path / "shipped", reference))
    Store(tmp_path / "empty.sqlite", reference=False).close()
    assert Store(tmp_path / "empty.sqlite").counts()["records"] == 0   # made empty on purpose: not seeded later
    fresh = Store(tmp_path / "home" / "graph.sqlite")                  # the default: seeded on first use
    assert fresh.reference_origin == "shipped" and fresh.counts()["records"] == len(reference[0])


def test_the_stores_lineage_edges_reach_the_graph_and_its_hash(tmp_path, reference):
    """A crawled model (``hub:org/name@sha``, nothing measured) whose store lineage names a reference model
    gets a lineage edge in the store's graph and inherits that model's scores; the edge changes the hash."""
    folder = write_reference(tmp_path / "ref", reference)
    with Store(tmp_path / "g.sqlite", reference=folder) as s:
        base = reference[1][0]["ref"]
        s.add_model("hub:org/tune@abc", reference[1][0]["features"], {"family": "unet"}, name="org/tune")
        before = s.content_hash()
        assert s.graph(k=3).bases("hub:org/tune@abc") == []
        s.set_lineage("hub:org/tune@abc", [{"base": base, "relation": "finetune"}])
        assert s.content_hash() != before
        g = s.graph(k=3)
        assert g.bases("hub:org/tune@abc") == [base]
        assert all(g.inherited_scores(d)["hub:org/tune@abc"] == g.scores(d)[base] for d in g.profiled)
        # an export keeps the lineage: same rows, same hash, same graph after an import
        t = Store(":memory:", reference=False)
        t.import_json(s.export_json(tmp_path / "export.json"))
        assert t.lineage() == s.lineage() and t.content_hash() == s.content_hash()
        assert t.graph(k=3).bases("hub:org/tune@abc") == [base]


def test_content_hash_is_recomputed_after_a_write_here_or_by_another_connection(tmp_path, reference):
    path = tmp_path / "g.sqlite"
    with Store(path, reference=reference) as s, Store(path) as other:
        h0 = s.content_hash()
        assert s.content_hash() == h0 == other.content_hash()
        s.add_records([record("zoo:unet-s-shapes", "builtin:shapes_triangles", 7, 0.5)])
        h1 = s.content_hash()
        assert h1 != h0 and other.content_hash() == h1  # the other connection sees the commit
        other.add_records([record("zoo:unet-s-shapes", "builtin:shapes_triangles", 8, 0.4)])
        assert s.content_hash() not in (h0, h1) and s.content_hash() == other.content_hash()
