"""The plan: memory sizes, method choice, the plan JSON and its bad files, make → run → feedback on tiny
local models, the reports (escaping, a real headless browser), and the one feedback path of `mandc run`,
`mandc profile` and `mandc finetune --feedback`."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from planner_reference import DATASETS, dataset_lines, record
from typer.testing import CliRunner

from mandc.plan import (BIT_CHOICES, GOALS, NothingFitsError, Plan, PlanError, choose_method, fmt_bytes,
                        parse_memory)
from mandc.planner import Planner
from mandc.store import Store

CARD = """---
name: {name}
mixture: {{{family}: 1.0}}
steps: 10
description: "A tiny test model. <script>alert('card')</script>"
---
A tiny test model.
"""
TARGET = "builtin:shapes_triangles"   # in the graph with similarity edges only (never profiled)


# ------------------------------------------------------------------------------------------ units
def test_parse_memory_units_and_refusals():
    assert parse_memory("8GiB") == 8 * 2**30
    assert parse_memory("8 GB") == 8 * 10**9
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory("1.5G") == int(1.5 * 2**30)
    assert parse_memory(1234) == 1234
    for bad in ("", "eight GiB", "8 parsecs", "-1GiB", 0, True):
        with pytest.raises(PlanError, match="memory budget"):
            parse_memory(bad)


def _mem(**highs):
    return {m: {"low_bytes": h // 2, "expected_bytes": int(h * 0.8), "high_bytes": h, "fits": False,
                "bits": 4 if m in ("peqa", "tuneqdm") else None, "terms": {}} for m, h in highs.items()}


MEM = dict(full=900, lora=500, **{"qta-lora": 480}, peqa=300, tuneqdm=310, ti=450, **{"zo-ti": 200})


def _fit(mem, budget):
    for r in mem.values():
        r["fits"] = r["high_bytes"] <= budget
    return mem


def test_choose_method_takes_the_best_quality_that_fits_and_says_why_not_the_others():
    mem = _fit(_mem(**MEM), 400)
    chosen, reasons, fallback = choose_method(mem, 400, "domain")
    assert chosen == "tuneqdm" and fallback == ["peqa"]
    text = "\n".join(reasons)
    assert "not full: its high estimate" in text and "not peqa: it fits, but tuneqdm ranks above it" in text
    assert "not ti: it is a subject method" in text
    assert len(reasons) == len(mem)  # one line for the chosen method and one per other method
    assert choose_method(_fit(_mem(**MEM), 10**6), 10**6, "domain")[0] == "full"
    assert choose_method(_fit(_mem(**MEM), 10**6), 10**6, "subject")[0] == "ti"
    assert choose_method(_fit(_mem(**MEM), 300), 300, "subject")[0] == "zo-ti"


def test_nothing_fits_names_the_smallest_budget_and_how():
    with pytest.raises(NothingFitsError, match=r"smallest budget that fits is .* \(300 bytes\), with peqa at 4 bits") as e:
        choose_method(_fit(_mem(**MEM), 100), 100, "domain")
    assert e.value.smallest == (300, "peqa", 4)


# ------------------------------------------------------------------------------------------ a graph of local models
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two tiny local models (UNet, PixArt) with cards, and a store of nine catalog datasets with their real
    feature vectors, six of them profiled with both models (synthetic losses)."""
    from tiny_models import tiny_model

    from profiler.modelinfo import describe_model

    root = tmp_path_factory.mktemp("plan-world")
    models = []
    for kind, fam in (("unet", "shapes"), ("dit", "gradients")):
        folder = root / f"tiny-{kind}"
        tiny_model(kind, seed=1).save_pretrained(folder)
        (folder / "README.md").write_text(CARD.format(name=f"tiny-{kind}", family=fam))
        line = describe_model(str(folder))
        models.append({**line, "ref": str(folder)})
    records = []
    for fam, names in DATASETS.items():
        for name in names[:2]:
            for i, m in enumerate(models):
                good = (i == 0) == (fam == "shapes")
                for s in (0, 1):
                    records.append(record(m["ref"], f"builtin:{name}", s, 0.10 if good else 0.14))
    return {"root": root, "models": [m["ref"] for m in models],
            "reference": (records, models, [dict(d) for d in dataset_lines()])}


@pytest.fixture
def store_path(tmp_path, world, monkeypatch):
    # one $MANDC_HOME for the module: its memory-estimate and selector caches serve every test
    monkeypatch.setenv("MANDC_HOME", str(world["root"] / "home"))
    path = tmp_path / "graph.sqlite"
    Store(path, reference=world["reference"])
    return path


