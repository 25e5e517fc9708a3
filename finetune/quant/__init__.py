"""Quantized layers with trainable scales: PEQA and TuneQDM (separable, timestep-specific scales).

Typical use::

    from finetune.quant import quantize_, mark_only_scales_trainable_, timestep_scales
    quantize_(unet, bits=4, init="clip", separable=True, n_timestep_sets=2)   # TuneQDM
    mark_only_scales_trainable_(unet)
    with timestep_scales(unet, timesteps):
        loss = ...
"""
from finetune.quant.act_quant import calibrate_activations, fake_quantize_activation
from finetune.quant.functional import QuantMatmulFunction, dequantize, quant_matmul
from finetune.quant.layers import QuantConv2d, QuantLayer, QuantLinear
from finetune.quant.packing import pack_codes, unpack_codes
from finetune.quant.persistence import (load_quantized_, load_trainable_scales_, read_quantized_config,
                                        save_quantized, trainable_scale_state_dict)
from finetune.quant.quantize import (QuantSummary, load_plan, mark_only_scales_trainable_, quant_summary,
                                     quantize_, quantized_weight_bytes, resolve_plan, scale_parameters)
from finetune.quant.timestep import clear_timestep_, set_timestep_, timestep_scales, timestep_set_index
from finetune.quant.weight_init import quantize_weight

__all__ = [
    "QuantLinear", "QuantConv2d", "QuantLayer", "QuantMatmulFunction", "quant_matmul", "dequantize",
    "quantize_", "QuantSummary", "quant_summary", "quantized_weight_bytes", "load_plan", "resolve_plan",
    "scale_parameters", "mark_only_scales_trainable_",
    "set_timestep_", "clear_timestep_", "timestep_scales", "timestep_set_index",
    "calibrate_activations", "fake_quantize_activation",
    "save_quantized", "load_quantized_", "read_quantized_config", "trainable_scale_state_dict",
    "load_trainable_scales_", "pack_codes", "unpack_codes", "quantize_weight",
]
