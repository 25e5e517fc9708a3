"""The artefacts users take elsewhere load with stock diffusers: LoRA (``lora``, ``qta-lora``) through
``StableDiffusionPipeline.load_lora_weights`` and textual inversion (``ti``, ``zo-ti``) through
``load_textual_inversion``, on the tiny Stable-Diffusion-layout pipeline."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from finetune import run


def _pipe(sd_folder):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(sd_folder), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)


def _unet_out(pipe, cond):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        return pipe.unet(x, 500, encoder_hidden_states=cond).sample


@pytest.mark.parametrize("method", ["lora", "qta-lora"])
def test_lora_artefact_loads_with_load_lora_weights(sd_folder, tmp_path, method):
    res = run(str(sd_folder), "builtin:shapes_circles", method, {"steps": 3, "lr": 1e-2}, tmp_path / method,
              evaluate_loss=False)
    folder = res.artefacts["lora"]
    saved = load_file(f"{folder}/pytorch_lora_weights.safetensors")
    assert any(k.startswith("unet.") and "lora_B" in k for k in saved)
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k), "B moved away from zero"
    pipe = _pipe(sd_folder)
    cond = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1))
    before = _unet_out(pipe, cond)
    pipe.load_lora_weights(folder)
    n_lora = sum("lora" in n for n, _ in pipe.unet.named_parameters())
    assert n_lora > 0, "stock diffusers added no LoRA layer"
    after = _unet_out(pipe, cond)
    assert not torch.allclose(before, after), "the loaded LoRA changes the UNet's output"


@pytest.mark.parametrize("method", ["ti", "zo-ti"])
def test_textual_inversion_artefact_loads_with_load_textual_inversion(sd_folder, tmp_path, method):
    res = run(str(sd_folder), "builtin:shapes_circles", method, {"steps": 2, "initializer": "a"}, tmp_path / method,
              evaluate_loss=False)
    if method == "zo-ti":  # SD 1.5's scaled-linear schedule: the SNR-matched window is the paper's, exactly
        assert (res.config["timestep_min"], res.config["timestep_max"]) == (500, 900)
    path = res.artefacts["embedding"]
    (token, vec), = load_file(path).items()
    pipe = _pipe(sd_folder)
    pipe.load_textual_inversion(path)
    tid = pipe.tokenizer.convert_tokens_to_ids(token)
    assert tid != pipe.tokenizer.unk_token_id and tid >= 514  # a new id past the tiny vocabulary
    emb = pipe.text_encoder.get_input_embeddings().weight[tid]
    torch.testing.assert_close(emb, vec.reshape(-1).to(emb.dtype))