def _budget_for_quantized_only(plan_memory) -> int:
    """A budget that the best quantized domain method fits and full fine-tuning does not."""
    q = min(plan_memory[m]["high_bytes"] for m in ("tuneqdm", "peqa"))
    assert q < plan_memory["full"]["high_bytes"], "a quantized method must need less than full fine-tuning"
    return plan_memory["full"]["high_bytes"] - 1


def test_plan_round_trip_run_and_feedback(store_path, world, tmp_path):
    planner = Planner(store_path)
    probe = planner.plan(TARGET, memory="64GiB", device="cpu", steps=3)
    assert probe.method == "full" and probe.model in world["models"]
    assert set(probe.memory) >= set(GOALS["domain"]) | set(GOALS["subject"])
    for r in probe.memory.values():
        assert r["low_bytes"] <= r["expected_bytes"] <= r["high_bytes"] and r["fits"]

    budget = _budget_for_quantized_only(probe.memory)
    lines: list[str] = []
    plan = planner.plan(TARGET, memory=budget, device="cpu", steps=3, log=lines.append)
    assert plan.method in ("tuneqdm", "peqa"), plan.reasons
    # the reason quotes the estimate with the bit plan, the row the report shows
    assert any(r.startswith(f"method {plan.method}:") and fmt_bytes(plan.memory[plan.method]["high_bytes"]) in r
               for r in plan.reasons), plan.reasons
    assert not plan.memory["full"]["fits"] and plan.memory[plan.method]["high_bytes"] <= budget
    assert plan.memory[plan.method]["bits"] in BIT_CHOICES and plan.config["bits"] == plan.memory[plan.method]["bits"]
    assert plan.bitplan and plan.bitplan["format"] == "mandc.bitplan" and plan.bitplan["layers"]
    # the log names the allocator that made the bit plan (the one the plan's settings record)
    allocator = plan.bitplan["settings"]["allocator"]
    assert any(f"with the {allocator} allocator" in x for x in lines) and any("ranking" in x for x in lines)
    assert plan.dataset["ref"] == TARGET and len(plan.dataset["fingerprint"]) == 16
    assert [c["model"] for c in plan.candidates][0] == plan.model and plan.predicted_score == pytest.approx(plan.candidates[0]["score"], abs=1e-4)

    # JSON round trip: the keys other tools read, and equality after load
    out = tmp_path / "p"
    path = plan.save(out / "plan.json")
    d = json.loads(path.read_text())
    for key in ("version", "dataset", "candidates", "model", "bitplan", "method", "config", "memory", "budget_bytes",
                "reasons"):
        assert key in d
    assert set(d["memory"][plan.method]) >= {"low_bytes", "expected_bytes", "high_bytes", "fits"}
    assert Plan.load(path).to_json() == plan.to_json()

    # run: fine-tune as planned, the peak beside the estimate, a record in the graph
    res = Plan.load(path).run(out, graph=store_path)
    assert res["steps"] == 3 and res["measured_peak_bytes"] > 0
    assert res["estimate_high_bytes"] == plan.memory[plan.method]["high_bytes"]
    assert res["within_high"] == (res["measured_peak_bytes"] <= res["estimate_high_bytes"])
    assert (out / "bitplan.json").is_file() and (out / "samples.png").is_file()
    assert json.loads((out / "plan.json").read_text())["result"]["job_id"] == res["job_id"]
    recs = Store(store_path).records(dataset=TARGET)
    assert [r["job_id"] for r in recs] == [res["job_id"]] and recs[0]["job"]["method"] == plan.method

    # the next plan uses the new edge
    again = Planner(store_path).plan(TARGET, memory=budget, device="cpu", steps=3)
    measured = {c["model"]: c["measured_loss"] for c in again.candidates}
    assert measured[plan.model] == pytest.approx(res["heldout_loss_after"])
    assert any("has measurements for 1 of 2 models" in n for n in again.recommendation["notes"])

    # the reports: sections present, card strings escaped
    page = (out / "report.html").read_text()
    for sec in ("leaderboard", "memory", "bits", "method", "run"):
        assert f'<section id="{sec}">' in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    md = (out / "report.md").read_text()
    assert "## Run" in md and "<script>" not in md


def test_nothing_fits_from_the_planner(store_path):
    with pytest.raises(NothingFitsError, match="smallest budget that fits is"):
        Planner(store_path).plan(TARGET, memory="1MiB", device="cpu")


def test_candidates_restrict_and_unknown_candidates_are_refused(store_path, world):
    plan = Planner(store_path).plan(TARGET, memory="64GiB", device="cpu", candidates=[world["models"][1]])
    assert plan.model == world["models"][1] and [c["model"] for c in plan.candidates] == [world["models"][1]]
    with pytest.raises(PlanError, match="not models of the matching graph"):
        Planner(store_path).plan(TARGET, memory="64GiB", device="cpu", candidates=["zoo:nope"])


