"""The memory-lean matmul behind :class:`QuantLinear` / :class:`QuantConv2d`.

With integer codes ``W_q`` (``[O, C, *k]``; a Linear has ``C = I`` and no kernel dims), zero points ``z``
``[O]``, frozen scale ``s_out`` ``[O]``, trainable ``Δs_out`` ``[O]`` and optional trainable ``s_in`` ``[C]``::

    s   = s_out + Δs_out
    D   = W_q − z[:, None]                                   # [O, C, *k], exact small integers
    Ŵ   = s[:, None] · D · s_in[None, :]                     # PEQA: s_in ≡ 1
    y   = x Ŵᵀ + b          (Linear)      y = conv2d(x, Ŵ) + b      (Conv2d)

Backward, with ``G = ∂L/∂Ŵ`` (``gᵀx`` for a Linear, the conv weight gradient for a Conv2d)::

    ∂L/∂x        = g Ŵ   (conv: transposed convolution with Ŵ)
    ∂L/∂Δs_out[o] = Σ_{c,k} G[o,c,k] · D[o,c,k] · s_in[c]
    ∂L/∂s_in[c]   = Σ_{o,k} G[o,c,k] · D[o,c,k] · s[o]
    ∂L/∂b         = Σ_n g[n, o]

Why a custom ``autograd.Function``: written with plain autograd, ``Ŵ = s·D·s_in`` keeps ``D`` (and for the
separable form ``s·D``) in full precision for every layer from forward until backward — the +42 % peak
memory a TuneQDM reproduction measured over PEQA. Here forward saves only the input, the packed codes (a
reference to the existing buffer) and the O(O + C) scales; ``Ŵ``, ``D`` and ``G`` exist only transiently
inside one layer's forward or backward, so PEQA and TuneQDM keep the same activations alive.

``Ŵ`` is computed in the scales' dtype and cast to the input dtype for the GEMM; the scale gradients are
reduced in the scales' dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
import torch.nn.functional as F

from finetune.quant.packing import unpack_codes


@dataclass(frozen=True)
class WeightLayout:
    """How the packed codes map to a weight: code width and the weight's shape ``[O, C, *k]``."""

    bits: int
    shape: tuple[int, ...]

    @property
    def out_channels(self) -> int:
        return self.shape[0]

    @property
    def in_channels(self) -> int:
        return self.shape[1]

    @property
    def row_size(self) -> int:
        return prod(self.shape[1:])


