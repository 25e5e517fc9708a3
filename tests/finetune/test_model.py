"""T2IModel on a tiny latent Stable-Diffusion-layout pipeline (CLIP + VAE + UNet), loaded offline."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from finetune.images import save_grid
from finetune.load import load_model
from finetune.model import T2IModel
from finetune.refs import ModelRefError, parse_model_ref


@pytest.fixture(scope="module")
def sd(sd_folder):
    return T2IModel.from_pretrained(sd_folder)


def _batch(b=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
            "prompts": ["a red square", "two cats", ""][:b]}


def test_loads_local_folder_offline(sd, sd_folder):
    index = json.loads((sd_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert type(sd.denoiser).__name__ == "UNet2DConditionModel" and not sd.is_transformer
    assert type(sd.scheduler).__name__ == "DDPMScheduler"  # the folder ships DDIM; training uses DDPM
    assert sd.vae is not None and sd.vae_scale_factor == 2
    assert sd.resolution == 16 and sd.latent_channels == 4
    assert sd.prediction_type == "epsilon" and sd.num_train_timesteps == 1000
    assert sd.device.type == "cpu" and sd.dtype == torch.float32
    assert not any(p.requires_grad for p in sd.text_encoder.parameters())
    assert not any(p.requires_grad for p in sd.vae.parameters())
    assert sd.num_parameters("denoiser") == sum(p.numel() for p in sd.denoiser.parameters())
    assert sd.num_parameters("all") == sum(sd.num_parameters(c) for c in ("denoiser", "text_encoder", "vae"))
    with pytest.raises(ValueError, match="unknown component 'unet'"):
        sd.num_parameters("unet")


def test_encode_prompt_is_clip_last_hidden_state(sd):
    emb = sd.encode_prompt(["a red square", ""])
    assert emb.shape == (2, 77, 32)
    ids = sd.tokenizer(["a red square", ""], padding="max_length", max_length=77, truncation=True,
                       return_tensors="pt").input_ids
    with torch.no_grad():
        ref = sd.text_encoder(ids)[0]  # SD feeds CLIP no attention mask
    torch.testing.assert_close(emb, ref)


def _hand_loss(sd, batch, t, noise, target_kind):
    """The loss written out from the formulas, independent of scheduler.add_noise / get_velocity."""
    with torch.no_grad():
        x0 = sd.vae.encode(batch["pixel_values"]).latent_dist.mean * sd.vae.config.scaling_factor
        ac = sd.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        ids = sd.tokenizer(batch["prompts"], padding="max_length", max_length=77, truncation=True,
                           return_tensors="pt").input_ids
        pred = sd.denoiser(x_t, t, encoder_hidden_states=sd.text_encoder(ids)[0]).sample
        target = noise if target_kind == "epsilon" else ac.sqrt() * noise - (1 - ac).sqrt() * x0
        return F.mse_loss(pred, target, reduction="none").mean((1, 2, 3))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_loss_matches_hand_computation(sd_folder, prediction_type):
    model = T2IModel.from_pretrained(sd_folder)
    if prediction_type != "epsilon":
        from diffusers import DDIMScheduler

        model.pipeline.scheduler = DDIMScheduler.from_config(model.pipeline.scheduler.config,
                                                             prediction_type=prediction_type)
        model = T2IModel(model.pipeline)
    assert model.prediction_type == prediction_type
    batch = _batch()
    t = torch.tensor([10, 500, 990])
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = _hand_loss(model, batch, t, noise, prediction_type)
    with torch.no_grad():
        per = model.per_sample_loss(batch, timesteps=t, noise=noise)
        total = model.training_loss(batch, timesteps=t, noise=noise)
        # Min-SNR-γ (diffusers' --snr_gamma): weights min(SNR, γ)/SNR (ε) or min(SNR, γ)/(SNR+1) (v)
        weighted = model.training_loss(batch, timesteps=t, noise=noise, snr_gamma=5.0)
    torch.testing.assert_close(per, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, expected.mean(), rtol=1e-5, atol=1e-6)
    ac = model.scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    w = snr.clamp(max=5.0) / (snr if prediction_type == "epsilon" else snr + 1)
    torch.testing.assert_close(weighted, (expected * w).mean(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(weighted, total)


def test_training_loss_draws_from_generator_and_accepts_embeddings(sd):
    batch = _batch()
    with torch.no_grad():
        a = sd.training_loss(batch, generator=torch.Generator().manual_seed(3))
        b = sd.training_loss(batch, generator=torch.Generator().manual_seed(3))
        c = sd.training_loss(batch, generator=torch.Generator().manual_seed(4))
        pre = {"pixel_values": batch["pixel_values"], "encoder_hidden_states": sd.encode_prompt(batch["prompts"])}
        d = sd.training_loss(pre, generator=torch.Generator().manual_seed(3))
    assert a.ndim == 0 and torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a, d)
    with pytest.raises(KeyError, match="prompts"):
        sd.training_loss({"pixel_values": batch["pixel_values"]})


def test_sample_returns_seeded_images_of_model_resolution(sd):
    imgs = sd.sample(["a", "b", "c"], steps=2, seed=0)
    again = sd.sample(["a", "b", "c"], steps=2, seed=0)
    other = sd.sample(["a", "b", "c"], steps=2, seed=1)
    guided = sd.sample(["a", "b", "c"], steps=2, seed=0, guidance_scale=4.0)
    assert len(imgs) == 3 and all(isinstance(i, Image.Image) and i.size == (16, 16) and i.mode == "RGB" for i in imgs)
    assert [i.tobytes() for i in imgs] == [i.tobytes() for i in again]
    assert imgs[0].tobytes() != other[0].tobytes()
    assert len(guided) == 3 and imgs[0].tobytes() != guided[0].tobytes()


def test_save_pretrained_round_trip(sd, tmp_path):
    out = sd.save_pretrained(tmp_path / "copy")
    again = T2IModel.from_pretrained(out)
    for (k, a), (_, b) in zip(sd.denoiser.state_dict().items(), again.denoiser.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_model_refs(tmp_path):
    with pytest.raises(ModelRefError, match="no such folder"):
        load_model(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelRefError, match="no model_index.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelRefError, match="is a file"):
        parse_model_ref(tmp_path / "file.bin")
    with pytest.raises(ModelRefError, match="non-empty"):
        parse_model_ref("")
    assert parse_model_ref("org/name").kind == "hub"


def test_hub_id_offline_error_suggests_zoo():
    with pytest.raises(ModelRefError) as err:
        load_model("mandc-test-nobody/no-such-model")
    msg = str(err.value)
    assert "Hugging Face Hub" in msg and "zoo:" in msg and "mandc-test-nobody/no-such-model" in msg


def test_save_grid(tmp_path):
    imgs = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(5)]
    path = save_grid(imgs, tmp_path / "g.png", nrow=3)
    grid = Image.open(path)
    assert grid.size == (3 * (96 + 2) + 2, 2 * (96 + 2) + 2)
    assert grid.getpixel((2 + 98 + 10, 2 + 10)) == (40, 0, 0)  # second cell, upscaled ×3
    captioned = Image.open(save_grid(imgs, tmp_path / "c.png", captions=[f"image {i}" for i in range(5)]))
    assert captioned.size[1] > 2 * (96 + 2) + 2
    with pytest.raises(ValueError, match="5 images but 2 captions"):
        save_grid(imgs, tmp_path / "x.png", captions=["a", "b"])


def test_materialize_copies_weights_into_their_own_memory(tmp_path):
    """materialize_ keeps every value but gives each tensor fresh storage, so a file-mapped weight (what
    from_pretrained returns) stops pinning the file's pages once the module replaces it."""
    from safetensors.torch import load_file, save_file

    from finetune.memory import materialize_

    lin = torch.nn.Linear(64, 32)
    save_file(lin.state_dict(), tmp_path / "w.safetensors")
    loaded = torch.nn.Linear(64, 32)
    loaded.load_state_dict(load_file(tmp_path / "w.safetensors"), assign=True)
    before = {n: p.untyped_storage().data_ptr() for n, p in loaded.named_parameters()}
    materialize_(loaded)
    for n, p in loaded.named_parameters():
        assert p.untyped_storage().data_ptr() != before[n]
        assert torch.equal(p, lin.state_dict()[n])