# ------------------------------------------------------------------------------------------ bad plan files
def _plan_dict():
    return {"format": "mandc.Plan", "version": 1, "dataset": {"ref": "builtin:x", "fingerprint": "0" * 16},
            "candidates": [], "model": "zoo:unet-xs-broad", "bitplan": None, "method": "lora", "config": {},
            "memory": {}, "budget_bytes": 1, "reasons": []}


@pytest.mark.parametrize("text, match", [
    ("not json {", "is not valid JSON"),
    ("\xff\xfe", "is not valid JSON"),
    ('["a list"]', "is not a mandc plan"),
    (json.dumps({**_plan_dict(), "version": 99}), "version 99; this mandc reads version 1"),
    (json.dumps({k: v for k, v in _plan_dict().items() if k != "memory"}), "lacks the field"),
    (json.dumps({**_plan_dict(), "budget_bytes": "8GiB"}), "'budget_bytes' must be a int"),
    (json.dumps({**_plan_dict(), "method": "magic"}), "not a registered method"),
])
def test_bad_plan_files_give_one_clear_error(tmp_path, text, match):
    p = tmp_path / "plan.json"
    p.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(PlanError, match=match) as e:
        Plan.load(p)
    assert str(p) in str(e.value)
    res = CliRunner().invoke(_app(), ["run", str(p)])
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        Plan.load(tmp_path / "nope.json")


def _app():
    from mandc.cli import app

    return app


# ------------------------------------------------------------------------------------------ reports
def _fake_plan(**kw) -> Plan:
    d = _plan_dict()
    d.update(memory={"lora": {"low_bytes": 2**29, "expected_bytes": 2**30, "high_bytes": 3 * 2**29, "fits": True,
                              "bits": None, "terms": {}},
                     "full": {"low_bytes": 2**31, "expected_bytes": 2**32, "high_bytes": 5 * 2**30, "fits": False,
                              "bits": None, "terms": {}}},
             budget_bytes=2**31, candidates=[{"rank": 1, "model": "zoo:<b>m</b>", "score": 0.9, "spread": 0.1,
                                              "why": "best on <script>alert(1)</script> & more", "evidence": []}],
             reasons=["method lora: <img src=x onerror=alert(2)>"], model="zoo:<b>m</b>")
    d.update(kw)
    return Plan.from_json(d)


def test_plan_and_report_name_the_bit_allocator(tmp_path):
    from mandc.report import write_reports

    bitplan = {"format": "mandc.bitplan", "version": 1, "layers": {"conv_in": {"w_bits": 8, "a_bits": 8}},
               "usage": {"avg_bits": 8.0}, "settings": {"allocator": "combined"}}
    plan = _fake_plan(bitplan=bitplan)
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))).bitplan["settings"]["allocator"] == "combined"
    assert any("allocator combined" in line for line in plan.summary())
    paths = write_reports(plan, tmp_path)
    assert "allocator combined" in paths["markdown"].read_text()
    assert "allocator <code>combined</code>" in paths["html"].read_text()


def test_report_escapes_every_string(tmp_path):
    from mandc.report import write_reports

    paths = write_reports(_fake_plan(), tmp_path)
    page = paths["html"].read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "<img src=x" not in page and "<b>m</b>" not in page
    md = paths["markdown"].read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert fmt_bytes(2**31) in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_a_headless_browser(tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium where apt-get can)")
    from PIL import Image

    from mandc.report import write_reports

    page = write_reports(_fake_plan(), tmp_path)["html"]
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--hide-scrollbars"]
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100, "the screenshot is blank"
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    for sec in ("leaderboard", "memory", "bits", "method"):
        assert f'id="{sec}"' in dom
    assert "<script>alert" not in dom and "&lt;script&gt;alert(1)" in dom


