"""The allocators MPQ-Diff is compared with, at equal weight memory and equal bit operations.

* **uniform** — every layer at ``W{b}A{a}`` (``b`` may be any of 2..8, e.g. 5, even outside the MPQ choice
  set). Its own memory and BOPs define the budget the others get.
* **random** — the same integer program as MPQ-Diff (same values, budgets and pinned layers) with MPQ-Diff's
  importances randomly permuted across the layers: plans exactly as full as MPQ-Diff's, with the same
  spread of importance, so the comparison isolates what the orthogonality signal adds over chance.
* **sensitivity** — per-layer quantization error: for each layer ``i`` and each choice, only that layer is
  quantized (weights with ``finetune.quant``'s symmetric per-channel clipping quantizer; or its input
  activation per tensor, scale ``max|x|`` over the calibration batch), and the error is the mean squared
  change of the denoiser's output on the calibration batch::

      e_i^W(w) = E_{x, t} ‖f_{i ← Q_w}(x_t) − f(x_t)‖²,      e_i^A(a) likewise for the input at ``a`` bits.

  Assuming errors add (first-order), the integer program minimises ``Σ_i e_i^W(w_i) + e_i^A(a_i)``
  (``v_i(w, a) = −e_i^W(w) − e_i^A(a)``) under the same budgets. 16-bit activations count as lossless.
  This costs ``L · (|W| + |A| − 1)`` forward passes per timestep; :func:`sensitivity_profile` runs them on a
  sub-batch at a few timesteps (defaults: 8 samples, 3 timesteps).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from profiler.mpq.allocate import A_CHOICES, W_CHOICES, Budget, allocate, plan_bops, plan_weight_bytes
from profiler.mpq.bitplan import BitPlan
from profiler.mpq.capture import CalibrationBatch, LayerInfo
from profiler.mpq.importance import suffix_mean


def uniform_allocation(layers: list[LayerInfo], w_bits: int, a_bits: int = 8):
    """``(w_bits list, a_bits list)`` with every layer at ``W{w_bits}A{a_bits}``."""
    return [int(w_bits)] * len(layers), [int(a_bits)] * len(layers)


def random_values(theta: np.ndarray, seed: int, w_choices=W_CHOICES, a_choices=A_CHOICES, propagate: bool = False,
                  objective: str = "noise") -> np.ndarray:
    """MPQ-Diff's value table with the importances ``θ`` ``[L]`` randomly permuted across layers (seeded)."""
    from profiler.mpq.profile import mpq_values

    theta = np.random.default_rng(seed).permutation(np.asarray(theta, dtype=np.float64))
    return mpq_values(suffix_mean(theta) if propagate else theta, w_choices, a_choices, objective)


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


def baseline_plan(layers: list[LayerInfo], allocator: str, budget: Budget, *, pinned: dict | None = None,
                  uniform_bits: tuple | None = None, seed: int = 0, theta: np.ndarray | None = None,
                  objective: str = "noise", propagate: bool = False, sensitivity: Sensitivity | None = None,
                  w_choices=W_CHOICES, a_choices=A_CHOICES, settings: dict | None = None,
                  act_ranges=None, time_limit: float = 60.0) -> BitPlan:
    """A :class:`BitPlan` from one of the baseline allocators: ``"uniform"`` (``uniform_bits=(w, a)``),
    ``"random"`` (``seed``; ``theta`` the importances to permute) or ``"sensitivity"`` (a :class:`Sensitivity`)."""
    from profiler.mpq.allocate import Allocation
    from profiler.mpq.profile import plan_from_allocation

    if allocator == "uniform":
        if uniform_bits is None:
            raise ValueError("the uniform allocator needs uniform_bits=(w_bits, a_bits)")
        wb, ab = uniform_allocation(layers, *uniform_bits)
        alloc = Allocation(wb, ab, 0.0, plan_weight_bytes(layers, wb, budget.storage), plan_bops(layers, wb, ab), 0.0)
    elif allocator == "random":
        if theta is None:
            raise ValueError("the random allocator permutes MPQ-Diff's importances: pass theta=")
        alloc = allocate(layers, random_values(theta, seed, w_choices, a_choices, propagate, objective), budget,
                         w_choices, a_choices, pinned, time_limit)
    elif allocator == "sensitivity":
        if sensitivity is None:
            raise ValueError("the sensitivity allocator needs a Sensitivity from sensitivity_profile()")
        alloc = allocate(layers, sensitivity.values(), budget, sensitivity.w_choices, sensitivity.a_choices, pinned,
                         time_limit)
    else:
        raise ValueError(f"unknown allocator {allocator!r}; choose uniform, random or sensitivity")
    extra = {"allocator": allocator, **({"seed": seed} if allocator == "random" else {}), **(settings or {})}
    return plan_from_allocation(layers, alloc, budget, None, extra, {"solver_optimal": alloc.optimal},
                                act_ranges=act_ranges)
