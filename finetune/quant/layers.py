"""``QuantLinear`` and ``QuantConv2d``: frozen integer weights with trainable quantization scales.

State of a layer with ``O`` outputs, ``C`` inputs (a conv's ``C_in / groups``), ``K`` weights per output
row and ``N`` timestep scale sets:

=================  ===============================  =========  ===========================================
name               shape / dtype                    kind       meaning
=================  ===============================  =========  ===========================================
``qweight``        ``[O, ceil(K/2)]`` or ``[O, K]``  buffer     codes ``W_q``, two per byte for <= 4 bits
                   uint8
``zero_point``     ``[O]`` uint8                    buffer     ``z``
``s_out``          ``[O]`` float32                  buffer     initial per-output-channel scale
``delta_s_out``    ``[N, O]`` float32 (zeros)       parameter  PEQA's trainable scale offset ``Δs_out``
``s_in``           ``[N, C]`` float32 (ones)        parameter  TuneQDM's separable input scale (optional)
``bias``           ``[O]``                          parameter  full precision, frozen unless asked
``a_scale``        ``[]`` float32 (NaN = unset)     buffer     activation scale when ``a_bits`` is set
=================  ===============================  =========  ===========================================

The weight used for set ``k`` is ``Ŵ = (s_out + Δs_out[k])[:, None] · (W_q − z) · s_in[k][None, :]``,
computed on the fly by :class:`~finetune.quant.functional.QuantMatmulFunction` (never stored).

With ``N > 1`` the active set comes from the timestep (see :mod:`finetune.quant.timestep`): one set for
the whole batch, or one per sample when the timesteps of a batch fall in different intervals (the batch
is split by set inside one autograd node, which saves only the one input for backward).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from finetune.quant.act_quant import activation_scale, check_a_bits, fake_quantize_activation
from finetune.quant.functional import ConvArgs, WeightLayout, dequantize, quant_matmul
from finetune.quant.packing import check_bits, pack_codes, packed_row_bytes
from finetune.quant.weight_init import DEFAULT_CLIP_RATIOS, quantize_weight


class QuantLayer(nn.Module):
    """Shared state and forward logic of :class:`QuantLinear` and :class:`QuantConv2d`."""

    kind = "?"

    def __init__(self, weight_shape, bits: int, *, bias: bool = True, separable: bool = False,
                 n_timestep_sets: int = 1, symmetric: bool = False, a_bits: int | None = None,
                 orig_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.bits = check_bits(bits, "w_bits")
        self.a_bits = check_a_bits(a_bits)
        if isinstance(n_timestep_sets, bool) or not isinstance(n_timestep_sets, int) or n_timestep_sets < 1:
            raise ValueError(f"n_timestep_sets must be a positive integer, got {n_timestep_sets!r}")
        self.layout = WeightLayout(bits, tuple(int(d) for d in weight_shape))
        self.separable = bool(separable)
        self.symmetric = bool(symmetric)
        self.n_timestep_sets = n_timestep_sets
        self.orig_dtype = orig_dtype
        self.fqn = ""  # the layer's name in its model, set by quantize_ (for error messages)
        o, c, k = self.layout.out_channels, self.layout.in_channels, self.layout.row_size
        self.register_buffer("qweight", torch.zeros(o, packed_row_bytes(k, bits), dtype=torch.uint8, device=device))
        self.register_buffer("zero_point", torch.zeros(o, dtype=torch.uint8, device=device))
        self.register_buffer("s_out", torch.ones(o, dtype=torch.float32, device=device))
        self.delta_s_out = nn.Parameter(torch.zeros(n_timestep_sets, o, device=device))
        if separable:
            self.s_in = nn.Parameter(torch.ones(n_timestep_sets, c, device=device))
        else:
            self.register_parameter("s_in", None)
        if bias:
            self.bias = nn.Parameter(torch.zeros(o, dtype=orig_dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        if self.a_bits is not None:
            self.register_buffer("a_scale", torch.tensor(float("nan"), device=device))
        else:
            self.a_scale = None
        self._timestep_sets = None  # int, LongTensor [B], or None (unset)
        self._calibrating, self._a_observed_max = False, None

    # -- construction -----------------------------------------------------------------------------
    def _quantize_from(self, weight: torch.Tensor, init: str, clip_ratios) -> None:
        codes, zero, scale = quantize_weight(weight, self.bits, init, self.symmetric, clip_ratios)
        with torch.no_grad():
            self.qweight.copy_(pack_codes(codes, self.bits))
            self.zero_point.copy_(zero)
            self.s_out.copy_(scale)

    # -- forward ----------------------------------------------------------------------------------
    def _matmul(self, x: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError  # defined by QuantLinear / QuantConv2d

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits is None:
            return x
        if self._calibrating:
            amax = float(x.detach().abs().amax())
            self._a_observed_max = amax if self._a_observed_max is None else max(self._a_observed_max, amax)
            return x
        scale = self.a_scale if bool(torch.isfinite(self.a_scale)) else activation_scale(x, self.a_bits)
        return fake_quantize_activation(x, self.a_bits, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._quantize_input(x)
        if self.n_timestep_sets == 1:
            return self._matmul(x, 0)
        sets = self._timestep_sets
        if sets is None:
            raise RuntimeError(
                f"quantized layer {self.fqn or self.kind!r} has {self.n_timestep_sets} timestep scale sets but no "
                "timestep was given: call finetune.quant.follow_timesteps_(denoiser) once (the sets then follow "
                "its forward's timestep), finetune.quant.set_timestep_(model, t), or use "
                "`with finetune.quant.timestep_scales(model, t):` around the forward pass")
        if isinstance(sets, int):
            return self._matmul(x, sets)
        if sets.numel() != x.shape[0]:
            raise RuntimeError(
                f"quantized layer {self.fqn or self.kind!r}: {sets.numel()} per-sample timesteps were set but its "
                f"input has batch size {x.shape[0]}; give one timestep per sample of this layer's batch, or a "
                "single timestep for the whole batch")
        sets = sets.to(x.device)
        groups = sets.unique()
        if groups.numel() == 1:
            return self._matmul(x, int(groups))
        # Mixed intervals: one autograd node runs each set on its samples (see QuantMatmulFunction).
        return self._matmul(x, sets)

    def _scales(self, k):
        """Scales of set ``k``; for a per-sample set tensor ``k``, all sets (``[N, O]``, ``[N, C]``)."""
        if isinstance(k, torch.Tensor):
            return self.delta_s_out, self.s_in
        s_in = None if self.s_in is None else self.s_in[k]
        return self.delta_s_out[k], s_in

    @staticmethod
    def _sets(k):
        return k if isinstance(k, torch.Tensor) else None

    # -- inspection -------------------------------------------------------------------------------
    @torch.no_grad()
    def dequantized_weight(self, set_index: int = 0) -> torch.Tensor:
        """``Ŵ`` for scale set ``set_index`` (shape of the original weight, float32)."""
        d, s_in = self._scales(set_index)
        return dequantize(self.qweight, self.zero_point, self.s_out + d, s_in, self.layout)

    def weight_bytes(self) -> int:
        """Real storage of the quantized weight: codes + zero points + frozen and trainable scales."""
        tensors = [self.qweight, self.zero_point, self.s_out, self.delta_s_out]
        if self.s_in is not None:
            tensors.append(self.s_in)
        return sum(t.numel() * t.element_size() for t in tensors)

    def float_weight_bytes(self) -> int:
        """Bytes the original full-precision weight took."""
        return math.prod(self.layout.shape) * torch.empty((), dtype=self.orig_dtype).element_size()

    def config(self) -> dict:
        """JSON-able description sufficient to rebuild an empty layer of this shape (see persistence)."""
        return {"type": self.kind, "w_bits": self.bits, "a_bits": self.a_bits,
                "weight_shape": list(self.layout.shape), "separable": self.separable,
                "n_timestep_sets": self.n_timestep_sets, "symmetric": self.symmetric,
                "has_bias": self.bias is not None,
                "bias_trainable": bool(self.bias is not None and self.bias.requires_grad),
                "orig_dtype": str(self.orig_dtype).removeprefix("torch.")}

    def extra_repr(self) -> str:
        parts = [f"w_bits={self.bits}", f"weight_shape={self.layout.shape}"]
        if self.a_bits is not None:
            parts.append(f"a_bits={self.a_bits}")
        if self.separable:
            parts.append("separable=True")
        if self.n_timestep_sets > 1:
            parts.append(f"n_timestep_sets={self.n_timestep_sets}")
        if self.symmetric:
            parts.append("symmetric=True")
        return ", ".join(parts)


class QuantLinear(QuantLayer):
    """Quantized replacement of ``nn.Linear``: ``y = x Ŵᵀ + b``, ``x`` ``[..., I]`` -> ``y`` ``[..., O]``."""

    kind = "linear"

    def __init__(self, in_features: int, out_features: int, bits: int, **kwargs):
        super().__init__((out_features, in_features), bits, **kwargs)
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int, *, init: str = "clip", clip_ratios=DEFAULT_CLIP_RATIOS,
                   train_bias: bool = False, **kwargs) -> "QuantLinear":
        """Quantize ``linear``'s weight (``kwargs``: ``separable``, ``n_timestep_sets``, ``symmetric``, ``a_bits``)."""
        w = linear.weight
        q = cls(linear.in_features, linear.out_features, bits, bias=linear.bias is not None,
                orig_dtype=w.dtype, device=w.device, **kwargs)
        q._quantize_from(w, init, clip_ratios)
        if linear.bias is not None:
            with torch.no_grad():
                q.bias.copy_(linear.bias)
            q.bias.requires_grad_(train_bias)
        return q

    def _matmul(self, x, k):
        d, s_in = self._scales(k)
        return quant_matmul(x, self.qweight, self.zero_point, self.s_out, d, s_in, self.bias, self.layout,
                            sets=self._sets(k))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


