"""Per-output-channel weight quantizers: min–max and clipping-search initialisation.

A weight ``W`` of shape ``[O, ...]`` is viewed as ``[O, K]``. Each row ``o`` gets a scale ``s[o] > 0`` and
an integer zero point ``z[o]``; codes are ``W_q = clamp(round(W / s) + z, 0, 2**b - 1)`` and the weight is
reconstructed as ``s[o] · (W_q − z[o])``.

* asymmetric (default): the range ``[min(W[o], 0), max(W[o], 0)]`` (zero always representable, as in
  PyTorch observers and Q-Diffusion's ``UniformAffineQuantizer``) is mapped onto ``[0, 2**b − 1]``;
* symmetric: ``s = max|W[o]| / (2**(b−1) − 1)`` and ``z = 2**(b−1)`` fixed, so ``W_q − z`` is the usual
  signed code in ``[−(2**(b−1) − 1), 2**(b−1) − 1]``.

``"clip"`` shrinks the range by a ratio ``r`` from a grid (default 0.5…1.0) and keeps, per row, the ratio
with the smallest weight MSE ``mean_k (ŝ(W_q − z) − W)²`` — the clipping search of Q-Diffusion / PEQA
reproductions (they search with an Lp norm over a grid of shrink factors).
"""
from __future__ import annotations

import torch

from finetune.quant.packing import check_bits

INITS = ("minmax", "clip")
DEFAULT_CLIP_RATIOS = tuple(round(0.5 + 0.025 * i, 3) for i in range(21))  # 0.5, 0.525, ..., 1.0


def _affine_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    """Scale and zero point ``[O]`` (float) for per-row ranges ``lo <= 0 <= hi``."""
    if symmetric:
        qpos = 2 ** (bits - 1) - 1
        scale = torch.maximum(-lo, hi) / qpos
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        qmax = 2**bits - 1
        scale = (hi - lo) / qmax
        zero = None
    # An all-zero row has range 0: any positive scale reproduces it exactly (codes == zero point).
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if zero is None:
        zero = torch.clamp(torch.round(-lo / scale), 0, 2**bits - 1)
    return scale, zero


def _codes(w2d: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w2d / scale[:, None]) + zero[:, None], 0, 2**bits - 1)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def quantize_weight(weight: torch.Tensor, bits: int, init: str = "clip", symmetric: bool = False,
                    clip_ratios=DEFAULT_CLIP_RATIOS):
    """Quantize a weight per output channel.

    Args:
        weight: ``[O, ...]`` float tensor (Linear ``[O, I]``, Conv2d ``[O, C/g, kh, kw]``).
        bits: code width, 2..8.
        init: ``"minmax"`` or ``"clip"`` (per-row clipping search over ``clip_ratios``).
        symmetric: symmetric codes around a fixed zero point ``2**(bits-1)``.

    Returns:
        ``(codes [O, K] uint8, zero_point [O] uint8, scale [O] float32)`` with ``K = weight[0].numel()``.
    """
    check_bits(bits)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not torch.is_floating_point(weight) or weight.dim() < 2:
        raise ValueError(f"weight must be a float tensor with >= 2 dims, got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach().reshape(weight.shape[0], -1).float()
    if not _is_fake(w) and not torch.isfinite(w).all():  # a fake tensor (the memory estimate's dry run) has no values
        raise ValueError("weight holds NaN or Inf values; it cannot be quantized")
    lo = w.amin(1).clamp(max=0)
    hi = w.amax(1).clamp(min=0)

    if init == "minmax":
        scale, zero = _affine_params(lo, hi, bits, symmetric)
    else:
        ratios = [float(r) for r in clip_ratios]
        if not ratios or any(not 0 < r <= 1 for r in ratios):
            raise ValueError(f"clip_ratios must be a non-empty list of values in (0, 1], got {clip_ratios!r}")
        best_err = torch.full_like(lo, float("inf"))
        scale = torch.ones_like(lo)
        zero = torch.zeros_like(lo)
        for r in ratios:
            s, z = _affine_params(lo * r, hi * r, bits, symmetric)
            err = ((_codes(w, s, z, bits) - z[:, None]) * s[:, None] - w).pow_(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)

    codes = _codes(w, scale, zero, bits).to(torch.uint8)
    return codes, zero.to(torch.uint8), scale.float()


def dequantize_codes(codes: torch.Tensor, zero: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale[o] · (codes[o, k] − zero[o])`` in ``scale.dtype``; shapes ``[O, K]``, ``[O]``, ``[O]``."""
    return (codes.to(scale.dtype) - zero.to(scale.dtype)[:, None]) * scale[:, None]
