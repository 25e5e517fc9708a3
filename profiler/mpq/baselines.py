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
  This costs ``L · (|W| + |A| − 1)`` forward passes per timestep; :func:`~profiler.mpq.sensitivity.sensitivity_profile`
  runs them on a sub-batch at a few timesteps (defaults: 8 samples, 3 timesteps).
"""
from __future__ import annotations

import numpy as np

from profiler.mpq.allocate import A_CHOICES, W_CHOICES, Budget, allocate, plan_bops, plan_weight_bytes
from profiler.mpq.bitplan import BitPlan
from profiler.mpq.capture import LayerInfo
from profiler.mpq.importance import suffix_mean
from profiler.mpq.sensitivity import Sensitivity, sensitivity_profile  # noqa: F401  (re-exported)


def uniform_allocation(layers: list[LayerInfo], w_bits: int, a_bits: int = 8):
    """``(w_bits list, a_bits list)`` with every layer at ``W{w_bits}A{a_bits}``."""
    return [int(w_bits)] * len(layers), [int(a_bits)] * len(layers)


def random_values(theta: np.ndarray, seed: int, w_choices=W_CHOICES, a_choices=A_CHOICES, propagate: bool = False,
                  objective: str = "noise") -> np.ndarray:
    """MPQ-Diff's value table with the importances ``θ`` ``[L]`` randomly permuted across layers (seeded)."""
    from profiler.mpq.allocators import mpq_values

    theta = np.random.default_rng(seed).permutation(np.asarray(theta, dtype=np.float64))
    return mpq_values(suffix_mean(theta) if propagate else theta, w_choices, a_choices, objective)


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
