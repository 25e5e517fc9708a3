"""QTA LoRA: fully quantized LoRA training (software counterpart of CDM-QTA, arXiv 2504.07998).

    from finetune.quant import quantize_
    from finetune.qta import QTALoRAQuantConfig, qta_lora_parameters, qta_lora_state_dict
    unet.requires_grad_(False)
    quantize_(unet, QTALoRAQuantConfig(r=4, alpha=4))    # to_q/to_k/to_v/to_out.0 -> QTALoRALinear
    opt = torch.optim.AdamW(qta_lora_parameters(unet), lr=1e-4)
    ...
    lora = qta_lora_state_dict(unet)                      # {"...to_q.lora_A.weight": ..., ...}
"""
from finetune.qta.apply import (DEFAULT_TARGETS, QTALoRAQuantConfig, apply_qta_lora_, qta_lora_layers,
                                qta_lora_parameters, qta_lora_state_dict)
from finetune.qta.function import QTALoRAFunction, qta_lora_linear
from finetune.qta.int8_ops import int_mm, quantize_rowwise
from finetune.qta.layer import LoRAWeight, QTALoRALinear

__all__ = ["QTALoRAQuantConfig", "QTALoRALinear", "LoRAWeight", "QTALoRAFunction", "qta_lora_linear",
           "apply_qta_lora_", "qta_lora_state_dict", "qta_lora_parameters", "qta_lora_layers", "DEFAULT_TARGETS", "int_mm",
           "quantize_rowwise"]