class QuantConv2d(QuantLayer):
    """Quantized replacement of ``nn.Conv2d``: ``x`` ``[B, C_in, H, W]`` -> ``[B, O, H', W']``.

    ``s_in`` (separable scales) runs over the weight's input-channel axis only (``C_in / groups``), not over
    the kernel positions, as in TuneQDM.
    """

    kind = "conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, bits: int, *, stride=1, padding=0,
                 dilation=1, groups: int = 1, pre_pad=None, pad_mode: str = "constant", **kwargs):
        kh, kw = _pair(kernel_size)
        if in_channels % groups:
            raise ValueError(f"in_channels={in_channels} is not divisible by groups={groups}")
        super().__init__((out_channels, in_channels // groups, kh, kw), bits, **kwargs)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.conv = ConvArgs(_pair(stride), _pair(padding), _pair(dilation), groups)
        # Non-zero padding modes and string padding ("same") are applied by F.pad before a padding-0 conv.
        self.pre_pad = None if pre_pad is None else tuple(int(p) for p in pre_pad)
        self.pad_mode = pad_mode

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int, *, init: str = "clip", clip_ratios=DEFAULT_CLIP_RATIOS,
                   train_bias: bool = False, **kwargs) -> "QuantConv2d":
        """Quantize ``conv``'s weight (``kwargs``: ``separable``, ``n_timestep_sets``, ``symmetric``, ``a_bits``)."""
        padding, pre_pad, pad_mode = conv.padding, None, "constant"
        if isinstance(padding, str) or conv.padding_mode != "zeros":
            pre_pad, padding = conv._reversed_padding_repeated_twice, 0
            pad_mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        w = conv.weight
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, bits, stride=conv.stride, padding=padding,
                dilation=conv.dilation, groups=conv.groups, pre_pad=pre_pad, pad_mode=pad_mode,
                bias=conv.bias is not None, orig_dtype=w.dtype, device=w.device, **kwargs)
        q._quantize_from(w, init, clip_ratios)
        if conv.bias is not None:
            with torch.no_grad():
                q.bias.copy_(conv.bias)
            q.bias.requires_grad_(train_bias)
        return q

    def _matmul(self, x, k):
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad, mode=self.pad_mode)
        d, s_in = self._scales(k)
        return quant_matmul(x, self.qweight, self.zero_point, self.s_out, d, s_in, self.bias, self.layout, self.conv,
                            sets=self._sets(k))

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(in_channels=self.in_channels, stride=list(self.conv.stride), padding=list(self.conv.padding),
                   dilation=list(self.conv.dilation), groups=self.conv.groups,
                   pre_pad=None if self.pre_pad is None else list(self.pre_pad), pad_mode=self.pad_mode)
        return cfg

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.conv.stride}, padding={self.conv.padding}, " + super().extra_repr())
