"""Exact split of float32 values into a bfloat16 part and a 16-bit remainder (Apex/TE "param remainders").

A float32 ``x`` has 32 bits ``u``. Its upper half ``u >> 16`` is ``x`` truncated to bfloat16; the lower half
``u & 0xFFFF`` read as a signed int16 ``rem`` says how far below the next bfloat16 ``x`` lies when negative
(lower half >= 0x8000). So::

    rem = int16(u & 0xFFFF)             # remainder, signed
    hi  = (u >> 16) + (rem < 0)         # bfloat16 bits: x rounded to the nearest bfloat16
        = (u + 0x8000) >> 16
    u   = (hi << 16) + rem              # exact reconstruction (signed rem)

This is the split of NVIDIA Apex's ``DistributedFusedAdam(store_param_remainders=True)`` and Transformer
Engine's ``FusedAdam`` (kernel ``AdamFunctorMasterParamRemainder``), and the "16+16" scheme of
Lewandowski & Kosson (arXiv 2309.12381).

Rounding: ``hi`` is round-to-nearest with ties **away from zero** (a lower half of exactly 0x8000 rounds the
magnitude up). PyTorch's ``x.to(torch.bfloat16)`` rounds ties to even instead; the two differ only at exact
ties (2**-16 of uniformly random bit patterns). Ties-to-even cannot be used here: for an even ``hi`` both
``hi·2**16 − 0x8000`` and ``hi·2**16 + 0x8000`` would round to ``hi``, and 16 bits cannot tell them apart.
Round-to-nearest-even + an int16 remainder is therefore not an exact representation; this split is.
"""
from __future__ import annotations

import torch


def split_fp32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi bfloat16, rem int16)`` of a float32 tensor (any shape; outputs have the same shape)."""
    if x.dtype != torch.float32:
        raise TypeError(f"split_fp32 needs a float32 tensor, got {x.dtype}")
    hi = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    rem = torch.empty(x.shape, dtype=torch.int16, device=x.device)
    split_fp32_into_(x.clone(memory_format=torch.contiguous_format), hi, rem)
    return hi, rem


def split_fp32_into_(x: torch.Tensor, hi: torch.Tensor, rem: torch.Tensor) -> None:
    """:func:`split_fp32` writing into existing ``hi`` (bfloat16) and ``rem`` (int16); **consumes** ``x``
    (contiguous float32, overwritten as scratch space). Four elementwise passes, no allocation."""
    bits = x.view(torch.int32)
    rem.copy_(bits)  # int32 -> int16 keeps the low 16 bits (two's complement)
    # Adding 0x8000 carries into the upper half exactly when the low half is >= 0x8000, i.e. when rem < 0.
    bits.add_(0x8000).bitwise_right_shift_(16)
    hi.view(torch.int16).copy_(bits)


def merge_fp32(hi: torch.Tensor, rem: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_fp32`: the exact float32 values (a new tensor).

    ``(hi − [rem < 0]) · 2**16 + (rem mod 2**16)`` equals ``hi · 2**16 + rem`` with ``rem`` signed.
    """
    if hi.dtype != torch.bfloat16 or rem.dtype != torch.int16 or hi.shape != rem.shape:
        raise TypeError(f"merge_fp32 needs bfloat16 and int16 tensors of one shape, got {hi.dtype} "
                        f"{tuple(hi.shape)} and {rem.dtype} {tuple(rem.shape)}")
    bits = hi.contiguous().view(torch.int16).to(torch.int32)
    bits.bitwise_left_shift_(16).add_(rem)
    return bits.view(torch.float32)


def round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to bfloat16 exactly as :func:`split_fp32` does (nearest, ties away from zero)."""
    return split_fp32(x)[0]
