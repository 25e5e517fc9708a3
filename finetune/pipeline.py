"""``MandcPixelPipeline``: the pixel-space text-to-image pipeline of the reference zoo.

A diffusers ``DiffusionPipeline`` with no VAE: the denoiser works directly on ``[B, 3, H, W]`` pixels in
``[-1, 1]``. Components (all loadable by diffusers / transformers on their own, so ``model_index.json``
records ordinary library classes):

- ``unet`` (``UNet2DConditionModel``) **or** ``transformer`` (``PixArtTransformer2DModel``) — the other is None;
- ``scheduler`` — the training ``DDPMScheduler``;
- ``text_encoder`` — ``transformers.BertModel`` (the offline all-MiniLM-L6-v2 from :func:`data.text.minilm_path`);
- ``tokenizer`` — its ``BertTokenizer(Fast)``; ``tokenizer.model_max_length`` is the fixed prompt length
  (24 tokens in the zoo), so prompts encode to ``[B, 24, 384]``.

``save_pretrained`` / ``MandcPixelPipeline.from_pretrained(folder)`` round-trip with the network off.
Sampling is :meth:`finetune.model.T2IModel.sample` (DDIM); ``__call__`` delegates to it so the pipeline
behaves like any diffusers pipeline.
"""
from __future__ import annotations

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

# MiniLM prompts are short captions; a fixed small length keeps cross-attention cheap (SD uses 77).
DEFAULT_PROMPT_TOKENS = 24


class MandcPixelPipelineOutput(BaseOutput):
    images: list


class MandcPixelPipeline(DiffusionPipeline):
    """Pixel-space T2I pipeline: ``unet`` or ``transformer`` + ``scheduler`` + ``text_encoder`` + ``tokenizer``."""

    _optional_components = ["unet", "transformer"]
    model_cpu_offload_seq = "text_encoder->unet->transformer"

    def __init__(self, scheduler, text_encoder, tokenizer, unet=None, transformer=None):
        super().__init__()
        if (unet is None) == (transformer is None):
            raise ValueError("MandcPixelPipeline needs exactly one denoiser: pass `unet` or `transformer`, not "
                             f"{'both' if unet is not None else 'neither'}")
        self.register_modules(unet=unet, transformer=transformer, scheduler=scheduler,
                              text_encoder=text_encoder, tokenizer=tokenizer)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet if self.unet is not None else self.transformer

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 25, guidance_scale: float = 1.0,
                 seed: int = 0, return_dict: bool = True):
        """Sample images for ``prompt`` (DDIM, seeded noise); see :meth:`finetune.model.T2IModel.sample`."""
        from finetune.model import T2IModel  # model.py imports this module; import here to avoid a cycle

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        images = T2IModel(self).sample(prompts, steps=num_inference_steps, seed=seed, guidance_scale=guidance_scale)
        return MandcPixelPipelineOutput(images=images) if return_dict else (images,)
