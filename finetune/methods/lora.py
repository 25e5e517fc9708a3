"""``lora``: full-precision LoRA on the denoiser's attention projections (peft), the QTA baseline.

Recipe of diffusers' ``train_text_to_image_lora.py``: rank 4, alpha = rank, Gaussian init of A and zero B,
targets ``to_q, to_k, to_v, to_out.0``, AdamW at 1e-4. Saved as ``pytorch_lora_weights.safetensors`` with
diffusers' key layout (``unet.<module>.lora_A.weight``; ``transformer.`` for a DiT denoiser) plus peft's
``adapter_config.json``; :func:`load_lora_` puts it back on a fresh model, and for a UNet diffusers'
own ``unet.load_lora_adapter(folder, prefix="unet")`` reads it too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import save_file

from finetune.methods.base import Method, MethodConfig, option
from finetune.methods.registry import register
from finetune.qta.apply import DEFAULT_TARGETS
from finetune.weightfiles import WeightsFileError, load_safetensors

LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class LoraMethodConfig(MethodConfig):
    lr: float = option(1e-4, "learning rate (diffusers' LoRA example)")
    rank: int = option(4, "LoRA rank r")
    alpha: float = option(4.0, "LoRA alpha (scaling alpha/r)")
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS),
                                      metadata={"help": "module names (suffixes) that get adapters"})

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise ValueError(f"rank must be ≥ 1, got {self.rank}")


def prefix_of(model) -> str:
    """diffusers' state-dict prefix for the denoiser: ``unet`` or ``transformer``."""
    return "transformer" if model.is_transformer else "unet"


def save_lora(model, state: dict[str, torch.Tensor], lora_config: LoraConfig, out_dir: Path) -> Path:
    """Write ``state`` (peft keys) as diffusers' ``pytorch_lora_weights.safetensors`` + ``adapter_config.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    p = prefix_of(model)
    save_file({f"{p}.{k}": v.detach().to(torch.float32).contiguous() for k, v in state.items()}, out_dir / LORA_FILE)
    cfg = lora_config.to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"]) if cfg.get("target_modules") else None
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2, default=str))
    return out_dir / LORA_FILE


def load_lora_(model, folder: str | Path) -> None:
    """Add the saved adapter to ``model.denoiser`` (full-precision peft layers) and load its weights."""
    folder = Path(folder)
    # read both files before touching the model, so a bad one leaves it unchanged
    weights = load_safetensors(folder / LORA_FILE, "LoRA adapter", "train or download the adapter again")
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        lcfg = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], target_modules=cfg["target_modules"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise WeightsFileError(f"{folder / 'adapter_config.json'}: unreadable LoRA config ({type(e).__name__}: "
                               f"{e}); train or download the adapter again") from None
    inject_adapter_in_model(lcfg, model.denoiser)
    p = prefix_of(model) + "."
    sd = {k[len(p):]: v for k, v in weights.items() if k.startswith(p)}
    result = set_peft_model_state_dict(model.denoiser, sd)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{folder / LORA_FILE}: keys match no adapter layer: {result.unexpected_keys[:5]}")


@register
class Lora(Method):
    name = "lora"
    Config = LoraMethodConfig

    def setup_(self) -> None:
        c = self.config
        den = self.model.denoiser
        den.requires_grad_(False)
        self.lora_config = LoraConfig(r=c.rank, lora_alpha=c.alpha, init_lora_weights="gaussian",
                                      target_modules=list(c.target_modules))
        inject_adapter_in_model(self.lora_config, den)
        den.train()

    def trainable(self) -> list[torch.Tensor]:
        return [p for n, p in self.model.denoiser.named_parameters() if "lora_" in n]

    def save(self, out_dir: Path) -> dict[str, str]:
        path = save_lora(self.model, get_peft_model_state_dict(self.model.denoiser), self.lora_config, out_dir / "lora")
        return {"lora": str(path.parent)}
