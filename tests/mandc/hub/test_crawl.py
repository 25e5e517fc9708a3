"""``mandc.hub.crawl`` against the fake Hub: what is stored per repo, skips with reasons, lineage, faults
(429 Retry-After, 5xx, timeouts), incremental re-crawls and resuming a killed crawl."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mandc.hub import CrawlConfig, crawl, lineage_edges
from mandc.store import Store

FAST = dict(limit=10, backoff_s=0.01, timeout_s=5.0)


def _store(tmp_path):
    return Store(tmp_path / "graph.sqlite", reference=False)


def _api_calls(hub, kind: str) -> list[str]:
    """Paths of logged requests of one kind: listing, info (model_info), tree, resolve."""
    out = []
    for _, p in hub.requests:
        k = ("listing" if p == "/api/models" else "tree" if "/tree/" in p else "info" if p.startswith("/api/")
             else "resolve")
        if k == kind:
            out.append(p)
    return out


def test_crawl_stores_nodes_lineage_and_skips_with_faults_then_refetches_nothing(fake_hub, tmp_path):
    from profiler.modelinfo import feature_names

    hub = fake_hub
    hub.inject("GET", "/api/models/tiny/sd/revision", status=429, headers={"Retry-After": "2"})
    hub.inject("GET", "/api/models/tiny/pixart/revision", status=503, times=2)
    hub.inject("GET", "/api/models/tiny/sd-finetune/revision", delay=2.0)  # slower than the timeout
    hub.inject("GET", "/tiny/sd/resolve/", status=500)  # a safetensors header read (ranged GET)
    waits = []
    store = _store(tmp_path)
    summary = crawl(store, CrawlConfig(**FAST | {"timeout_s": 1.0}), sleep=waits.append, log=lambda _: None)

    sha = {r: hub.repos[r].sha for r in hub.repos}
    assert summary["failed"] == {} and summary["listed"] == 6 and summary["fetched"] == 6
    assert sorted(summary["ok"]) == sorted(f"hub:{r}@{sha[r]}" for r in ("tiny/sd", "tiny/pixart", "tiny/sd-finetune"))
    sk = summary["skipped"]
    assert set(sk) == {"tiny/sd-lora", "tiny/gated", "tiny/pickle-only"}
    assert sk["tiny/gated"].startswith("gated") and "403" in sk["tiny/gated"]
    assert sk["tiny/pickle-only"].startswith("pickle-only") and "unet/diffusion_pytorch_model.bin" in sk["tiny/pickle-only"]
    assert sk["tiny/sd-lora"].startswith("adapter")
    # 429 waited exactly Retry-After; 2×503 + 1×500 + 1 timeout backed off (bounded, doubling from 0.01)
    assert 2.0 in waits and summary["retries"] == len(waits) >= 5  # > 5 only if the busy machine timed out more
    assert all(w < 0.1 for w in waits if w != 2.0)

    # model nodes: the zoo's feature keys; header-only parameter counts; configs and card data
    nodes = {m["ref"]: m for m in store.models()}
    assert set(nodes) == set(summary["ok"])
    sd = nodes[f"hub:tiny/sd@{sha['tiny/sd']}"]
    assert sorted(sd["features"]) == sorted(feature_names())
    assert sd["name"] == "tiny/sd" and sd["features"]["is_dit"] == 0.0 and sd["features"]["width"] == 64.0
    hubinfo = sd["info"]["hub"]
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(hub.repos["tiny/sd"].folder / "unet"))
    assert hubinfo["weights"]["unet"]["params"] == sum(p.numel() for p in unet.parameters()) == sd["info"]["params"]
    assert hubinfo["weights"]["unet"]["dtypes"] == {"F32": hubinfo["weights"]["unet"]["params"]}
    assert set(hubinfo["weights"]) == {"unet", "vae", "text_encoder"}
    assert hubinfo["pipeline_class"] == "StableDiffusionPipeline" and hubinfo["license"] == "mit"
    assert hubinfo["denoiser"]["block_out_channels"] == [32, 64] and hubinfo["denoiser"]["cross_attention_dim"] == 32
    assert hubinfo["prediction_type"] == "epsilon" and hubinfo["downloads"] == 600
    pix = nodes[f"hub:tiny/pixart@{sha['tiny/pixart']}"]
    assert pix["features"]["is_dit"] == 1.0 and pix["info"]["hub"]["datasets"] == ["tiny/shapes"]
    # nothing but the small JSON files and the card came down (no weights in the HF cache)
    from huggingface_hub import constants

    cached = [p.name for p in Path(constants.HF_HUB_CACHE).rglob("*") if p.is_file()]
    assert cached and not [n for n in cached if n.endswith((".safetensors", ".bin"))]

    # typed lineage: finetune from the card's base_model (no relation given), adapter from the card
    edges = {(e["model"].split("@")[0], e["base"], e["relation"]) for e in store.lineage()}
    assert edges == {("hub:tiny/sd-finetune", "hub:tiny/sd", "finetune"), ("hub:tiny/sd-lora", "hub:tiny/sd", "adapter")}
    states = {r["repo_id"]: r for r in store.hub_repos()}
    assert states["tiny/gated"]["status"] == "skipped" and states["tiny/gated"]["sha"] == sha["tiny/gated"]

    # second crawl: the listing only, nothing refetched, nothing duplicated
    hub.requests.clear()
    again = crawl(store, CrawlConfig(**FAST), sleep=waits.append, log=lambda _: None)
    assert again["fetched"] == 0 and again["unchanged"] == 6 and again["ok"] == []
    assert _api_calls(hub, "info") == [] and _api_calls(hub, "resolve") == [] and len(_api_calls(hub, "listing")) == 3
    assert len(store.models()) == 3 and len(store.lineage()) == 2

    # a new commit of tiny/sd: only it is fetched; its old node goes (nobody measured it)
    readme = hub.repos["tiny/sd"].folder / "README.md"
    readme.write_text(readme.read_text() + "\nNow with more shapes.\n")
    hub.repos["tiny/sd"].refresh()
    hub.requests.clear()
    third = crawl(store, CrawlConfig(**FAST), sleep=waits.append, log=lambda _: None)
    assert third["fetched"] == 1 and third["ok"] == [f"hub:tiny/sd@{hub.repos['tiny/sd'].sha}"]
    assert {p.split("/")[3] + "/" + p.split("/")[4] for p in _api_calls(hub, "info")} == {"tiny/sd"}
    refs = {m["ref"] for m in store.models()}
    assert len(refs) == 3 and f"hub:tiny/sd@{sha['tiny/sd']}" not in refs


def test_killed_crawl_resumes_and_a_failing_repo_is_retried_next_time(fake_hub, tmp_path):
    hub = fake_hub
    store = _store(tmp_path)
    hub.inject("GET", "/api/models/tiny/sd-finetune/revision", status=503)

    def killed(_):
        raise KeyboardInterrupt  # the crawl dies at its first retry, on the third repo

    with pytest.raises(KeyboardInterrupt):
        crawl(store, CrawlConfig(**FAST), sleep=killed, log=lambda _: None)
    assert sorted(r["repo_id"] for r in store.hub_repos()) == ["tiny/pixart", "tiny/sd"]

    hub.inject("GET", "/api/models/tiny/gated/revision", status=500, times=10)  # down for longer than we retry
    hub.requests.clear()
    resumed = crawl(store, CrawlConfig(**FAST | {"max_retries": 2}), sleep=lambda _: None, log=lambda _: None)
    assert resumed["unchanged"] == 2 and resumed["fetched"] == 3
    assert list(resumed["failed"]) == ["tiny/gated"] and "500" in resumed["failed"]["tiny/gated"]
    assert len(_api_calls(hub, "info")) == 3 + 3  # three repos once, tiny/gated 1 + 2 retries
    assert store.hub_repo("tiny/gated") is None  # not recorded: tried again next time

    hub.faults.clear()
    last = crawl(store, CrawlConfig(**FAST), sleep=lambda _: None, log=lambda _: None)
    assert last["fetched"] == 1 and last["skipped"] == {"tiny/gated": last["skipped"]["tiny/gated"]}
    assert len(store.hub_repos()) == 6 and len(store.models()) == 3


def test_lineage_edges_from_card_and_tags():
    assert lineage_edges({"base_model": "a/b"}, []) == [{"base": "hub:a/b", "relation": "finetune"}]
    assert lineage_edges({"base_model": ["a/b", "c/d"], "base_model_relation": "merge"}, []) == [
        {"base": "hub:a/b", "relation": "merge"}, {"base": "hub:c/d", "relation": "merge"}]
    assert lineage_edges({}, ["base_model:quantized:a/b", "base_model:a/b", "diffusers"]) == [
        {"base": "hub:a/b", "relation": "quantized"}]
    assert lineage_edges({"base_model": "a/b", "base_model_relation": "adapter"}, ["base_model:finetune:a/b"]) == [
        {"base": "hub:a/b", "relation": "adapter"}]
    zoo_card = {"base_model": "zoo:unet-s-broad", "base_model_relation": "finetune"}  # as zoo cards write it
    assert lineage_edges(zoo_card, []) == [{"base": "zoo:unet-s-broad", "relation": "finetune"}]


def test_cli_crawl_json(fake_hub, tmp_path):
    from typer.testing import CliRunner

    from mandc.cli import app

    res = CliRunner().invoke(app, ["hub", "crawl", "--endpoint", fake_hub.url, "--limit", "3", "--graph",
                                   str(tmp_path / "g.sqlite"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["listed"] == 3 and len(summary["ok"]) == 3 and summary["endpoint"] == fake_hub.url
    with Store(tmp_path / "g.sqlite") as st:
        assert {m["name"] for m in st.models() if m["ref"].startswith("hub:")} == {"tiny/sd", "tiny/pixart",
                                                                                  "tiny/sd-finetune"}
