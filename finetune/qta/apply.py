"""Injecting QTA LoRA into a model and reading the adapter back out (peft-compatible keys)."""
from __future__ import annotations

import re

from torch import nn

from finetune.qta.layer import QTALoRALinear

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # a diffusers denoiser's attention projections (LoRA's default)


def _targeted(name: str, targets) -> bool:
    """peft semantics: a string is a regex that must match the whole name; a list matches a name equal to an
    entry or ending in ``"." + entry``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_qta_lora_(model: nn.Module, r: int = 4, alpha: float = 4.0, target_modules=DEFAULT_TARGETS,
                    weight_grad: str = "int8") -> nn.Module:
    """Replace each targeted ``nn.Linear`` of ``model`` by a :class:`QTALoRALinear`, in place; returns ``model``.

    Only the new LoRA factors are trainable in the replaced layers; the rest of the model is left as it is
    (freeze it first with ``model.requires_grad_(False)``, as diffusers' LoRA scripts do).
    """
    if isinstance(target_modules, (list, tuple)) and not target_modules:
        raise ValueError("target_modules is empty")
    hits = [(n, m) for n, m in model.named_modules() if n and _targeted(n, target_modules)]
    if not hits:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        shown = ", ".join(repr(n) for n in linears[:6]) + (f", ... ({len(linears)} in all)" if len(linears) > 6 else "")
        raise ValueError(f"target_modules {target_modules!r} match no module of {type(model).__name__}; "
                         f"its nn.Linear layers are: {shown or 'none'}")
    for name, m in hits:
        if isinstance(m, QTALoRALinear):
            raise ValueError(f"module {name!r} already carries a QTA LoRA adapter")
        if not isinstance(m, nn.Linear):
            raise ValueError(f"target module {name!r} is a {type(m).__name__}; QTA LoRA applies to nn.Linear only")
    for name, m in hits:
        parent_name, _, child = name.rpartition(".")
        layer = QTALoRALinear(m, r=r, alpha=alpha, weight_grad=weight_grad)
        layer.train(m.training)
        setattr(model.get_submodule(parent_name), child, layer)
    return model


def qta_lora_layers(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, QTALoRALinear)}


def qta_lora_parameters(model: nn.Module) -> list:
    """The trainable LoRA factors of all QTA layers (for the optimizer)."""
    return [p for m in qta_lora_layers(model).values() for p in (m.lora_A.weight, m.lora_B.weight)]


def qta_lora_state_dict(model: nn.Module) -> dict:
    """``{"<layer>.lora_A.weight": [r, I], "<layer>.lora_B.weight": [O, r]}`` — peft's key layout (what
    ``get_peft_model_state_dict`` returns), ready for diffusers' LoRA conversion and saving."""
    out = {}
    for name, m in qta_lora_layers(model).items():
        out[f"{name}.lora_A.weight"] = m.lora_A.weight.detach().clone()
        out[f"{name}.lora_B.weight"] = m.lora_B.weight.detach().clone()
    if not out:
        raise ValueError(f"{type(model).__name__} has no QTA LoRA layer; call apply_qta_lora_ first")
    return out
