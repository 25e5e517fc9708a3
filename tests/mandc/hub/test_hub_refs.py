"""``hub:org/name[@rev]`` model references against the fake Hub: crawl → profile one job on the crawled
node → a record in the graph; only safetensors of the needed components are downloaded; offline reuse."""
from __future__ import annotations

from pathlib import Path

import pytest

from finetune.load import load_model
from finetune.refs import ModelRefError, parse_model_ref
from mandc.hub import CrawlConfig, crawl
from mandc.store import Store


def test_parse_hub_refs():
    assert parse_model_ref("hub:org/name@abc123") == parse_model_ref("hub:org/name@abc123")
    r = parse_model_ref("hub:org/name@abc123")
    assert (r.kind, r.value, r.revision, str(r)) == ("hub", "org/name", "abc123", "hub:org/name@abc123")
    assert parse_model_ref("hub:org/name").revision is None and parse_model_ref("org/name").kind == "hub"
    with pytest.raises(ModelRefError, match="bad Hub reference"):
        parse_model_ref("hub:no-slash")


def test_crawl_then_profile_a_hub_model_then_offline(fake_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from profiler.jobs import ProfileJob, run_job

    store = Store(tmp_path / "graph.sqlite")  # seeded from the shipped reference, like a user's store
    summary = crawl(store, CrawlConfig(limit=10, backoff_s=0.01), sleep=lambda _: None, log=lambda _: None)
    node = next(n for n in summary["ok"] if n.startswith("hub:tiny/sd@"))

    job = ProfileJob(node, "builtin:shapes_circles", "full", {"steps": 2, "batch_size": 4, "lr": 1e-3})
    rec = run_job(job, tmp_path / "work", cache=False)
    assert rec.ok, rec.error
    store.add_records([rec.to_dict()])
    graph = store.graph()
    assert node in graph.scores("builtin:shapes_circles")  # the crawled node now has a performance edge

    # what came down: configs, tokenizer and safetensors of unet/vae/text_encoder; no pickles, no other parts
    snap = Path(constants.HF_HUB_CACHE) / "models--tiny--sd" / "snapshots" / node.split("@")[1]
    got = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())
    assert "unet/diffusion_pytorch_model.safetensors" in got and "tokenizer/tokenizer_config.json" in got, got
    assert not [f for f in got if f.endswith((".bin", ".ckpt", ".pt"))]
    assert {f.split("/")[0] for f in got if "/" in f} <= {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}

    load_model("hub:tiny/sd")  # the default branch too, so it is cached by name

    # finetune.run takes the hub: reference as it is (the Python API behind `mandc finetune --model`)
    from finetune.runner import run

    res = run(node, "builtin:shapes_circles", "lora", {"steps": 2, "batch_size": 4}, tmp_path / "ft")
    assert res.model == node and res.steps == 2 and res.heldout_loss_after is not None

    # the pickle-only and the gated repos fail with a clear reason (nothing unpickled)
    with pytest.raises(ModelRefError, match="pickle-only"):
        load_model("hub:tiny/pickle-only")
    with pytest.raises(ModelRefError, match="gated"):
        load_model("hub:tiny/gated")

    # offline, server gone: the warm cache serves both spellings; an uncached model says why
    fake_hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    m = load_model(node)
    assert type(m.denoiser).__name__ == "UNet2DConditionModel" and m.resolution == 16
    load_model("hub:tiny/sd")
    with pytest.raises(ModelRefError, match="offline"):
        load_model("hub:tiny/sd-finetune")


def test_t2imodel_from_pretrained_takes_a_folder_only(tmp_path):
    import json

    from finetune.model import T2IModel

    (tmp_path / "zoo-like").mkdir()
    (tmp_path / "zoo-like" / "model_index.json").write_text(json.dumps({"_class_name": "MandcPixelPipeline"}))
    with pytest.raises(ModelRefError, match="load_model"):
        T2IModel.from_pretrained(tmp_path / "zoo-like")
    with pytest.raises(ModelRefError, match="no model_index.json"):
        T2IModel.from_pretrained("zoo:unet-xs-gradients")
