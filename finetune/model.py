"""``T2IModel``: one adapter over a diffusers text-to-image pipeline.

Every fine-tuning method, the profiler and the evaluator talk to this class, never to a pipeline
directly, so latent models (Stable Diffusion layout: UNet + VAE + CLIP) and the zoo's pixel-space models
(:class:`finetune.pipeline.MandcPixelPipeline`: UNet or PixArt transformer + MiniLM, no VAE) look the same.

The training objective is the one of diffusers' ``train_text_to_image.py``. With ``x_0 = encode_images(pixels)``,
noise ``ε ~ N(0, I)`` and ``t ~ U{0, …, T−1}``:

.. math::
    x_t = \\sqrt{\\bar\\alpha_t}\\, x_0 + \\sqrt{1-\\bar\\alpha_t}\\, ε, \\qquad
    \\mathcal{L} = \\lVert \\text{target} - f_θ(x_t, t, c) \\rVert^2,

where the target is ``ε`` (``prediction_type="epsilon"``),
``v = \\sqrt{\\bar\\alpha_t}\\,ε - \\sqrt{1-\\bar\\alpha_t}\\,x_0`` (``"v_prediction"``) or ``x_0`` (``"sample"``).

Shapes: pixels ``[B, 3, H, W]`` in ``[-1, 1]``; ``x_0`` ``[B, C, h, w]`` (``C=4, h=H/8`` for SD latents,
``C=3, h=H`` for pixel models); prompt embeddings ``[B, L, D]`` (CLIP: ``L=77``; zoo MiniLM: ``L=24, D=384``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline
from PIL import Image


COMPONENTS = ("denoiser", "text_encoder", "vae", "all")


class T2IModel:
    """Adapter over ``pipeline`` (a diffusers pipeline with a UNet or a PixArt transformer).

    Attributes: ``pipeline``, ``denoiser``, ``scheduler`` (a training ``DDPMScheduler`` built from the
    pipeline's scheduler config), ``text_encoder``, ``tokenizer``, ``vae`` (None for pixel space),
    ``resolution`` (pixel size the model expects), ``prediction_type``, ``num_train_timesteps``,
    ``device``, ``dtype``.

    The VAE and the text encoder are frozen (``requires_grad_(False)``) and every module is put in eval
    mode, as diffusers' training scripts do; a method that trains part of them turns that part back on.
    """

    def __init__(self, pipeline: DiffusionPipeline):
        self.pipeline = pipeline
        unet, transformer = getattr(pipeline, "unet", None), getattr(pipeline, "transformer", None)
        self.denoiser = unet if unet is not None else transformer
        if self.denoiser is None:
            raise TypeError(f"{type(pipeline).__name__} has neither a `unet` nor a `transformer` component")
        kind = type(self.denoiser).__name__
        if kind not in ("UNet2DConditionModel", "PixArtTransformer2DModel"):
            raise TypeError(f"unsupported denoiser {kind}: T2IModel handles UNet2DConditionModel and "
                            "PixArtTransformer2DModel")
        self.is_transformer = unet is None
        self.text_encoder = pipeline.text_encoder
        self.tokenizer = pipeline.tokenizer
        self.vae = getattr(pipeline, "vae", None)
        # Training always uses DDPM's forward process, whatever sampler the pipeline ships (SD ships PNDM).
        self.scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.prediction_type = self.scheduler.config.prediction_type
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        for m in (self.text_encoder, self.vae):
            if m is not None:
                m.requires_grad_(False)
        for m in pipeline.components.values():
            if isinstance(m, torch.nn.Module):
                m.eval()
        self._empty_cond = None  # cached embedding of "" for classifier-free guidance

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, pipeline_class=DiffusionPipeline,
                        **components) -> "T2IModel":
        """Load the diffusers pipeline in the local ``folder`` with ``pipeline_class`` and wrap it;
        ``components`` go to ``pipeline_class.from_pretrained`` (e.g. ``safety_checker=None``).

        Only a folder: :func:`finetune.load.load_model` resolves references (``zoo:``, Hub ids) and picks
        the pipeline class (the zoo's :class:`~finetune.pipeline.MandcPixelPipeline` is not a diffusers
        class). Raises :class:`finetune.errors.ModelRefError` for a folder that is not a pipeline.
        """
        from finetune.errors import ModelRefError
        from finetune.memory import materialize_

        path = Path(folder).expanduser()
        if not (path / "model_index.json").is_file():
            raise ModelRefError(f"{path} is not a diffusers pipeline folder (no model_index.json); load "
                                "references such as zoo:NAME or Hub ids with finetune.load.load_model")
        if pipeline_class is DiffusionPipeline:
            import json

            import diffusers

            name = json.loads((path / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
            if not isinstance(name, str) or not hasattr(diffusers, name):
                raise ModelRefError(f"{path}/model_index.json names {name!r}, not a diffusers pipeline class: pass "
                                    "its pipeline_class, or load it with finetune.load.load_model")
        pipe = pipeline_class.from_pretrained(str(path), dtype=dtype, **components)
        for comp in pipe.components.values():
            if isinstance(comp, torch.nn.Module):
                materialize_(comp)  # no file-mapped weights: RSS then tracks live tensors (see materialize_)
        return cls(pipe.to(device))

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the whole pipeline in diffusers format (``model_index.json`` + one folder per component).

        Refuses a folder holding hard-linked files: the zoo cache shares its text-encoder files between
        models through hard links (see :mod:`finetune.zoo.builder`), so writing into one in place would
        change them all.
        """
        target = Path(path)
        shared = next((f for f in target.rglob("*") if f.is_file() and f.stat().st_nlink > 1), None) \
            if target.is_dir() else None
        if shared is not None:
            raise ValueError(f"refusing to save into {target}: {shared} is hard-linked to other files (as in the "
                             "zoo cache, where models share one text encoder); save to another folder")
        self.pipeline.save_pretrained(str(path))
        return Path(path)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: ``2^(levels−1)`` of the VAE, 1 in pixel space."""
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Square pixel size the denoiser was built for (``sample_size`` × VAE scale)."""
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    def num_parameters(self, component: str = "denoiser", trainable_only: bool = False) -> int:
        """Parameter count of ``component`` ∈ {denoiser, text_encoder, vae, all}; 0 for an absent VAE."""
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; choose one of {', '.join(COMPONENTS)}")
        mods = [self.denoiser, self.text_encoder, self.vae] if component == "all" else [getattr(self, component)]
        return sum(p.numel() for m in mods if m is not None for p in m.parameters()
                   if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ conditioning
    @property
    def max_prompt_tokens(self) -> int:
        """Fixed prompt length: the tokenizer's ``model_max_length`` (77 for CLIP, 24 in the zoo)."""
        n = int(getattr(self.tokenizer, "model_max_length", 77) or 77)
        return n if n <= 4096 else 77  # transformers' "unset" sentinel is ~1e30

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` of shape ``[B, max_prompt_tokens]`` (padded, truncated)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got a single str")
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_prompt_tokens,
                             truncation=True, return_tensors="pt")
        return {k: enc[k].to(self.text_encoder.device) for k in ("input_ids", "attention_mask")}

    def _uses_attention_mask(self) -> bool:
        # SD feeds CLIP no mask (padding tokens are attended, as in its training); BERT needs its mask.
        cfg = self.text_encoder.config
        return bool(getattr(cfg, "use_attention_mask", cfg.model_type != "clip_text_model"))

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text encoder's last hidden state ``[B, L, D]`` for token ids ``[B, L]`` (grad follows grad mode)."""
        mask = attention_mask if self._uses_attention_mask() else None
        out = self.text_encoder(input_ids, attention_mask=mask)
        return out[0].to(self.dtype)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Prompt embeddings ``[B, L, D]``: the text encoder's last hidden state over padded tokens (SD style)."""
        return self.encode_tokens(**self.tokenize(prompts))

    def empty_prompt_embedding(self) -> torch.Tensor:
        """Embedding of the empty prompt ``[1, L, D]``, the unconditional branch of guidance (cached)."""
        if self._empty_cond is None or self._empty_cond.device != self.device:
            with torch.no_grad():
                self._empty_cond = self.encode_prompt([""])
        return self._empty_cond

    # ------------------------------------------------------------------ denoising
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``x_0`` for pixels ``[B, 3, H, W]`` in ``[-1, 1]``: ``(mean − shift)·scaling_factor`` of the VAE
        posterior for latent models, the pixels themselves in pixel space."""
        pixels = pixels.to(self.device, self.dtype)
        if self.vae is None:
            return pixels
        mean = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((mean - shift) * self.vae.config.scaling_factor).to(self.dtype)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode_images`: pixels ``[B, 3, H, W]`` (unclamped)."""
        if self.vae is None:
            return x0
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        z = x0 / self.vae.config.scaling_factor + shift
        return self.vae.decode(z.to(self.vae.dtype)).sample

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        """Denoiser output ``[B, C, h, w]`` for ``x_t`` ``[B, C, h, w]``, timesteps ``t`` (int or ``[B]``)
        and prompt embeddings ``cond`` ``[B, L, D]``, hiding the UNet/PixArt call-signature differences."""
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        if self.is_transformer:
            out = self.denoiser(x_t, encoder_hidden_states=cond, timestep=t,
                                added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
            if out.shape[1] == 2 * x_t.shape[1]:  # PixArt-α learns the variance too; keep the mean prediction
                out = out[:, : x_t.shape[1]]
            return out
        return self.denoiser(x_t, t, encoder_hidden_states=cond).sample

    def _cond(self, batch: dict) -> torch.Tensor:
        if batch.get("encoder_hidden_states") is not None:
            return batch["encoder_hidden_states"].to(self.device, self.dtype)
        if "prompts" not in batch:
            raise KeyError("batch needs 'prompts' (list[str]) or precomputed 'encoder_hidden_states'")
        return self.encode_prompt(batch["prompts"])

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Regression target for the scheduler's ``prediction_type``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, t)
        if self.prediction_type == "sample":
            return x0
        raise ValueError(f"unknown prediction_type {self.prediction_type!r} in the scheduler config")

    def per_sample_loss(self, batch: dict, timesteps: torch.Tensor | int | None = None,
                        noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-example MSE ``[B]`` between denoiser output and target (mean over ``C, h, w``).

        ``batch = {"pixel_values": [B, 3, H, W], "prompts": list[str]}`` or with ``"encoder_hidden_states"``
        ``[B, L, D]`` instead of prompts. ``timesteps`` (int or ``[B]``) and ``noise`` (shape of ``x_0``)
        default to draws from ``generator``; fixing both gives a deterministic loss (held-out evaluation).
        """
        # "x0" lets callers that encode once (training loops, held-out evaluation) skip the VAE
        x0 = batch["x0"].to(self.device, self.dtype) if "x0" in batch else self.encode_images(batch["pixel_values"])
        b = x0.shape[0]
        gen_device = generator.device if generator is not None else self.device
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32)
        noise = noise.to(self.device, self.dtype)
        if timesteps is None:
            timesteps = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device=gen_device)
        t = torch.as_tensor(timesteps, device=self.device).long()
        t = t.expand(b) if t.ndim == 0 else t
        x_t = self.scheduler.add_noise(x0, noise, t)
        pred = self.denoise(x_t, t, self._cond(batch))
        err = F.mse_loss(pred.float(), self.target(x0, noise, t).float(), reduction="none")
        return err.flatten(1).mean(1)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``ᾱ_t / (1 − ᾱ_t)`` per timestep ``[B]``."""
        ac = self.scheduler.alphas_cumprod.to(t.device)[t].float()
        return ac / (1 - ac)

    def training_loss(self, batch: dict, timesteps: torch.Tensor | int | None = None,
                      noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      snr_gamma: float | None = None) -> torch.Tensor:
        """Scalar MSE over the batch (what ``train_text_to_image.py`` minimises); see :meth:`per_sample_loss`.

        ``snr_gamma`` applies that script's Min-SNR-γ weighting (Hang et al. 2023): example ``i`` is weighted
        by ``min(SNR_i, γ) / SNR_i`` (ε-prediction) or ``/ (SNR_i + 1)`` (v-prediction), which stops the
        easy low-noise timesteps from dominating the gradient.
        """
        if snr_gamma is None:
            return self.per_sample_loss(batch, timesteps, noise, generator).mean()
        b = (batch["x0"] if "x0" in batch else batch["pixel_values"]).shape[0]
        if timesteps is None:  # draw t here so the weights see it
            gen_device = generator.device if generator is not None else self.device
            timesteps = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device=gen_device)
        t = torch.as_tensor(timesteps, device=self.device).long()
        t = t.expand(b) if t.ndim == 0 else t
        snr = self.snr(t)
        w = snr.clamp(max=snr_gamma)
        if self.prediction_type == "epsilon":
            w = w / snr
        elif self.prediction_type == "v_prediction":
            w = w / (snr + 1)
        return (self.per_sample_loss(batch, t, noise, generator) * w).mean()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, prompts: list[str], steps: int = 25, seed: int = 0, guidance_scale: float = 1.0,
               cond: torch.Tensor | None = None) -> list[Image.Image]:
        """DDIM samples, one PIL image per prompt, from noise seeded by ``seed`` (CPU generator, so the same
        seed gives the same starting noise on every device).

        With ``guidance_scale > 1`` the prediction is ``u + s·(c − u)`` (classifier-free guidance), ``u`` the
        prediction for the empty prompt. ``cond`` ``[B, L, D]`` overrides the encoded prompts (e.g. a
        learned textual-inversion embedding).
        """
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(steps, device=self.device)
        cond = self.encode_prompt(prompts) if cond is None else cond.to(self.device, self.dtype)
        b = cond.shape[0]
        guided = guidance_scale > 1.0
        if guided:
            cond = torch.cat([self.empty_prompt_embedding().expand(b, -1, -1), cond])
        size = int(self.denoiser.config.sample_size)
        g = torch.Generator("cpu").manual_seed(int(seed))
        x = torch.randn((b, self.latent_channels, size, size), generator=g).to(self.device, self.dtype)
        x = x * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = torch.cat([x, x]) if guided else x
            pred = self.denoise(sched.scale_model_input(inp, t), t, cond)
            if guided:
                uncond, c = pred.chunk(2)
                pred = uncond + guidance_scale * (c - uncond)
            x = sched.step(pred, t, x).prev_sample
        return to_pil(self.decode(x))


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in ``[-1, 1]`` → list of RGB PIL images (clamped, rounded to uint8)."""
    arr = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).cpu().numpy())) for a in arr]