@dataclass(frozen=True)
class ConvArgs:
    """Integer conv hyper-parameters (padding already resolved to ints)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def centered_codes(qweight: torch.Tensor, zero_point: torch.Tensor, layout: WeightLayout,
                   dtype: torch.dtype) -> torch.Tensor:
    """``D = W_q − z`` as a ``[O, C, prod(k)]`` tensor of ``dtype`` (a fresh tensor, safe to modify)."""
    o, c = layout.out_channels, layout.in_channels
    codes = unpack_codes(qweight, layout.bits, layout.row_size)
    d = codes.to(dtype)
    d -= zero_point.to(dtype)[:, None]
    return d.view(o, c, -1)


def dequantize(qweight, zero_point, scale, s_in, layout: WeightLayout) -> torch.Tensor:
    """``Ŵ = scale[:, None] · (W_q − z) · s_in[None, :]`` with shape ``layout.shape``, dtype of ``scale``.

    ``scale`` is ``[O]``, ``s_in`` is ``[C]`` or ``None``.
    """
    w = centered_codes(qweight, zero_point, layout, scale.dtype)
    w *= scale[:, None, None]
    if s_in is not None:
        w *= s_in.to(scale.dtype)[None, :, None]
    return w.view(layout.shape)


class QuantMatmulFunction(torch.autograd.Function):
    """``y = op(x, Ŵ) + b`` that recomputes ``Ŵ`` in backward instead of keeping it (see module doc).

    Inputs: ``x`` (Linear ``[..., I]``; Conv2d ``[B, C, H, W]``), ``qweight`` packed uint8 codes,
    ``zero_point`` ``[O]`` uint8, ``s_out`` ``[O]``, ``delta_s_out`` ``[O]``, ``s_in`` ``[C]`` or ``None``,
    ``bias`` ``[O]`` or ``None``, ``layout`` (:class:`WeightLayout`), ``conv`` (:class:`ConvArgs`, or
    ``None`` for a Linear), ``sets``. Gradients flow to ``x``, ``delta_s_out``, ``s_in`` and ``bias``.

    With ``sets`` a LongTensor ``[B]`` (TuneQDM's timestep scale sets, one per sample), ``delta_s_out`` is
    ``[N, O]`` and ``s_in`` ``[N, C]``: sample ``b`` uses row ``sets[b]``. The batch is split by set only
    transiently (inside forward and inside backward); what is saved for backward is the one input ``x``, so
    a batch with mixed timestep intervals keeps no more activations than a single-set batch.
    """

    @staticmethod
    def forward(ctx, x, qweight, zero_point, s_out, delta_s_out, s_in, bias, layout, conv, sets=None):
        b = None if bias is None else bias.to(x.dtype)
        y = None
        for k, idx in _groups(sets):
            scale = s_out + (delta_s_out if idx is None else delta_s_out[k])
            sin = s_in if (idx is None or s_in is None) else s_in[k]
            w = dequantize(qweight, zero_point, scale, sin, layout).to(x.dtype)
            xk = x if idx is None else x.index_select(0, idx)
            yk = F.linear(xk, w, b) if conv is None else F.conv2d(
                xk, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
            del w, xk  # the transient Ŵ (and the group's input copy) die here; backward rebuilds them
            if idx is None:
                y = yk
            else:
                if y is None:
                    y = yk.new_empty((x.shape[0],) + yk.shape[1:])
                y.index_copy_(0, idx, yk)
        ctx.save_for_backward(x, qweight, zero_point, s_out, delta_s_out, s_in, sets)
        ctx.layout, ctx.conv = layout, conv
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, qweight, zero_point, s_out, delta_s_out, s_in, sets = ctx.saved_tensors
        layout, conv = ctx.layout, ctx.conv
        need_x, need_ds, need_sin, need_b = (ctx.needs_input_grad[i] for i in (0, 4, 5, 6))
        grad_x = torch.empty_like(x) if (need_x and sets is not None) else None
        d_scale = torch.zeros_like(delta_s_out) if (need_ds and sets is not None) else None
        d_sin = torch.zeros_like(s_in) if (need_sin and sets is not None) else None
        for k, idx in _groups(sets):
            scale = s_out + (delta_s_out if idx is None else delta_s_out[k])
            sin = s_in if (idx is None or s_in is None) else s_in[k]
            xk = x if idx is None else x.index_select(0, idx)
            gk = grad_out if idx is None else grad_out.index_select(0, idx)
            gx, ds, dsin = _backward_one(gk, xk, qweight, zero_point, scale, sin, layout, conv,
                                         need_x, need_ds, need_sin)
            if idx is None:
                grad_x, d_scale, d_sin = gx, ds, dsin
                continue
            if need_x:
                grad_x.index_copy_(0, idx, gx)
            if need_ds:
                d_scale[k] += ds
            if need_sin:
                d_sin[k] += dsin
        grad_b = None
        if need_b:
            grad_b = grad_out.reshape(-1, layout.out_channels).sum(0) if conv is None else grad_out.sum((0, 2, 3))
            grad_b = grad_b.to(ctx.bias_dtype)
        return grad_x, None, None, None, d_scale, d_sin, grad_b, None, None, None


def _groups(sets):
    """``[(set, sample indices)]`` of a per-sample set tensor; ``[(0, None)]`` (the whole batch) for ``None``."""
    if sets is None:
        return [(0, None)]
    return [(k, torch.nonzero(sets == k).squeeze(1)) for k in sets.unique().tolist()]


def _backward_one(grad_out, x, qweight, zero_point, scale, s_in, layout: WeightLayout, conv,
                  need_x: bool, need_ds: bool, need_sin: bool):
    """Gradients of one scale set's samples: ``(∂L/∂x, ∂L/∂Δs_out, ∂L/∂s_in)`` (``None`` where not needed)."""
    o, c = layout.out_channels, layout.in_channels
    need_g = need_ds or need_sin
    grad_x = grad_w = d_scale = d_sin = None
    if conv is None:
        g2 = grad_out.reshape(-1, o)
        if need_x:
            w = dequantize(qweight, zero_point, scale, s_in, layout).to(grad_out.dtype)
            grad_x = (g2 @ w).view(x.shape)
            del w
        if need_g:
            grad_w = g2.t() @ x.reshape(-1, c)  # [O, I]
    else:
        if need_x:
            w = dequantize(qweight, zero_point, scale, s_in, layout).to(grad_out.dtype)
        else:  # the kernel reads only the weight's shape when grad_input is not asked for
            w = x.new_empty(1).expand(layout.shape)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out, x, w, None, conv.stride, conv.padding, conv.dilation,
            False, [0, 0], conv.groups, [need_x, need_g, False])
        del w
    if need_g:
        # M[o, c] = Σ_k G[o, c, k] · D[o, c, k]; both scale gradients are contractions of M.
        gd = grad_w.to(scale.dtype).reshape(o, c, -1)
        gd *= centered_codes(qweight, zero_point, layout, scale.dtype)
        m = gd.sum(-1)
        del gd, grad_w
        if need_ds:
            d_scale = m @ s_in.to(m.dtype) if s_in is not None else m.sum(1)
        if need_sin:
            d_sin = (scale.to(m.dtype) @ m).to(s_in.dtype)
    return grad_x, d_scale, d_sin


def quant_matmul(x, qweight, zero_point, s_out, delta_s_out, s_in, bias, layout: WeightLayout,
                 conv: ConvArgs | None = None, sets: torch.Tensor | None = None) -> torch.Tensor:
    """Functional entry point of :class:`QuantMatmulFunction` (``sets``: per-sample scale-set indices ``[B]``)."""
    return QuantMatmulFunction.apply(x, qweight, zero_point, s_out, delta_s_out, s_in, bias, layout, conv, sets)
