"""One quantizer: ``quantize_(model, config)`` with a :class:`QuantConfig` (PEQA, TuneQDM, a BitPlan from
``mandc quantize``) or a registered config such as ``finetune.qta.QTALoRAQuantConfig``.

Typical use::

    from finetune.quant import QuantConfig, quantize_, mark_only_scales_trainable_, follow_timesteps_
    quantize_(unet, QuantConfig(bits=4, separable=True, n_timestep_sets=2))   # TuneQDM
    quantize_(unet, QuantConfig(plan="plan.json", separable=True, n_timestep_sets=2))  # ... on MPQ-Diff's model
    mark_only_scales_trainable_(unet)
    follow_timesteps_(unet)            # the scale set follows each forward's timestep argument
"""
from finetune.quant.act_quant import fake_quantize_activation
from finetune.quant.bitplan import BITPLAN_RECIPE, BitPlan, BitPlanError, plan_data
from finetune.quant.config import ACT_SCALES, QuantConfig
from finetune.quant.functional import QuantMatmulFunction, dequantize, quant_matmul
from finetune.quant.layers import QuantConv2d, QuantLayer, QuantLinear
from finetune.quant.packing import pack_codes, unpack_codes
from finetune.quant.persistence import (load_quantized_, load_trainable_scales_, read_quantized_config,
                                        save_quantized, trainable_scale_state_dict)
from finetune.quant.quantize import (QuantSummary, calibrate_activations, load_plan, mark_only_scales_trainable_,
                                     quant_summary, quantize_, quantized_weight_bytes, read_plan,
                                     register_quantize_handler, resolve_quant_config, resolve_plan, scale_parameters,
                                     set_activation_ranges_)
from finetune.quant.timestep import (clear_timestep_, follow_timesteps_, set_timestep_, timestep_scales,
                                     timestep_set_index)
from finetune.quant.weight_init import quantize_weight

__all__ = [
    "QuantLinear", "QuantConv2d", "QuantLayer", "QuantMatmulFunction", "quant_matmul", "dequantize",
    "quantize_", "QuantConfig", "ACT_SCALES", "register_quantize_handler", "resolve_quant_config",
    "BitPlan", "BitPlanError", "BITPLAN_RECIPE", "plan_data",
    "QuantSummary", "quant_summary", "quantized_weight_bytes", "load_plan", "read_plan", "resolve_plan",
    "scale_parameters", "mark_only_scales_trainable_",
    "set_timestep_", "clear_timestep_", "timestep_scales", "timestep_set_index", "follow_timesteps_",
    "calibrate_activations", "set_activation_ranges_", "fake_quantize_activation",
    "save_quantized", "load_quantized_", "read_quantized_config", "trainable_scale_state_dict",
    "load_trainable_scales_", "pack_codes", "unpack_codes", "quantize_weight",
]
