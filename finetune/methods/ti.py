"""``ti``: textual inversion in full precision (diffusers' ``textual_inversion.py``), the ZOODiP baseline.

A new placeholder token's embedding row is the only thing trained; gradients flow through the frozen
text encoder and denoiser, and after each step every other row of the embedding matrix is restored (so
AdamW's weight decay cannot move them). Output: ``learned_embeds.safetensors`` ``{token: [1, D]}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.methods.base import Method, MethodConfig, option
from finetune.methods.registry import register
from finetune.methods.tokens import add_placeholder_, save_embedding


@dataclass
class TIConfig(MethodConfig):
    lr: float = option(5e-4, "learning rate (diffusers' example: 5e-4 at batch 1 without LR scaling)")
    steps: int = option(400, "optimisation steps")
    placeholder: str = option("<mandc>", "the new token")
    initializer: str = option("object", "single-token word whose embedding initialises the placeholder")
    template: str = option("{token} {caption}", "prompt per image ('a photo of {token}' for a subject)")


@register
class TextualInversion(Method):
    name = "ti"
    Config = TIConfig
    trains_text = True

    def token(self) -> str:
        return self.config.placeholder

    def setup_(self) -> None:
        self.model.denoiser.requires_grad_(False)
        self.token_id = add_placeholder_(self.model, self.config.placeholder, self.config.initializer)
        emb = self.model.text_encoder.get_input_embeddings().weight
        emb.requires_grad_(True)
        self.orig = emb.detach().clone()
        self.keep = torch.ones(emb.shape[0], dtype=torch.bool)
        self.keep[self.token_id] = False

    @classmethod
    def estimate_prepare_(cls, model, config):
        emb = model.text_encoder.get_input_embeddings().weight  # the placeholder's row is one of its rows
        emb.requires_grad_(True)
        orig = model.hold(emb.detach().clone())
        model.on_step(lambda: orig.clone())  # after_step's emb[keep] = orig[keep] copies the table once
        return [emb]

    def embedding(self) -> torch.Tensor:
        return self.model.text_encoder.get_input_embeddings().weight

    def trainable(self) -> list[torch.Tensor]:
        return [self.embedding()]

    def after_step(self) -> None:
        with torch.no_grad():
            self.embedding()[self.keep] = self.orig[self.keep]

    def vector(self) -> torch.Tensor:
        return self.embedding()[self.token_id].detach().clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"embedding": self.vector()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.embedding()[self.token_id] = sd["embedding"]

    def save(self, out_dir: Path) -> dict[str, str]:
        return {"embedding": str(save_embedding(self.config.placeholder, self.vector(), out_dir))}
