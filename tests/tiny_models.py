"""Tiny seeded models shared by tests (importable as ``tiny_models``: tests/ is on sys.path via its conftest)."""
from __future__ import annotations

import torch

from finetune.model import T2IModel


def tiny_model(kind: str = "unet", seed: int = 0) -> T2IModel:
    from diffusers import DDPMScheduler, PixArtTransformer2DModel, UNet2DConditionModel
    from transformers import AutoTokenizer, BertModel

    from data.text import minilm_path
    from finetune.pipeline import MandcPixelPipeline
    from finetune.zoo.specs import SCHEDULER_CONFIG, dit, unet

    torch.manual_seed(seed)
    if kind == "unet":
        den = UNet2DConditionModel(**unet((8, 16), layers=1, head_dim=8, groups=4))
    else:
        den = PixArtTransformer2DModel(**dit(32, 1, heads=2, patch=4))
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.model_max_length = 8
    pipe = MandcPixelPipeline(scheduler=DDPMScheduler(**SCHEDULER_CONFIG), text_encoder=BertModel.from_pretrained(minilm_path()),
                              tokenizer=tok, **{kind if kind == "unet" else "transformer": den})
    return T2IModel(pipe)
