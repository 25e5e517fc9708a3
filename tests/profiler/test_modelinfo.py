"""Model features: stable keys from zoo specs and from local diffusers folders (config + card)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from finetune.refs import ModelRefError
from profiler.modelinfo import card_embedding, describe_model, feature_names, lineage_mixture, model_features

FAMILIES = ["compositions", "digits", "faces", "gradients", "patterns", "photos", "shapes", "textures"]


def test_feature_names_are_the_contract():
    names = feature_names()
    assert names[:7] == ["is_dit", "log10_params", "depth", "width", "resolution", "text_dim", "pretrain_steps"]
    assert names[7:15] == [f"mix_{f}" for f in FAMILIES]
    assert names[15:] == [f"card_emb_{i}" for i in range(16)]


def test_zoo_spec_features_without_building():
    from finetune.zoo import is_built, spec_parameters

    f = model_features("zoo:unet-s-shapes")
    assert not is_built("unet-s-shapes")  # described from its spec alone
    assert list(f) == feature_names() and all(isinstance(v, float) for v in f.values())
    assert f["is_dit"] == 0 and f["depth"] == 3 and f["width"] == 64 and f["resolution"] == 32 and f["text_dim"] == 384
    assert f["log10_params"] == pytest.approx(math.log10(spec_parameters("unet-s-shapes")))
    # a descendant: 1200 steps of its parent's broad mixture, then 400 on shapes 2 : compositions 1
    assert f["pretrain_steps"] == 1600
    assert f["mix_shapes"] == pytest.approx(1200 / 1600 / 8 + 400 / 1600 * 2 / 3, abs=1e-6)
    assert f["mix_digits"] == pytest.approx(1200 / 1600 / 8, abs=1e-6)
    assert sum(f[f"mix_{x}"] for x in FAMILIES) == pytest.approx(1.0, abs=1e-5)
    card = np.array([f[f"card_emb_{i}"] for i in range(16)])
    assert 0.1 < np.linalg.norm(card) <= 1.0 + 1e-6  # a projection of a unit vector

    dit = describe_model("zoo:dit-m-simple")
    assert dit["ref"] == "zoo:dit-m-simple" and dit["name"] == "dit-m-simple"
    assert dit["features"]["is_dit"] == 1 and dit["features"]["depth"] == 4 and dit["features"]["width"] == 128
    assert dit["info"]["family"] == "dit" and dit["info"]["mixture"] == pytest.approx(
        {"digits": 1 / 3, "gradients": 1 / 3, "shapes": 1 / 3}, abs=1e-6)
    json.dumps(dit)


def test_local_diffusers_folder(tmp_path):
    """Features from model_index.json, configs, safetensors headers and the README card — no weights loaded."""
    from tiny_models import tiny_model

    model = tiny_model("unet", seed=0)
    folder = tmp_path / "my-model"
    model.save_pretrained(folder)
    f = model_features(folder)
    assert list(f) == feature_names()
    assert f["is_dit"] == 0 and f["depth"] == 2 and f["width"] == 16 and f["text_dim"] == 384
    assert f["resolution"] == model.resolution
    assert f["log10_params"] == pytest.approx(math.log10(model.num_parameters("denoiser")))
    assert f["pretrain_steps"] == 0 and all(f[f"mix_{x}"] == 0 for x in FAMILIES)  # no card: unknown

    (folder / "README.md").write_text("---\ndescription: tiny UNet on geometric shapes\nsteps: 40\nmixture:\n"
                                      "  shapes: 3\n  digits: 1\n---\n\n# my model\n\nBody text.\n")
    f = model_features(folder)
    assert f["pretrain_steps"] == 40 and f["mix_shapes"] == pytest.approx(0.75) and f["mix_digits"] == pytest.approx(0.25)
    emb = card_embedding("tiny UNet on geometric shapes")
    assert [f[f"card_emb_{i}"] for i in range(16)] == pytest.approx(emb.tolist(), abs=1e-6)

    (folder / "README.md").write_text("# my model\n\n![img](x.png)\n\nA **small** model for [faces](http://x).\n\nMore.\n")
    f = model_features(folder)
    assert [f[f"card_emb_{i}"] for i in range(16)] == pytest.approx(
        card_embedding("A small model for faces.").tolist(), abs=1e-6)


def test_latent_folder_resolution_and_dit_config(tmp_path):
    """Configs alone (no weight files): a latent UNet's resolution counts the VAE's down-sampling; a
    PixArt transformer's depth/width/text width come from its config."""
    sd = tmp_path / "sd"
    for sub, cfg in {"unet": {"_class_name": "UNet2DConditionModel", "block_out_channels": [320, 640, 1280, 1280],
                              "sample_size": 64, "cross_attention_dim": 768},
                     "vae": {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512]}}.items():
        (sd / sub).mkdir(parents=True)
        (sd / sub / "config.json").write_text(json.dumps(cfg))
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                     "unet": ["diffusers", "UNet2DConditionModel"],
                                                     "vae": ["diffusers", "AutoencoderKL"]}))
    f = model_features(sd)
    assert f["resolution"] == 512 and f["depth"] == 4 and f["width"] == 1280 and f["text_dim"] == 768
    assert f["log10_params"] == 0  # no weight files: count unknown

    dit = tmp_path / "dit"
    (dit / "transformer").mkdir(parents=True)
    (dit / "transformer" / "config.json").write_text(json.dumps({
        "_class_name": "PixArtTransformer2DModel", "num_layers": 28, "num_attention_heads": 16,
        "attention_head_dim": 72, "sample_size": 128, "caption_channels": 4096}))
    (dit / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    f = model_features(dit)
    assert f["is_dit"] == 1 and f["depth"] == 28 and f["width"] == 1152 and f["text_dim"] == 4096


def test_bad_references(tmp_path):
    with pytest.raises(ModelRefError, match="unknown zoo model"):
        model_features("zoo:nope")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model_index.json").write_text(json.dumps({"scheduler": ["diffusers", "DDPMScheduler"]}))
    with pytest.raises(ModelRefError, match="neither a 'unet' nor a 'transformer'"):
        model_features(tmp_path / "x")
    with pytest.raises(ModelRefError, match="not in the local Hugging Face cache"):
        model_features("some-org/some-model")


def test_lineage_mixture():
    stages = [{"mixture": {"a": 1, "b": 1}, "steps": 300}, {"mixture": {"b": 2}, "steps": 100}]
    assert lineage_mixture(stages) == pytest.approx({"a": 0.375, "b": 0.625})
    assert lineage_mixture([]) == {}
