"""``full``: full fine-tuning of the denoiser (DreamBooth-style baseline; the text encoder stays frozen)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.methods.base import Method, MethodConfig, option
from finetune.methods.registry import register


@dataclass
class FullConfig(MethodConfig):
    lr: float = option(5e-6, "learning rate (DreamBooth on SD uses 5e-6; small zoo models take ~1e-4)")


@register
class Full(Method):
    name = "full"
    Config = FullConfig

    def setup_(self) -> None:
        den = self.model.denoiser
        den.requires_grad_(True)
        # The bf16 optimizers keep the parameters themselves in bf16: run the whole denoiser in bf16 then.
        if self.config.optimizer != "adamw":
            den.to(torch.bfloat16)
        den.train()

    @classmethod
    def estimate_prepare_(cls, model, config):
        model.denoiser.requires_grad_(True)
        if config.optimizer != "adamw":
            model.cast_(model.denoiser, torch.bfloat16)
        return list(model.denoiser.parameters())

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.model.denoiser.parameters() if p.requires_grad]

    def save(self, out_dir: Path) -> dict[str, str]:
        path = out_dir / "denoiser"
        self.model.denoiser.save_pretrained(path)
        return {"denoiser": str(path)}
