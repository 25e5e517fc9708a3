"""Per-layer quantization-error ("sensitivity") profiles: what the ``sensitivity`` allocator minimises.

For each layer ``i`` and each bit choice, only that layer is quantized (weights with ``finetune.quant``'s
symmetric per-channel clipping quantizer; or its input activation per tensor, scale ``max|x|`` over the
calibration batch), and the error is the mean squared change of the denoiser's output on the calibration
batch::

    e_i^W(w) = E_{x, t} ‖f_{i ← Q_w}(x_t) − f(x_t)‖²,      e_i^A(a) likewise for the input at ``a`` bits.

:func:`sensitivity_profile` measures it with ``L · (|W| + |A| − 1)`` forward passes per timestep;
:mod:`profiler.mpq.gradient_sensitivity` estimates the same table from gradients.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from profiler.mpq.allocate import A_CHOICES, W_CHOICES
from profiler.mpq.capture import CalibrationBatch, LayerInfo


@dataclass
class Sensitivity:
    """Output errors ``e^W`` ``[L, |W|]`` and ``e^A`` ``[L, |A|]`` (choices sorted) and what it cost."""

    layers: list[LayerInfo]
    w_choices: list[int]
    a_choices: list[int]
    w_error: np.ndarray
    a_error: np.ndarray
    timesteps: list[int]
    n_samples: int
    seconds: float

    def values(self) -> np.ndarray:
        """``v_i(w, a) = −e_i^W(w) − e_i^A(a)`` ``[L, |W|, |A|]`` for :func:`~profiler.mpq.allocate.allocate`."""
        return -(self.w_error[:, :, None] + self.a_error[:, None, :])


@torch.no_grad()
def sensitivity_profile(model, batch: CalibrationBatch, layers: list[LayerInfo], timesteps, n_samples: int = 8,
                        w_choices=W_CHOICES, a_choices=A_CHOICES, progress=None) -> Sensitivity:
    """Measure the per-layer output errors of the module doc on ``n_samples`` of ``batch`` at ``timesteps``."""
    from finetune.quant import fake_quantize_activation, quantize_weight
    from finetune.quant.weight_init import dequantize_codes

    t0 = time.perf_counter()
    sub = batch.subset(min(n_samples, len(batch)))
    ws, as_ = sorted(set(w_choices)), sorted(set(a_choices))
    modules = dict(model.denoiser.named_modules())
    inputs = [(t, sub.noised(model, t)) for t in timesteps]
    refs = [model.denoise(x, t, sub.cond) for t, x in inputs]

    # Per-tensor activation scales: max |input| of each layer over the sub-batch and timesteps.
    amax = {info.name: 0.0 for info in layers}

    def record(name):
        def fn(mod, args):
            amax[name] = max(amax[name], float(args[0].detach().abs().amax()))
        return fn

    handles = [modules[i.name].register_forward_pre_hook(record(i.name)) for i in layers]
    try:
        for t, x in inputs:
            model.denoise(x, t, sub.cond)
    finally:
        for h in handles:
            h.remove()

    def output_error() -> float:
        return float(np.mean([(model.denoise(x, t, sub.cond) - ref).float().pow(2).mean().item()
                              for (t, x), ref in zip(inputs, refs)]))

    w_err = np.zeros((len(layers), len(ws)))
    a_err = np.zeros((len(layers), len(as_)))
    for li, info in enumerate(layers):
        mod = modules[info.name]
        weight = mod.weight.data
        for k, w in enumerate(ws):
            codes, zero, scale = quantize_weight(weight, w, "clip", symmetric=True)
            mod.weight.data = dequantize_codes(codes, zero, scale).reshape(weight.shape).to(weight.dtype)
            try:
                w_err[li, k] = output_error()
            finally:
                mod.weight.data = weight
        for k, a in enumerate(as_):
            if a >= 16:
                continue  # 16-bit activations: lossless for this purpose
            scale = torch.tensor(max(amax[info.name], 1e-30) / (2 ** (a - 1) - 1))
            h = mod.register_forward_pre_hook(lambda m, args, a=a, s=scale: (fake_quantize_activation(args[0], a, s),)
                                              + tuple(args[1:]))
            try:
                a_err[li, k] = output_error()
            finally:
                h.remove()
        if progress is not None:
            progress("sensitivity", li + 1, len(layers))
    return Sensitivity(layers, ws, as_, w_err, a_err, list(timesteps), len(sub), time.perf_counter() - t0)
