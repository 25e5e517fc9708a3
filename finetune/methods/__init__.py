"""Fine-tuning methods, one module each, registered by name (peft style).

================  =====================================================================================
``full``          full fine-tuning of the denoiser (baseline)
``lora``          full-precision LoRA on the attention projections (baseline)
``ti``            textual inversion, full precision (baseline)
``peqa``          quantized denoiser, only the per-output-channel scale offsets train
``tuneqdm``       PEQA + separable input-channel scales + timestep-specific scale sets
``zo-ti``         zeroth-order textual inversion on an INT8 model, forward passes only (ZOODiP)
``qta-lora``      LoRA over INT8 base weights with INT8 GEMMs in forward and backward
================  =====================================================================================
"""
from finetune.methods import full, lora, qta_lora, scales, ti, zo_ti  # noqa: F401  (fill the registry)
from finetune.methods.base import Method, MethodConfig, TrainData
from finetune.methods.registry import METHODS, get_method, register

__all__ = ["METHODS", "Method", "MethodConfig", "TrainData", "get_method", "register"]
