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
    ``None`` for a Linear). Gradients flow to ``x``, ``delta_s_out``, ``s_in`` and ``bias``.
    """

    @staticmethod
    def forward(ctx, x, qweight, zero_point, s_out, delta_s_out, s_in, bias, layout, conv):
        scale = s_out + delta_s_out
        w = dequantize(qweight, zero_point, scale, s_in, layout).to(x.dtype)
        b = None if bias is None else bias.to(x.dtype)
        if conv is None:
            y = F.linear(x, w, b)
        else:
            y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
        del w  # the transient Ŵ dies here; backward rebuilds it from the codes
        ctx.save_for_backward(x, qweight, zero_point, s_out, delta_s_out, s_in)
        ctx.layout, ctx.conv = layout, conv
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, qweight, zero_point, s_out, delta_s_out, s_in = ctx.saved_tensors
        layout, conv = ctx.layout, ctx.conv
        need_x, need_ds, need_sin, need_b = (ctx.needs_input_grad[i] for i in (0, 4, 5, 6))
        need_g = need_ds or need_sin
        scale = s_out + delta_s_out
        o, c = layout.out_channels, layout.in_channels
        grad_x = grad_w = grad_b = d_scale = d_sin = None

        if conv is None:
            g2 = grad_out.reshape(-1, o)
            if need_x:
                w = dequantize(qweight, zero_point, scale, s_in, layout).to(grad_out.dtype)
                grad_x = (g2 @ w).view(x.shape)
                del w
            if need_g:
                grad_w = g2.t() @ x.reshape(-1, c)  # [O, I]
            if need_b:
                grad_b = g2.sum(0)
        else:
            if need_x:
                w = dequantize(qweight, zero_point, scale, s_in, layout).to(grad_out.dtype)
            else:  # the kernel reads only the weight's shape when grad_input is not asked for
                w = x.new_empty(1).expand(layout.shape)
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, w, [o] if need_b else None, conv.stride, conv.padding, conv.dilation,
                False, [0, 0], conv.groups, [need_x, need_g, need_b])
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
        if grad_b is not None:
            grad_b = grad_b.to(ctx.bias_dtype)
        return grad_x, None, None, None, d_scale, d_sin, grad_b, None, None


def quant_matmul(x, qweight, zero_point, s_out, delta_s_out, s_in, bias, layout: WeightLayout,
                 conv: ConvArgs | None = None) -> torch.Tensor:
    """Functional entry point of :class:`QuantMatmulFunction`."""
    return QuantMatmulFunction.apply(x, qweight, zero_point, s_out, delta_s_out, s_in, bias, layout, conv)
