"""Shared fixtures for finetune tests: offline env, a tiny latent Stable-Diffusion-layout pipeline with an
offline CLIP tokenizer, and a throwaway ``MANDC_HOME``."""
from __future__ import annotations

import json
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import pytest
import torch


def _byte_unicode_chars() -> list[str]:
    """GPT-2/CLIP's byte→unicode table: the 256 symbols a byte-level BPE vocabulary starts from."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_clip_tokenizer(folder):
    """A CLIP tokenizer built from a tiny ``vocab.json`` + empty ``merges.txt`` (no download): every byte
    symbol, its ``</w>`` form and the two special tokens — 514 ids."""
    from transformers import CLIPTokenizer

    chars = _byte_unicode_chars()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def tiny_sd_pipeline(tokenizer):
    """StableDiffusionPipeline with diffusers-test-sized components: UNet (32, 64) on 8×8×4 latents,
    a 2-level VAE (16×16 pixels), a 5-layer CLIP text tower of width 32."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                                layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5,
                                                pad_token_id=1, vocab_size=1000))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """A saved tiny SD pipeline folder (diffusers format)."""
    root = tmp_path_factory.mktemp("tiny-sd")
    pipe = tiny_sd_pipeline(make_clip_tokenizer(root / "tok-src"))
    pipe.save_pretrained(str(root / "model"))
    return root / "model"


@pytest.fixture
def mandc_home(tmp_path, monkeypatch):
    """A fresh, empty ``MANDC_HOME`` for the test."""
    monkeypatch.setenv("MANDC_HOME", str(tmp_path / "mandc-home"))
    return tmp_path / "mandc-home"
