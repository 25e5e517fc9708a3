"""Per-tensor symmetric activation fake-quantization with a straight-through gradient.

``x̂ = clamp(round(x / a), −2**(b−1), 2**(b−1) − 1) · a`` for a per-tensor scale ``a > 0``. The backward
pass is the identity (straight-through estimator over both the rounding and the clamp), which needs no
saved mask: ``x̂ = x + (x̂ − x).detach()`` keeps nothing alive for backward.

The scale is either set, calibrated (``calibrate_activations``: the largest |x| seen over some forward
passes, ``a = max|x| / (2**(b−1) − 1)``), or — when neither happened — computed per call from the
current tensor (dynamic quantization).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

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


@contextmanager
def calibrate_activations(model: nn.Module):
    """Within the block, quantized layers with ``a_bits`` record max|input| instead of quantizing.

    On exit each observed layer's ``a_scale`` becomes ``max|x| / (2**(a_bits−1) − 1)``. Layers that saw
    no input keep their previous scale.
    """
    from finetune.quant.layers import QuantLayer

    layers = [m for m in model.modules() if isinstance(m, QuantLayer) and m.a_bits is not None]
    for m in layers:
        m._calibrating, m._a_observed_max = True, None
    try:
        yield model
    finally:
        for m in layers:
            seen = m._a_observed_max
            m._calibrating, m._a_observed_max = False, None
            if seen is not None:
                m.a_scale.fill_(max(float(seen), torch.finfo(torch.float32).tiny) / (2 ** (m.a_bits - 1) - 1))
