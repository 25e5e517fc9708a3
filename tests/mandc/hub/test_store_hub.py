"""The store's Hub tables: lineage edges, crawl state, and stores that predate them."""
from __future__ import annotations

import sqlite3

import pytest

from mandc.store import Store, StoreError


def test_lineage_and_crawl_state_round_trip(tmp_path):
    st = Store(tmp_path / "g.sqlite", reference=False)
    st.add_model("hub:a/child@1", {"x": 1.0}, name="a/child")
    assert st.set_lineage("hub:a/child@1", [{"base": "hub:a/base", "relation": "finetune"},
                                            {"base": "hub:b/lora", "relation": "adapter"}]) == 2
    st.set_lineage("hub:a/child@1", [{"base": "hub:a/base", "relation": "merge"}])  # replaces, not appends
    assert st.lineage() == [{"model": "hub:a/child@1", "base": "hub:a/base", "relation": "merge"}]
    with pytest.raises(StoreError, match="relation"):
        st.set_lineage("hub:a/child@1", [{"base": "hub:a/base", "relation": "cousin"}])
    st.put_hub_repo({"repo_id": "a/child", "sha": "1", "last_modified": "t", "status": "ok", "node": "hub:a/child@1",
                     "info": {"license": "mit"}})
    st.put_hub_repo({"repo_id": "a/gated", "sha": "2", "status": "skipped", "reason": "gated: HTTP 403"})
    assert [r["repo_id"] for r in st.hub_repos(status="skipped")] == ["a/gated"]
    assert st.hub_repo("a/child")["info"] == {"license": "mit"} and st.hub_repo("nope") is None
    with pytest.raises(StoreError, match="status"):
        st.put_hub_repo({"repo_id": "x/y", "status": "maybe"})
    assert st.remove_model("hub:a/child@1") and st.lineage() == [] and not st.has_model("hub:a/child@1")


def test_store_without_hub_tables_gets_them_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    Store(path, reference=False).add_model("zoo:m", {"x": 1.0})
    con = sqlite3.connect(path)
    con.execute("DROP TABLE lineage")
    con.execute("DROP TABLE hub_repos")
    con.commit()
    con.close()
    st = Store(path)
    assert [m["ref"] for m in st.models()] == ["zoo:m"] and st.lineage() == [] and st.hub_repos() == []


def test_records_of_one_model(tmp_path):
    st = Store(tmp_path / "g.sqlite", reference=False)
    rec = lambda m, i: {"job_id": f"j{i}", "job": {"model": m, "dataset": "builtin:d"}, "status": "ok"}  # noqa: E731
    st.add_records([rec("hub:a/b@1", 1), rec("zoo:m", 2), rec("hub:a/b@1", 3)])
    assert [r["job_id"] for r in st.records(model="hub:a/b@1")] == ["j1", "j3"]
