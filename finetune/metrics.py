"""Quality metrics for fine-tuned T2I models.

The default, weight-free metric is the **held-out denoising loss**: the ε-MSE (or v-MSE for
v-prediction models) of the denoiser on held-out images, averaged over a fixed set of timesteps and a
fixed set of noise seeds, so two models (or one model before/after fine-tuning) are scored on exactly
the same noised inputs. Lower is better.

FID/KID and CLIP-based scores need feature-extractor weights (Inception, CLIP ViT) that this project
never downloads; :func:`available_metrics` switches them on only when the user points
``MANDC_CLIP_PATH`` / ``MANDC_INCEPTION_PATH`` at local weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from data import ImageTextDataset

#: Fixed timesteps (of T=1000) for the held-out loss: spread over the schedule, away from the ends.
HELDOUT_TIMESTEPS = (50, 200, 350, 500, 650, 800, 950)
#: Fixed noise seeds: every image is noised with each seed at each timestep.
HELDOUT_NOISE_SEEDS = (0, 1)


@dataclass
class HeldoutLoss:
    mean: float
    per_timestep: dict[int, float]
    n_images: int


@torch.no_grad()
def heldout_loss(model, heldout: ImageTextDataset, timesteps=HELDOUT_TIMESTEPS, noise_seeds=HELDOUT_NOISE_SEEDS,
                 batch_size: int = 32, cond: torch.Tensor | None = None) -> HeldoutLoss:
    """Mean denoising loss of ``model`` (a ``T2IModel``) on ``heldout`` at fixed t and fixed noise.

    For each noise seed s, the noise tensor for image i is drawn from a generator seeded with s, in
    dataset order, with the shape of the model's x0 — so the value is reproducible and identical across
    models that share a pixel/latent space. ``cond`` ``[N, L, D]`` overrides the captions' embeddings
    (a method that changes the prompts, e.g. textual inversion, scores with its own).
    """
    if len(heldout) == 0:
        raise ValueError("held-out split is empty: cannot compute a held-out loss")
    T = model.num_train_timesteps
    ts = [int(t * T / 1000) for t in timesteps]
    pixels = heldout.to_tensor(model.resolution)
    cond_all = model.encode_prompt(list(heldout.captions)) if cond is None else cond
    x0_all = torch.cat([model.encode_images(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])
    per_t = {t: 0.0 for t in ts}
    for s in noise_seeds:
        g = torch.Generator("cpu").manual_seed(s)
        noise_all = torch.randn(x0_all.shape, generator=g).to(x0_all.device, x0_all.dtype)
        for t in ts:
            for i in range(0, len(heldout), batch_size):
                x0, noise, c = x0_all[i : i + batch_size], noise_all[i : i + batch_size], cond_all[i : i + batch_size]
                tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
                per = model.per_sample_loss({"x0": x0, "encoder_hidden_states": c}, timesteps=tt, noise=noise)
                per_t[t] += float(per.float().sum())
    n = len(heldout) * len(noise_seeds)
    per_t = {t: v / n for t, v in per_t.items()}
    return HeldoutLoss(mean=sum(per_t.values()) / len(per_t), per_timestep=per_t, n_images=len(heldout))


def available_metrics() -> list[str]:
    """Metrics usable on this machine: always ``heldout_loss``; CLIP/FID only with local weights."""
    names = ["heldout_loss"]
    if os.environ.get("MANDC_CLIP_PATH") and os.path.isdir(os.environ["MANDC_CLIP_PATH"]):
        names += ["clip_t", "clip_i"]
    if os.environ.get("MANDC_INCEPTION_PATH") and os.path.exists(os.environ["MANDC_INCEPTION_PATH"]):
        names += ["fid", "kid"]
    return names
