"""INT8 GEMM building blocks: dynamic row-wise quantization and ``torch._int_mm`` with its constraints.

Row-wise symmetric quantization of a ``[M, K]`` tensor ``x``: ``s[m] = max_k |x[m, k]| / 127`` and
``x_q[m, k] = round(x[m, k] / s[m])`` in ``[−127, 127]`` (int8). A product of two such operands, quantized
along the reduction dimension ``K`` on both sides, factors exactly::

    (x W)[m, n] ≈ s_x[m] · s_w[n] · Σ_k x_q[m, k] · w_q[k, n]       (INT32 accumulation)

so every per-row scale of the left operand and per-column scale of the right one stays outside the
integer GEMM. Scales along ``K`` cannot; callers fold them into an operand before quantizing it.

``torch._int_mm(a [M, K] int8, b [K, N] int8) -> [M, N] int32``:

* CPU (torch 2.13, oneDNN): no shape or layout constraint (checked for M, K, N from 1 up, contiguous and
  transposed operands); uses VNNI int8 dot products where the CPU has them.
* CUDA (cuBLAS): ``M > 16``, ``K`` and ``N`` multiples of 8. :func:`int_mm` zero-pads to satisfy them (zero
  rows/columns add nothing to the sums) and slices the result back.
* elsewhere, or where the kernel is missing: an exact float64 GEMM (|sum| < 2**53 for any K < 5·10**11).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

QMAX = 127
_TINY = torch.finfo(torch.float32).tiny


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_q [M, K] int8, s [M, 1] float32)`` with ``x ≈ s · x_q`` (see module doc). ``x`` is ``[M, K]``."""
    x = x.float()
    scale = x.abs().amax(1, keepdim=True).clamp_min_(_TINY).div_(QMAX)
    # |x / s| <= 127 by construction, so no clamp is needed before the cast.
    return (x / scale).round_().to(torch.int8), scale


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _int_mm_cuda(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[1]
    mp, kp, np_ = max(m, 17), _round_up(k, 8), _round_up(n, 8)
    if (mp, kp, np_) != (m, k, n):
        a = F.pad(a, (0, kp - k, 0, mp - m))
        b = F.pad(b, (0, np_ - n, 0, kp - k))
    return torch._int_mm(a.contiguous(), b.contiguous())[:m, :n]


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b`` for int8 ``a`` ``[M, K]`` and ``b`` ``[K, N]``, as int32 ``[M, N]``."""
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"int_mm needs int8 [M, K] @ [K, N], got {a.dtype} {tuple(a.shape)} @ {b.dtype} {tuple(b.shape)}")
    if a.shape[0] == 0 or b.shape[1] == 0 or a.shape[1] == 0:
        return torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32, device=a.device)
    try:
        if a.device.type == "cpu":
            return torch._int_mm(a, b)
        if a.device.type == "cuda":
            return _int_mm_cuda(a, b)
    except (RuntimeError, NotImplementedError, AttributeError):
        pass  # no int8 kernel for this build/device: fall through to the exact float64 product
    return (a.double() @ b.double()).to(torch.int32)
