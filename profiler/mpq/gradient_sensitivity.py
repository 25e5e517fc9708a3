"""The per-layer sensitivity profile estimated from a few random gradient probes instead of ``L·|choices|`` forwards.

:func:`~profiler.mpq.baselines.sensitivity_profile` measures, for every layer ``i`` and bit choice, the
mean squared change of the denoiser's output ``f`` when only that layer is quantized: ``L · (|W| + |A| − 1)``
forward passes per timestep (768 per timestep for a 96-layer UNet). To second order the same quantity is a
quadratic form of the layer's quantization error ``δ`` (``δW = Q_w(W) − W`` for weights, ``δx = Q_a(x) − x``
for the layer's input) with the output Jacobian ``J_i``::

    e_i(δ) ≈ ‖J_i δ‖² / M  ≈  Σ_k F_{i,k} δ_k² / M,      F_{i,k} = E_v[(J_iᵀ v)_k²],  v ∈ {±1}^M uniform

(``M`` output values; the diagonal form treats the rounding errors of different weights as independent,
their expected cross terms vanish; Rademacher ``v`` — any ``E[v vᵀ] = I`` will do — has the smallest
variance of the Hutchinson-type estimates). ``J_iᵀ v`` is one backward pass of a random output direction ``v`` and
gives that vector for **every** layer at once, so ``R`` probes at ``T'`` timesteps cost ``T'`` forward and
``R·T'`` backward passes whatever ``L`` and the number of choices are; then every choice's ``δ`` is computed with the
real quantizers (weights: ``finetune.quant``'s symmetric per-channel clipping quantizer; input activations:
per tensor, scale ``act_ranges[i] / (2^(a−1) − 1)``) and weighted by ``F``. The result is a
:class:`~profiler.mpq.baselines.Sensitivity` in the same units (mean squared output change), so everything
that takes a sensitivity profile takes this one.

A layer's input is taken through a fresh view per call, so its gradient is the one through that layer only
(tensors read by several layers — q, k and v — would otherwise sum all their consumers' gradients).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from profiler.mpq.allocate import A_CHOICES, W_CHOICES
from profiler.mpq.sensitivity import Sensitivity
from profiler.mpq.capture import CalibrationBatch, LayerInfo


def gradient_sensitivity(model, batch: CalibrationBatch, layers: list[LayerInfo], timesteps, act_ranges,
                         n_samples: int = 8, probes: int = 4, w_choices=W_CHOICES, a_choices=A_CHOICES,
                         seed: int = 0, progress=None) -> Sensitivity:
    """Estimate the per-layer output errors of ``sensitivity_profile`` from ``probes`` gradient probes.

    Args:
        model: a ``T2IModel``; its parameters are left as they were (values and ``requires_grad``).
        batch: the calibration batch; its first ``n_samples`` rows are used at each of ``timesteps``.
        layers: the quantizable layers (``probe_layers``), in the order of the result's rows.
        act_ranges: ``[L]`` max ``|input|`` per layer (the plan's ``act_ranges``: activation scales).
        probes: random output directions per timestep (``v`` ±1, from a CPU generator seeded ``seed``).

    Returns a :class:`Sensitivity` with ``w_error`` ``[L, |W|]`` and ``a_error`` ``[L, |A|]`` (16-bit
    activations 0), ``seconds`` the wall time.
    """
    from finetune.quant import fake_quantize_activation, quantize_weight
    from finetune.quant.weight_init import dequantize_codes

    if probes < 1 or n_samples < 1:
        raise ValueError(f"need at least one probe and one sample, got probes={probes}, n_samples={n_samples}")
    t0 = time.perf_counter()
    sub = batch.subset(min(n_samples, len(batch)))
    ws, as_ = sorted(set(w_choices)), sorted(set(a_choices))
    den = model.denoiser
    modules = dict(den.named_modules())
    mods = [modules[i.name] for i in layers]
    ranges = [max(float(r), 1e-30) for r in np.asarray(act_ranges, dtype=np.float64)]
    fisher_w = [torch.zeros_like(m.weight, dtype=torch.float32) for m in mods]
    a_err = np.zeros((len(layers), len(as_)))
    saved_grad = {n: p.requires_grad for n, p in den.named_parameters()}
    weights = [m.weight for m in mods]
    g = torch.Generator("cpu").manual_seed(int(seed))
    calls: list[tuple[int, torch.Tensor]] = []   # (layer index, the input view it read) of this forward

    def take_input(li):
        def fn(mod, args):
            x = args[0]
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)   # reads a constant (e.g. the timestep embedding)
            view = x.view_as(x)                        # its own node: the gradient through this layer only
            calls.append((li, view))
            return (view,) + tuple(args[1:])
        return fn

    n_out = 0
    handles = [m.register_forward_pre_hook(take_input(li)) for li, m in enumerate(mods)]
    grad_mode = torch.is_grad_enabled()
    try:
        torch.set_grad_enabled(True)
        for p in den.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        done = 0
        for t in timesteps:
            calls.clear()
            out = model.denoise(sub.noised(model, t), t, sub.cond)  # one forward, ``probes`` backward passes
            inputs = [c[1] for c in calls]
            fisher_x = [torch.zeros_like(x, dtype=torch.float32) for x in inputs]
            for r in range(probes):
                v = (torch.randint(0, 2, out.shape, generator=g) * 2 - 1).to(out.device, out.dtype)
                grads = torch.autograd.grad(out, weights + inputs, grad_outputs=v, allow_unused=True,
                                            retain_graph=r < probes - 1)
                n_out += out.numel()
                with torch.no_grad():
                    for li, gw in enumerate(grads[: len(weights)]):
                        if gw is not None:
                            fisher_w[li] += gw.float().pow(2)
                    for k, gx in enumerate(grads[len(weights):]):
                        if gx is not None:
                            fisher_x[k] += gx.float().pow(2)
                del grads
                done += 1
                if progress is not None:
                    progress("sensitivity", done, len(timesteps) * probes)
            with torch.no_grad():  # the input's quantization error at each choice, weighted by its Fisher
                for (li, x), f in zip(calls, fisher_x):
                    xf = x.detach().float()
                    for k, a in enumerate(as_):
                        if a >= 16:
                            continue  # 16-bit activations: lossless for this purpose
                        s = torch.tensor(ranges[li] / (2 ** (a - 1) - 1))
                        a_err[li, k] += float((f * (fake_quantize_activation(xf, a, s) - xf).pow(2)).sum())
            del out, inputs, fisher_x
            calls.clear()
    finally:
        torch.set_grad_enabled(grad_mode)
        for h in handles:
            h.remove()
        for n, p in den.named_parameters():
            p.requires_grad_(saved_grad[n])
        calls.clear()

    w_err = np.zeros((len(layers), len(ws)))
    with torch.no_grad():
        for li, m in enumerate(mods):
            weight = m.weight.detach()
            for k, w in enumerate(ws):
                codes, zero, scale = quantize_weight(weight, w, "clip", symmetric=True)
                dw = dequantize_codes(codes, zero, scale).reshape(weight.shape).float() - weight.float()
                w_err[li, k] = float((fisher_w[li] * dw.pow(2)).sum())
    # E over v of (J^T v)_k^2 summed over the probes, per output value: the mean squared output change
    return Sensitivity(layers, ws, as_, w_err / n_out, a_err / n_out, list(timesteps), len(sub),
                       time.perf_counter() - t0)
