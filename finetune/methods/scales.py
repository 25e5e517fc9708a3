"""``peqa`` and ``tuneqdm``: fine-tune only the quantization scales of a quantized denoiser.

- **PEQA**: Ŵ = (s_out + Δs_out) ⊙ (W_q − z); only Δs_out (one value per output channel) trains.
- **TuneQDM** (Ryu et al., ECCV 2024): separable scales Ŵ = (s_out + Δs_out)[:, None]·(W_q − z)·s_in[None, :]
  (s_in over input channels, initialised to 1) and N timestep-specific scale sets, set ⌊t·N/T⌋ used for
  timestep t in training and sampling. Both parts are switchable for the ablation.

Recipe from the paper: 4-bit weights, batch 1, AdamW, lr ≈ 3e-6 (SD scale), 400 steps. The integer codes
are frozen; Ŵ is recomputed transiently inside the layer's autograd function (never stored for backward),
which is what keeps TuneQDM's peak memory at PEQA's (:mod:`finetune.quant.functional`).
Artefacts: the whole quantized denoiser (codes + trained scales) and the trained scales alone, both
safetensors.

Without a plan: every Linear/Conv2d at ``bits``, asymmetric codes, clipping-search init, float
activations (the papers' recipe). With ``plan`` a BitPlan from ``mandc quantize`` (its JSON path or its
dict), training starts from exactly the model MPQ-Diff scored: the plan's per-layer weight and activation
bits, symmetric codes, clipping init, and activation scales fixed from the plan's ``act_ranges`` (measured
on MPQ-Diff's calibration batch, so the method needs no calibration data of its own). A plain
``{layer: bits}`` mapping keeps this method's recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from finetune.methods.base import Method, MethodConfig, option
from finetune.methods.registry import register


@dataclass
class PEQAConfig(MethodConfig):
    lr: float = option(3e-6, "learning rate (TuneQDM/PEQA recipe on SD; small zoo models take ~1e-4)")
    bits: int = option(4, "weight bits (2–8), ignored when plan is given")
    plan: str | dict | None = option(None, "per-layer bits: a BitPlan from mandc quantize (JSON path or dict: the "
                                           "model MPQ-Diff scored, symmetric with its calibrated activation scales) "
                                           "or a {layer: bits} mapping")
    init: str = option("clip", "scale initialisation: 'minmax' or 'clip' (per-channel clipping search)")
    separable: bool = option(False, "TuneQDM per-input-channel scales s_in")
    n_timestep_sets: int = option(1, "TuneQDM timestep-specific scale sets N (1: one set)")

    def validate(self) -> None:
        super().validate()
        from finetune.quant.packing import check_bits

        check_bits(self.bits)
        if self.n_timestep_sets < 1:
            raise ValueError(f"n_timestep_sets must be ≥ 1, got {self.n_timestep_sets}")
        from finetune.quant import plan_data

        self.plan = plan_data(self.plan)
        self.quant_config()  # a bad plan or a contradiction with a BitPlan's recipe fails here, before loading

    def quant_config(self):
        """The :class:`~finetune.quant.QuantConfig` this method quantizes the denoiser with."""
        from finetune.quant import QuantConfig, resolve_quant_config

        cfg = QuantConfig(bits=self.bits, plan=self.plan, init=self.init, separable=self.separable,
                          n_timestep_sets=self.n_timestep_sets)
        resolve_quant_config(cfg)
        return cfg


@dataclass
class TuneQDMConfig(PEQAConfig):
    separable: bool = option(True, "per-input-channel scales s_in (ablation: False)")
    n_timestep_sets: int = option(2, "timestep-specific scale sets N (2 was best in the paper's ablation; "
                                     "its public code defaults to 4; ablation: 1)")


@register
class PEQA(Method):
    name = "peqa"
    Config = PEQAConfig
    quantized = True

    def setup_(self) -> None:
        from finetune.quant import follow_timesteps_, mark_only_scales_trainable_, quantize_

        c, den = self.config, self.model.denoiser
        quantize_(den, c.quant_config())
        if c.n_timestep_sets > 1:  # TuneQDM: the scale set follows the timestep, in training and sampling
            follow_timesteps_(den, self.model.num_train_timesteps)
        mark_only_scales_trainable_(den)
        den.train()

    def trainable(self) -> list[torch.Tensor]:
        from finetune.quant import scale_parameters

        return scale_parameters(self.model.denoiser)

    def state_dict(self) -> dict[str, torch.Tensor]:
        from finetune.quant import trainable_scale_state_dict

        return trainable_scale_state_dict(self.model.denoiser)

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        from finetune.quant import load_trainable_scales_

        load_trainable_scales_(self.model.denoiser, sd)

    def save(self, out_dir: Path) -> dict[str, str]:
        from finetune.quant import save_quantized

        out_dir.mkdir(parents=True, exist_ok=True)
        q = save_quantized(self.model.denoiser, out_dir / "quantized_denoiser.safetensors")
        s = out_dir / "scales.safetensors"
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, s)
        return {"quantized_denoiser": str(q), "scales": str(s)}


@register
class TuneQDM(PEQA):
    name = "tuneqdm"
    Config = TuneQDMConfig
