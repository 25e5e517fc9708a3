"""``QTALoRALinear``: an ``nn.Linear`` with INT8 frozen weights and a LoRA adapter trained through INT8 GEMMs."""
from __future__ import annotations

import torch
from torch import nn

from finetune.qta.function import WEIGHT_GRAD_MODES, qta_lora_linear
from finetune.quant.weight_init import quantize_weight


class LoRAWeight(nn.Module):
    """Holds one LoRA factor as ``.weight`` so state-dict keys read ``...lora_A.weight`` as in peft.

    Deliberately not an ``nn.Linear``: quantizers and LoRA injectors that look for Linear layers must not
    pick up the adapter's own factors.
    """

    def __init__(self, out_features: int, in_features: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}"


class QTALoRALinear(nn.Module):
    """``y = x Wᵀ + b + (alpha / r) · (x Aᵀ) Bᵀ`` with ``W`` frozen as per-output-channel symmetric INT8.

    The codes come from ``finetune.quant``'s weight quantizer (symmetric, ``bits`` ≤ 8, ``init``
    ``"minmax"`` — ``s = max|W[o]| / 127`` at 8 bits — or ``"clip"``), as signed values ``W_q − z`` in
    ``[−2**(bits−1), 2**(bits−1) − 1]``, which the INT8 GEMMs take whatever ``bits`` is.
    Buffers: ``qweight`` ``[O, I]`` int8, ``w_scale`` ``[O]`` float32 (``W ≈ w_scale[:, None] · qweight``).
    Parameters: ``lora_A.weight`` ``[r, I]`` (Kaiming-uniform, ``a = √5``, as peft), ``lora_B.weight``
    ``[O, r]`` (zeros, so the adapter starts as a no-op), ``bias`` ``[O]`` (frozen copy of the base bias).
    The GEMMs run on INT8 operands (:class:`~finetune.qta.function.QTALoRAFunction`); ``weight_grad``
    chooses INT8 (default) or float32 GEMMs for the LoRA weight gradients. No LoRA dropout (peft's default
    of 0): the base layer and LoRA's down-projection share one quantized input and one GEMM.
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 4.0, weight_grad: str = "int8", bits: int = 8,
                 init: str = "minmax"):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"QTALoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if weight_grad not in WEIGHT_GRAD_MODES:
            raise ValueError(f"weight_grad must be one of {WEIGHT_GRAD_MODES}, got {weight_grad!r}")
        w = base.weight.detach()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        self.weight_grad = weight_grad
        self.bits = bits
        codes, zero, scale = quantize_weight(w, bits, init, symmetric=True)
        self.register_buffer("qweight", (codes.to(torch.int16) - zero.to(torch.int16)[:, None]).to(torch.int8))
        self.register_buffer("w_scale", scale)
        if base.bias is not None:
            self.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.lora_A = LoRAWeight(r, self.in_features, device=w.device, dtype=w.dtype)
        self.lora_B = LoRAWeight(self.out_features, r, device=w.device, dtype=w.dtype)
        # A ~ N(0, 1/r²), B = 0: the init of the ``lora`` baseline (peft's "gaussian", as diffusers' LoRA
        # scripts configure it), so both start from the same ΔW = 0 with the same A scale and learn alike
        nn.init.normal_(self.lora_A.weight, std=1.0 / r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qta_lora_linear(x, self.qweight, self.w_scale, self.bias, self.lora_A.weight, self.lora_B.weight,
                               self.scaling, self.weight_grad)

    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """The frozen base weight as the INT8 codes represent it, ``[O, I]`` float32."""
        return self.qweight.float() * self.w_scale[:, None]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha:g}, weight_grad={self.weight_grad!r}, bias={self.bias is not None}")
