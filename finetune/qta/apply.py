"""Injecting QTA LoRA into a model (a ``finetune.quant.quantize_`` transform) and reading the adapter back
out (peft-compatible keys).

``quantize_(model, QTALoRAQuantConfig(r=4, alpha=4))`` replaces each targeted ``nn.Linear`` by a
:class:`QTALoRALinear` whose frozen codes come from the shared weight quantizer. With ``plan`` (a BitPlan
from ``mandc quantize``, or a ``{layer: bits}`` mapping) the targeted layers take the plan's weight bits
(clipping init, symmetric: the plan's recipe) and every other layer the plan names becomes a frozen
``QuantLinear`` / ``QuantConv2d`` exactly as ``quantize_(model, QuantConfig(plan=plan))`` makes it. The
targeted layers keep QTA's own activation quantization (dynamic row-wise INT8, the GEMMs need it), so
the plan's ``a_bits`` and activation ranges apply to the other layers only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from finetune.quant import (QuantConfig, quantize_, register_quantize_handler, resolve_quant_config, resolve_plan,
                            scale_parameters)
from finetune.qta.layer import QTALoRALinear

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class QTALoRAQuantConfig:
    """Config of the QTA LoRA transform of :func:`~finetune.quant.quantize_` (see module doc)."""

    r: int = 4                               # LoRA rank
    alpha: float = 4.0                       # LoRA scaling alpha / r
    target_modules: object = DEFAULT_TARGETS  # names / suffixes (list) or one regex (str), peft semantics
    weight_grad: str = "int8"                # LoRA weight-gradient GEMMs: "int8" or "fp32"
    bits: int = 8                            # weight bits of the targeted layers when the plan names none
    plan: object = None                      # BitPlan or {layer: bits}: see module doc


def _targeted(name: str, targets) -> bool:
    """peft semantics: a string is a regex that must match the whole name; a list matches a name equal to an
    entry or ending in ``"." + entry``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_qta_lora_(model: nn.Module, r: int = 4, alpha: float = 4.0, target_modules=DEFAULT_TARGETS,
                    weight_grad: str = "int8") -> nn.Module:
    """``quantize_(model, QTALoRAQuantConfig(r, alpha, target_modules, weight_grad))``; returns ``model``."""
    return quantize_(model, QTALoRAQuantConfig(r=r, alpha=alpha, target_modules=target_modules,
                                               weight_grad=weight_grad))


@register_quantize_handler(QTALoRAQuantConfig)
def _apply_qta_lora_(model: nn.Module, config: QTALoRAQuantConfig) -> nn.Module:
    """Replace each targeted ``nn.Linear`` of ``model`` by a :class:`QTALoRALinear`, in place; returns ``model``.

    Only the new LoRA factors are trainable in the replaced layers (and nothing in the layers the plan
    quantizes besides them); the rest of the model is left as it is (freeze it first with
    ``model.requires_grad_(False)``, as diffusers' LoRA scripts do).
    """
    c, target_modules = config, config.target_modules
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
    bits, init = {}, "minmax"
    if c.plan is not None:
        resolved = resolve_quant_config(QuantConfig(plan=c.plan))
        bits = {n: s["w_bits"] for n, s in resolve_plan(model, resolved.layers).items()}
        init = resolved.init
        others = [n for n in bits if n not in dict(hits)]
        if others:  # the plan's other layers: frozen, as QuantConfig(plan=plan) quantizes them
            quantize_(model, QuantConfig(plan=c.plan, skip=tuple(n for n, _ in hits if n in bits)))
            for p in scale_parameters(model):
                p.requires_grad_(False)
    for name, m in hits:
        parent_name, _, child = name.rpartition(".")
        layer = QTALoRALinear(m, r=c.r, alpha=c.alpha, weight_grad=c.weight_grad, bits=bits.get(name, c.bits),
                              init=init if name in bits else "minmax")
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