# ------------------------------------------------------------------------------------------ one feedback path
def test_profile_a_new_folder_then_recommend_says_measured(store_path, world, tmp_path):
    from data import load_builtin, write_imagefolder

    folder = write_imagefolder(load_builtin("shapes_polygons", n=10), tmp_path / "my shapes")
    runner = CliRunner()
    res = runner.invoke(_app(), ["profile", "--models", ",".join(world["models"]), "--datasets", str(folder),
                                 "--steps", "2", "--workers", "1", "--graph", str(store_path),
                                 "--campaign-dir", str(tmp_path / "camp")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(_app(), ["recommend", str(folder), "--graph", str(store_path), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["source"] == "measured" and rec["dataset"] == str(folder.resolve())


def test_finetune_feedback_adds_a_record(store_path, world, tmp_path):
    res = CliRunner().invoke(_app(), ["finetune", "--model", world["models"][0], "--data", "builtin:digits_inverted",
                                      "--method", "lora", "--steps", "2", "--out", str(tmp_path / "ft"), "--feedback",
                                      "--graph", str(store_path)])
    assert res.exit_code == 0, res.output
    recs = Store(store_path).records(dataset="builtin:digits_inverted")
    assert len(recs) == 1 and recs[0]["job"]["method"] == "lora" and recs[0]["job"]["model"] == world["models"][0]
    rec = Planner(store_path).recommend("builtin:digits_inverted")
    assert rec.entries and any(e.measured_loss is not None for e in rec.entries)


def test_budgeted_probe_on_a_folder_reranks_keeps_probe_records_and_reuses_them(store_path, world, tmp_path):
    """`recommend --probe-budget`: successive halving over the graph's top models on a folder of images; the
    runs become probe records in the store, which leave the graph (and its cache key) alone and answer a repeat."""
    from data import load_builtin, write_imagefolder

    folder = write_imagefolder(load_builtin("shapes_polygons", n=10), tmp_path / "my shapes")
    store = Store(store_path)
    key = store.content_hash()
    lines: list[str] = []
    rec = Planner(store_path).recommend(str(folder), probe_budget=10, probe_top=2, device="cpu", log=lines.append)
    pb = rec.probe_budget
    assert rec.source == "probed" and pb["rounds"] == [[2, 5]] and pb["steps"] == 10
    assert pb["jobs"] == 2 and pb["reused"] == 0 and sum("fine-tuning" in x for x in lines) == 2
    losses = {e.model: e.probe_runs["5"] for e in rec.entries}
    assert set(losses) == set(world["models"])
    assert rec.best == min(losses, key=losses.get) and [e.rank for e in rec.entries] == [1, 2]
    assert rec.notes[0].startswith("budgeted probe (10 steps): 2 × 5 steps")
    assert list(rec.leaderboard()["model"]) == [e.model for e in rec.top] and "probe_s5" in rec.leaderboard()

    ref = str(folder.resolve())
    probes = Store(store_path).records(dataset=ref)
    assert len(probes) == 2 and all(r["purpose"] == "probe" and r["status"] == "ok" for r in probes)
    assert {r["job"]["config"]["steps"] for r in probes} == {5} and {r["job"]["seed"] for r in probes} == {2}
    assert sorted(round(r["metrics"]["heldout_loss"], 6) for r in probes) == sorted(losses.values())
    # history, not performance: the graph and the key of every cache are as before
    assert Store(store_path).content_hash() == key and ref not in Store(store_path).graph().datasets

    res = CliRunner().invoke(_app(), ["recommend", str(folder), "--graph", str(store_path), "--probe-budget", "10",
                                      "--probe-top", "2", "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["source"] == "probed" and again["probe_budget"]["reused"] == 2 and again["best"] == rec.best
    assert "2 reused from the store" in again["notes"][0]


def test_budgeted_probe_refuses_bad_budgets_and_loaded_datasets(store_path):
    from data import load_builtin

    planner = Planner(store_path)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="probe_budget must be a positive number of training steps"):
            planner.recommend(TARGET, probe_budget=bad)
    with pytest.raises(ValueError, match="probe_top must be an integer ≥ 2"):
        planner.recommend(TARGET, probe_budget=10, probe_top=1)
    with pytest.raises(ValueError, match="need a dataset reference"):
        planner.recommend(load_builtin("shapes_polygons", n=4), probe_budget=10)
    rec = planner.recommend(TARGET, probe_budget=4, probe_top=2)  # cannot give two models 5 steps each
    assert rec.source == "predicted" and rec.probe_budget["jobs"] == 0
    assert any("nothing was probed" in n for n in rec.notes)


def test_plan_with_a_budgeted_probe_takes_its_winner_and_says_so(store_path, world):
    lines: list[str] = []
    plan = Planner(store_path).plan(TARGET, memory="64GiB", device="cpu", steps=3, probe_budget=10, probe_top=2,
                                    log=lines.append)
    pb = plan.recommendation["probe_budget"]
    assert pb["jobs"] == 2 and pb["rounds"] == [[2, 5]] and set(pb["order"]) == set(world["models"])
    losses = {m: v["5"] for m, v in pb["losses"].items()}
    assert plan.model == pb["order"][0] == min(losses, key=losses.get)
    assert plan.reasons[0].startswith(f"model {plan.model}: won a budgeted probe of 10 training steps")
    assert any(x.startswith("probe: fine-tuning") for x in lines)
    with pytest.raises(PlanError, match="probe_budget must be a positive number"):
        Planner(store_path).plan(TARGET, memory="64GiB", device="cpu", probe_budget=0)
