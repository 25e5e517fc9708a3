"""Planning with Hub candidates against the fake Hub: ``mandc plan --crawl`` estimates every crawled model from
its configs and safetensors headers alone (ranged reads; no weight file is downloaded), ranks a memory-feasible
shortlist, skips a better-ranked model that does not fit, filters by size and license, and the report lists
license, lineage and the memory verdict of each candidate."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))
from planner_reference import make_reference, record  # noqa: E402

from mandc.hub import CrawlConfig, crawl  # noqa: E402
from mandc.plan import PlanError, candidate_memory  # noqa: E402
from mandc.planner import Planner  # noqa: E402
from mandc.store import Store  # noqa: E402

TARGET = "builtin:shapes_triangles"
HUB = ("tiny/sd", "tiny/pixart", "tiny/sd-finetune")  # the crawlable pipelines of the fake Hub


def _safetensors_reads(hub) -> list[tuple[str, str, str | None]]:
    return [r for r in hub.file_reads if r[1].endswith(".safetensors")]


def _downloads(hub) -> list[tuple[str, str, str | None]]:
    """Reads of weight files that are not header reads: any HEAD/GET of a safetensors file without a Range."""
    return [r for r in _safetensors_reads(hub) if r[2] is None or not r[2].startswith("bytes=0-")
            and not r[2].startswith("bytes=8-")]


@pytest.fixture
def crawled(fake_hub, tmp_path, monkeypatch):
    """A store with the planner reference (four unbuilt zoo-named models) and the fake Hub crawled into it."""
    monkeypatch.setenv("MANDC_HOME", str(tmp_path / "home"))
    path = tmp_path / "graph.sqlite"
    with Store(path, reference=make_reference()) as st:
        summary = crawl(st, CrawlConfig(limit=10, backoff_s=0.01), sleep=lambda _: None, log=lambda _: None)
    nodes = {n.split("@")[0][4:]: n for n in summary["ok"]}
    assert set(nodes) == set(HUB)
    return {"path": path, "hub": fake_hub, "nodes": nodes}


def _measured_ranking(path, order: list[str]) -> None:
    """Records on the target for every model of the store, so that the ranking is measured: ``order`` best first."""
    with Store(path) as st:
        models = [m["ref"] for m in st.models()]
        rest = [m for m in models if m not in order]
        recs = [record(m, TARGET, s, 0.10 + 0.01 * i) for i, m in enumerate(order + rest) for s in (0, 1)]
        st.add_records(recs)


def test_crawl_plan_shortlist_skips_a_top_model_that_does_not_fit_and_downloads_no_weights(crawled, tmp_path):
    from huggingface_hub import constants

    from mandc.cli import app

    hub, nodes, path = crawled["hub"], crawled["nodes"], crawled["path"]
    hub.file_reads.clear()
    # each candidate's cheapest subject option, from its headers (a 1-byte budget: nothing fits)
    cheapest = {r: candidate_memory(nodes[r], "subject", 2, None, 1, "cpu") for r in HUB}
    assert all(not c["fits"] and c["method"] in ("ti", "zo-ti") for c in cheapest.values())
    big, small = max(HUB, key=lambda r: cheapest[r]["high_bytes"]), min(HUB, key=lambda r: cheapest[r]["high_bytes"])
    assert cheapest[big]["high_bytes"] > cheapest[small]["high_bytes"]
    budget = cheapest[big]["high_bytes"] - 1  # the biggest does not fit, the smallest does
    _measured_ranking(path, [nodes[big]] + [nodes[r] for r in HUB if r != big])  # the one that does not fit ranks first

    out = tmp_path / "plan"
    res = CliRunner().invoke(app, ["plan", TARGET, "--crawl", "--memory", str(budget), "--device", "cpu", "--goal",
                                   "subject", "--steps", "2", "--graph", str(path), "--out", str(out), "--json",
                                   "--max-params", "1e9", "--license", "mit", "--license", "apache-2.0"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout[res.stdout.index("{"):])
    cands = {c["model"]: c for c in plan["candidates"]}
    assert set(cands) == set(nodes.values())  # the crawled models only, not the reference's zoo models
    assert [c["model"] for c in plan["candidates"]][0] == nodes[big] and plan["recommendation"]["source"] == "measured"
    # every candidate: a verdict from its headers; the shortlist is the ranked ones that fit
    for r, n in nodes.items():
        m = cands[n]["memory"]
        assert set(m) == {"method", "bits", "high_bytes", "expected_bytes", "fits"} and m["method"] in ("ti", "zo-ti")
        assert cands[n]["feasible"] == m["fits"] == (m["high_bytes"] <= budget)
        assert cands[n]["params"] > 0 and cands[n]["params_of"] == "all components"
    assert not cands[nodes[big]]["feasible"] and cands[nodes[small]]["feasible"]
    assert plan["shortlist"] == [c["model"] for c in plan["candidates"] if c["feasible"]] and plan["shortlist"]
    assert plan["model"] == plan["shortlist"][0] != nodes[big] and plan["method"] in ("ti", "zo-ti")
    assert plan["reasons"][0].startswith(f"model {plan['model']}: ranked 2 of 3") or \
        plan["reasons"][0].startswith(f"model {plan['model']}: ranked 3 of 3")
    assert f"{nodes[big]} does not fit" in plan["reasons"][0]
    # license and lineage per candidate (from the card and the store's typed lineage edges)
    assert cands[nodes["tiny/sd"]]["license"] == "mit" and cands[nodes["tiny/pixart"]]["license"] == "apache-2.0"
    assert cands[nodes["tiny/sd-finetune"]]["lineage"] == [{"base": "hub:tiny/sd", "relation": "finetune"}]
    assert cands[nodes["tiny/sd"]]["lineage"] == []

    # nothing was downloaded: the safetensors were read by their headers only (ranged GETs), no weights cached
    reads = _safetensors_reads(hub)
    assert reads and all(m == "GET" and rng and rng.startswith("bytes=") for m, _, rng in reads), reads
    assert _downloads(hub) == []
    cached = [p.name for p in Path(constants.HF_HUB_CACHE).rglob("*") if p.is_file()]
    assert not [n for n in cached if n.endswith((".safetensors", ".bin"))]

    # the reports list license, lineage and the memory verdict per candidate
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "| license | lineage | params | memory" in md and "finetune of hub:tiny/sd" in md
    assert "apache-2.0" in md and "does not fit" in md and "Shortlist" in md
    assert 'id="shortlist"' in page and "finetune of hub:tiny/sd" in page and "<th>license</th>" in page
    for n in plan["shortlist"]:
        assert f"<code>{n}</code>" in page

    # a second plan of the same crawled models reads no header again (descriptions cached by commit)
    hub.file_reads.clear()
    again = Planner(path).plan(TARGET, memory=budget, device="cpu", goal="subject", steps=2, crawl=True)
    assert again.shortlist == plan["shortlist"] and _safetensors_reads(hub) == []


def test_crawl_filters_and_refusals(crawled, tmp_path):
    from mandc.cli import app
    from mandc.hub.select import crawled_candidates, parse_count

    nodes, path = crawled["nodes"], crawled["path"]
    with Store(path) as st:
        assert sorted(crawled_candidates(st)) == sorted(nodes.values())
        assert sorted(crawled_candidates(st, licenses="MIT")) == sorted([nodes["tiny/sd"], nodes["tiny/sd-finetune"]])
        assert crawled_candidates(st, licenses=["apache-2.0"]) == [nodes["tiny/pixart"]]
        sizes = {r["node"]: sum(w["params"] for w in r["info"]["hub"]["weights"].values())
                 for r in st.hub_repos(status="ok")}
        small = min(sizes.values())
        assert crawled_candidates(st, max_params=small) == [n for n, s in sizes.items() if s <= small]
        with pytest.raises(ValueError, match="no crawled Hub model passes the filter.*over"):
            crawled_candidates(st, max_params=small - 1)
    assert parse_count("1e9") == parse_count("1B") == 10**9 and parse_count("800M") == 8 * 10**8
    with pytest.raises(ValueError, match="parameter count"):
        parse_count("lots")

    def cli(*args):
        return CliRunner().invoke(app, ["plan", TARGET, "--memory", "8GiB", "--device", "cpu", "--graph", str(path),
                                        "--out", str(tmp_path / "p"), *args])

    for args, match in ((["--crawl", "--license", "gpl-3.0"], "no crawled Hub model passes the filter"),
                        (["--crawl", "--max-params", "10"], "over 10 parameters"),
                        (["--max-params", "1e9"], "add crawl"),
                        (["--crawl", "--candidates", nodes["tiny/sd"]], "not both"),
                        (["--crawl", "--max-params", "many"], "parameter count")):
        res = cli(*args)
        assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output, (args, res.output)
        assert len([x for x in res.output.strip().splitlines() if x.strip()]) <= 3, res.output
    with Store(tmp_path / "empty.sqlite", reference=False):
        pass
    with pytest.raises(PlanError, match="no crawled Hub models: run `mandc hub crawl`"):
        Planner(tmp_path / "empty.sqlite").plan(TARGET, memory="8GiB", device="cpu", crawl=True)


def test_candidates_hub_ref_without_revision_names_the_crawled_node(crawled):
    nodes, path = crawled["nodes"], crawled["path"]
    hub = crawled["hub"]
    hub.file_reads.clear()
    plan = Planner(path).plan(TARGET, memory="64GiB", device="cpu", goal="subject", steps=2,
                              candidates="hub:tiny/sd,hub:tiny/pixart")
    assert {c["model"] for c in plan.candidates} == {nodes["tiny/sd"], nodes["tiny/pixart"]}
    assert plan.shortlist == [c["model"] for c in plan.candidates] and plan.model == plan.shortlist[0]
    assert all(c["memory"]["fits"] and c["memory"]["method"] == "ti" for c in plan.candidates)
    assert _downloads(hub) == []


def test_report_escapes_license_lineage_and_verdicts(tmp_path):
    from mandc.plan import Plan
    from mandc.report import write_reports

    row = {"low_bytes": 1, "expected_bytes": 2, "high_bytes": 3, "fits": True, "bits": None, "terms": {}}
    cand = {"rank": 1, "model": "hub:<b>o</b>/m@1", "score": 0.5, "spread": None, "why": "", "evidence": [],
            "license": "<script>alert('lic')</script>", "params": 1000, "params_of": "all components",
            "lineage": [{"base": "hub:<img src=x onerror=alert(1)>", "relation": "finetune"}],
            "memory": {"method": "ti", "bits": None, "high_bytes": 3, "expected_bytes": 2, "fits": True}, "feasible": True}
    plan = Plan.from_json({"format": "mandc.Plan", "version": 1, "dataset": {"ref": "builtin:x", "fingerprint": "0"},
                           "candidates": [cand], "shortlist": [cand["model"]], "model": cand["model"], "bitplan": None,
                           "method": "ti", "config": {}, "memory": {"ti": row}, "budget_bytes": 10, "reasons": []})
    paths = write_reports(plan, tmp_path)
    for text in (paths["html"].read_text(), paths["markdown"].read_text()):
        assert "<script>" not in text and "<img src=x" not in text and "<b>o</b>" not in text
        assert "&lt;script&gt;alert(&#x27;lic&#x27;)&lt;/script&gt;" in text and "finetune of hub:&lt;img" in text
        assert "Shortlist" in text and "ti: high 3 B" in text
