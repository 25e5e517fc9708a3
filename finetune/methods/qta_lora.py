"""``qta-lora``: fully quantized LoRA training (software counterpart of CDM-QTA, arXiv 2504.07998).

Frozen base weights of the targeted Linear layers become per-channel symmetric INT8 codes; LoRA A, B
train; the forward, input-gradient and LoRA weight-gradient GEMMs run on INT8 operands with dynamic
row-wise scales and INT32 accumulation (``torch._int_mm``), and ΔW = BA is never formed
(:mod:`finetune.qta.function`). Same recipe as the ``lora`` baseline (rank 4, alpha 4, lr 1e-4, A ~
N(0, 1/r²), the attention projections ``to_q/k/v/out.0``); pass ``target_modules`` to add the
feed-forward projections, where most of a transformer's GEMM time is (the memory benchmark's QTA section
does, for both methods).
Saved in the same diffusers/peft LoRA format as ``lora``, so the adapter also loads onto a
full-precision model.

With ``plan`` (a BitPlan from ``mandc quantize``, JSON path or dict) the targeted layers' codes take the
plan's weight bits (symmetric, clipping init) and the plan's other layers are frozen exactly as in the
model MPQ-Diff scored; the targeted layers keep QTA's dynamic INT8 activations (the plan's ``a_bits``
apply to the other layers). See :mod:`finetune.qta.apply`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig

from finetune.methods.base import Method, option
from finetune.methods.lora import DEFAULT_TARGETS, LoraMethodConfig, save_lora
from finetune.methods.registry import register


@dataclass
class QTALoraConfig(LoraMethodConfig):
    weight_grad: str = option("int8", "LoRA weight-gradient GEMMs: 'int8' or 'fp32'")
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS),
                                      metadata={"help": "Linear module names (suffixes) that get adapters"})
    plan: str | dict | None = option(None, "a BitPlan from mandc quantize (JSON path or dict): targeted layers at "
                                           "its weight bits, its other layers frozen as MPQ-Diff scored them; "
                                           "None: INT8 targeted layers only")

    def validate(self) -> None:
        super().validate()
        if self.plan is not None:
            from finetune.quant import QuantConfig, plan_data, resolve_quant_config

            self.plan = plan_data(self.plan)
            resolve_quant_config(QuantConfig(plan=self.plan))  # a bad plan fails before the model is loaded


@register
class QTALora(Method):
    name = "qta-lora"
    Config = QTALoraConfig
    quantized = True

    def setup_(self) -> None:
        from finetune.quant import quantize_
        from finetune.qta import QTALoRAQuantConfig

        c, den = self.config, self.model.denoiser
        den.requires_grad_(False)
        quantize_(den, QTALoRAQuantConfig(r=c.rank, alpha=c.alpha, target_modules=tuple(c.target_modules),
                                          weight_grad=c.weight_grad, plan=c.plan))
        den.train()

    def trainable(self) -> list[torch.Tensor]:
        from finetune.qta import qta_lora_parameters

        return qta_lora_parameters(self.model.denoiser)

    def state_dict(self) -> dict[str, torch.Tensor]:
        from finetune.qta import qta_lora_state_dict

        return qta_lora_state_dict(self.model.denoiser)

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        own = dict(self.model.denoiser.named_parameters())
        with torch.no_grad():
            for k, v in sd.items():
                own[k].copy_(v)

    def save(self, out_dir: Path) -> dict[str, str]:
        c = self.config
        cfg = LoraConfig(r=c.rank, lora_alpha=c.alpha, target_modules=list(c.target_modules))
        path = save_lora(self.model, self.state_dict(), cfg, out_dir / "lora")
        return {"lora": str(path.parent)}
