"""Per-tensor symmetric activation fake-quantization with a straight-through gradient.

``x̂ = clamp(round(x / a), −2**(b−1), 2**(b−1) − 1) · a`` for a per-tensor scale ``a > 0``. The backward
pass is the identity (straight-through estimator over both the rounding and the clamp), which needs no
saved mask: ``x̂ = x + (x̂ − x).detach()`` keeps nothing alive for backward.

The scale is either fixed (from a range ``max|x|`` measured on calibration data, ``a = max|x| / (2**(b−1) − 1)``:
``finetune.quant.set_activation_ranges_`` / ``calibrate_activations``), or — when it is not — computed per
call from the current tensor (dynamic quantization).
"""
from __future__ import annotations

import torch

MIN_A_BITS, MAX_A_BITS = 2, 16


def check_a_bits(a_bits, what: str = "a_bits"):
    """``None`` (no activation quantization) or an int in 2..16; raise ``ValueError`` otherwise."""
    if a_bits is None:
        return None
    if isinstance(a_bits, bool) or not isinstance(a_bits, int) or not MIN_A_BITS <= a_bits <= MAX_A_BITS:
        raise ValueError(f"{what} must be None or an integer in {MIN_A_BITS}..{MAX_A_BITS}, got {a_bits!r}")
    return a_bits


def activation_scale(x: torch.Tensor, a_bits: int) -> torch.Tensor:
    """Dynamic per-tensor scale ``max|x| / (2**(b−1) − 1)`` (0-d, float32, > 0)."""
    amax = x.detach().abs().amax().float()
    return torch.clamp(amax, min=torch.finfo(torch.float32).tiny) / (2 ** (a_bits - 1) - 1)


def fake_quantize_activation(x: torch.Tensor, a_bits: int, scale: torch.Tensor) -> torch.Tensor:
    """``x̂`` as above, same shape and dtype as ``x``; gradient w.r.t. ``x`` is the identity."""
    with torch.no_grad():
        s = scale.to(torch.float32)
        xq = torch.clamp(torch.round(x.float() / s), -(2 ** (a_bits - 1)), 2 ** (a_bits - 1) - 1).mul_(s)
        delta = xq.to(x.dtype) - x
    return x + delta
