"""The reference zoo: the spec table, building (tiny specs, few steps) into a temporary MANDC_HOME,
loading via ``zoo:NAME``, the card, determinism, atomicity and error messages."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from finetune import zoo
from finetune.load import load_model
from finetune.pipeline import MandcPixelPipeline
from finetune.refs import ModelRefError
from finetune.zoo import builder
from finetune.zoo.specs import SCHEDULER_CONFIG, ZOO, ZooSpec, dit, unet

TINY = {
    "test-unet": ZooSpec("test-unet", "unet", unet((8, 16), groups=4, head_dim=8), {"shapes": 2, "gradients": 1},
                         steps=3, batch_size=4, lr=1e-3, seed=7, description="test UNet", per_dataset=6,
                         warmup_steps=1),
    "test-dit": ZooSpec("test-dit", "dit", dit(32, 1, heads=2, patch=4), {"digits": 1}, steps=3, batch_size=4,
                        lr=1e-3, seed=8, description="test PixArt", per_dataset=6, warmup_steps=1),
}
CHILD = ZooSpec("test-unet-digits", "unet", unet((8, 16), groups=4, head_dim=8), {"digits": 1}, steps=2,
                batch_size=4, lr=1e-3, seed=9, description="test descendant", per_dataset=6, warmup_steps=1,
                parent="test-unet")


@pytest.fixture
def tiny_zoo(mandc_home, monkeypatch):
    for spec in [*TINY.values(), CHILD]:
        monkeypatch.setitem(ZOO, spec.name, spec)
    monkeypatch.setattr(builder, "GRID_PROMPTS", 4)
    monkeypatch.setattr(builder, "GRID_STEPS", 2)
    return mandc_home


def _weights(name: str) -> dict:
    sub = "unet" if ZOO[name].family == "unet" else "transformer"
    return load_file(str(zoo.zoo_path(name) / sub / "diffusion_pytorch_model.safetensors"))


def test_zoo_table():
    specs = zoo.list_zoo()
    assert len(specs) >= 10 and len({s.name for s in specs}) == len(specs)
    assert sum(s.family == "dit" for s in specs) >= 2
    for s in specs:
        assert s.denoiser["sample_size"] == 32 and s.denoiser["in_channels"] == s.denoiser["out_channels"] == 3
    params = {s.name: zoo.spec_parameters(s) for s in specs}
    assert max(params.values()) >= 8 * min(params.values())  # capacities really differ
    assert len({tuple(sorted(s.mixture.items())) for s in specs}) >= 6  # and so do mixtures
    assert SCHEDULER_CONFIG["num_train_timesteps"] == 1000  # one schedule for the whole zoo
    # the meta-device count is the real one
    from diffusers import PixArtTransformer2DModel

    small_dit = min((s for s in specs if s.family == "dit"), key=lambda s: params[s.name])
    assert params[small_dit.name] == sum(p.numel() for p in PixArtTransformer2DModel(**small_dit.denoiser).parameters())


def test_build_both_kinds_and_load_via_zoo_ref(tiny_zoo):
    calls = []
    for name in TINY:
        assert not zoo.is_built(name)
        path = zoo.build(name, progress=lambda d, n: calls.append((d, n)))
        assert path == tiny_zoo / "zoo" / name and zoo.is_built(name)
    assert calls[:3] == [(1, 3), (2, 3), (3, 3)]
    assert not list((tiny_zoo / "zoo").glob(".test-*.build-*"))  # no temp folders left

    index = json.loads((zoo.zoo_path("test-unet") / "model_index.json").read_text())
    assert index["_class_name"] == "MandcPixelPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["transformer"] == [None, None]
    assert index["text_encoder"] == ["transformers", "BertModel"]

    for name, cls in [("test-unet", "UNet2DConditionModel"), ("test-dit", "PixArtTransformer2DModel")]:
        model = load_model(f"zoo:{name}")
        assert isinstance(model.pipeline, MandcPixelPipeline) and type(model.denoiser).__name__ == cls
        assert model.vae is None and model.resolution == 32 and model.max_prompt_tokens == 24
        assert model.encode_prompt(["a red circle"]).shape == (1, 24, 384)
        imgs = model.sample(["a red circle", "a digit"], steps=2)
        assert [i.size for i in imgs] == [(32, 32), (32, 32)]
        x = torch.zeros(2, 3, 32, 32)
        assert model.training_loss({"pixel_values": x, "prompts": ["a", "b"]}).ndim == 0

        card = zoo.load_card(name)
        spec = TINY[name]
        total = sum(spec.mixture.values())
        assert card["mixture"] == {k: round(v / total, 4) for k, v in spec.mixture.items()}
        assert card["parameters"]["denoiser"] == model.num_parameters("denoiser")
        assert card["steps"] == 3 and card["seed"] == spec.seed and card["name"] == name
        assert card["datasets"] and all(d.split("_")[0] in spec.mixture for d in card["datasets"])
        text = (zoo.zoo_path(name) / "README.md").read_text()
        assert f"{card['parameters']['denoiser']:,} parameters" in text and "mixture:" in text
        grid = Image.open(zoo.zoo_path(name) / "samples.png")
        assert grid.size[0] > 96  # 4 upscaled 32-px samples

    # the pipeline's own __call__ samples too
    out = MandcPixelPipeline.from_pretrained(str(zoo.zoo_path("test-dit")))("a digit", num_inference_steps=2)
    assert len(out.images) == 1 and out.images[0].size == (32, 32)

    # both models share one stored copy of the MiniLM weights, through hard links
    te = [zoo.zoo_path(n) / "text_encoder" / "model.safetensors" for n in TINY]
    assert os.path.samefile(te[0], te[1])
    assert not list(zoo.zoo_path("test-unet").glob("text_encoder/*.link"))
    with pytest.raises(ValueError, match="zoo cache"):
        load_model("zoo:test-unet").save_pretrained(zoo.zoo_path("test-unet"))


def test_build_is_deterministic_and_cached(tiny_zoo):
    zoo.build("test-unet")
    first = _weights("test-unet")
    mtime = (zoo.zoo_path("test-unet") / "README.md").stat().st_mtime_ns
    assert zoo.build("test-unet") == zoo.zoo_path("test-unet")  # cached: not rebuilt
    assert (zoo.zoo_path("test-unet") / "README.md").stat().st_mtime_ns == mtime
    zoo.build("test-unet", force=True)
    second = _weights("test-unet")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    zoo.build("test-unet", steps=1)  # a different step count rebuilds
    assert zoo.load_card("test-unet")["steps"] == 1
    assert any(not torch.equal(first[k], v) for k, v in _weights("test-unet").items())


def test_descendant_starts_from_its_parent(tiny_zoo):
    zoo.build("test-unet-digits", steps=0)  # builds the parent first; no own steps: weights are the parent's
    assert zoo.is_built("test-unet")
    parent, child = _weights("test-unet"), _weights("test-unet-digits")
    assert all(torch.equal(parent[k], child[k]) for k in parent)
    zoo.build("test-unet-digits", force=True)  # now with its own 2 steps
    assert any(not torch.equal(parent[k], v) for k, v in _weights("test-unet-digits").items())
    card = zoo.load_card("test-unet-digits")
    assert card["parent"] == "test-unet" and card["total_steps"] == 3 + 2
    assert (card["base_model"], card["base_model_relation"]) == ("zoo:test-unet", "finetune")
    assert [(s["model"], s["steps"]) for s in card["lineage"]] == [("test-unet", 3), ("test-unet-digits", 2)]
    assert card["lineage"][0]["mixture"] == zoo.load_card("test-unet")["mixture"]
    assert "Initialised from** `zoo:test-unet`" in (zoo.zoo_path("test-unet-digits") / "README.md").read_text()


def test_lineage_is_checked():
    from finetune.zoo.specs import check_lineage

    with pytest.raises(ValueError, match="not in the zoo"):
        check_lineage({"a": CHILD})
    other = ZooSpec("test-unet", "unet", unet((8, 8), groups=4, head_dim=8), {"digits": 1}, 1, 1, 1e-3, 0, "x")
    with pytest.raises(ValueError, match="denoiser differs"):
        check_lineage({"test-unet": other, CHILD.name: CHILD})
    loop = ZooSpec("test-unet", "unet", CHILD.denoiser, {"digits": 1}, 1, 1, 1e-3, 0, "x", parent=CHILD.name)
    with pytest.raises(ValueError, match="loops"):
        check_lineage({"test-unet": loop, CHILD.name: CHILD})


def test_failed_build_leaves_nothing(tiny_zoo, monkeypatch):
    import finetune.zoo.builder

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(finetune.zoo.builder, "pretrain_", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        zoo.build("test-unet")
    assert not zoo.is_built("test-unet") and not zoo.zoo_path("test-unet").exists()
    assert not list((tiny_zoo / "zoo").glob(".test-unet.build-*"))
    with pytest.raises(FileNotFoundError, match="not built yet"):
        zoo.load_card("test-unet")


def test_unknown_zoo_name_lists_the_zoo(tiny_zoo):
    with pytest.raises(ModelRefError, match="unknown zoo model 'nope'.*unet-xs-gradients"):
        load_model("zoo:nope")
    with pytest.raises(ModelRefError, match="unknown zoo model"):
        zoo.build("nope")
    with pytest.raises(ValueError, match="mixture"):
        ZooSpec("x", "unet", {}, {"cats": 1.0}, 1, 1, 1e-3, 0, "bad family")
