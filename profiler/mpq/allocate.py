"""Per-layer weight and activation bits by an integer program under a memory and a bit-operations budget.

One binary ``z_{i,w,a}`` per layer ``i`` and choice ``(w, a) ∈ W × A`` (default ``W = {2, 3, 4, 6, 8}``
weight bits, ``A = {4, 6, 8, 16}`` activation bits), solved with ``scipy.optimize.milp`` (HiGHS)::

    maximise    Σ_{i,w,a} v_i(w, a) · z_{i,w,a}
    subject to  Σ_{w,a} z_{i,w,a} = 1                              (one choice per layer)
                Σ_{i,w,a} bytes_i(w) · z_{i,w,a}  ≤  M              (weight memory, bytes)
                Σ_{i,w,a} MACs_i · w · a · z_{i,w,a}  ≤  B          (bit operations per sample)

Encoding a pair per binary makes the bilinear BOPs term ``w·a`` linear. The values ``v`` come from the
allocator (:mod:`profiler.mpq.profile` for MPQ-Diff, :mod:`profiler.mpq.baselines` for the others).

**Weight bytes** (``bytes_i(w)``) *include* the per-output-channel quantization state that
``finetune.quant`` stores with every layer (uint8 zero point, float32 ``s_out`` and ``Δs_out``:
``9·O_i`` bytes) — a constant per layer, so it moves the budget, not the choice. Codes count as

* ``"nominal"``: ``n_i · w / 8`` bytes, densely bit-packed (the paper's "model size"; budgets given as
  average bits use this, so a 3-bit budget equals a uniform 3-bit model);
* ``"packed"``: what ``finetune.quant`` really stores — codes of 2–4 bits two per byte (a 3-bit code
  takes 4 bits), 5–8 bits one byte each, per output row. Budgets given in bytes use this, so the plan's
  budget is the memory the quantized layers really take.

Infeasible budgets raise :class:`InfeasibleBudgetError`, which states the smallest feasible budget.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from profiler.mpq.capture import LayerInfo

W_CHOICES = (2, 3, 4, 6, 8)
A_CHOICES = (4, 6, 8, 16)
STORAGES = ("nominal", "packed")
#: Bytes of per-output-channel state per quantized layer row: uint8 zero point + float32 s_out + Δs_out.
SCALE_BYTES_PER_CHANNEL = 1 + 4 + 4
#: Relative optimality gap at which HiGHS stops: plans within 0.01% of the best objective are as good as it
#: for our purposes, and proving the last digits can take seconds on ~100 layers.
MIP_REL_GAP = 1e-4
#: Branch-and-bound nodes after which HiGHS returns its best plan. A node limit, unlike a time limit, stops
#: at the same plan however loaded the machine is, so plans are reproducible. On the zoo (47–96 layers, the
#: 4×3 validation grid at 3/4/5 bits) the gap was reached within 773 nodes (< 2 s of one core).
MIP_NODE_LIMIT = 2000


class InfeasibleBudgetError(ValueError):
    """No bit assignment fits the budget; ``min_weight_bytes`` / ``min_bops`` give the smallest feasible ones."""

    def __init__(self, message: str, min_weight_bytes: float | None = None, min_bops: float | None = None):
        super().__init__(message)
        self.min_weight_bytes = min_weight_bytes
        self.min_bops = min_bops


def scale_bytes(info: LayerInfo) -> int:
    """Bytes of the per-channel quantization state of one layer (see module doc)."""
    return SCALE_BYTES_PER_CHANNEL * info.out_channels


def layer_weight_bytes(info: LayerInfo, w_bits: int, storage: str = "nominal") -> float:
    """Bytes of layer ``info`` quantized to ``w_bits`` under cost model ``storage`` (scales included)."""
    if storage == "nominal":
        return info.n_weights * w_bits / 8 + scale_bytes(info)
    if storage == "packed":
        row = info.n_weights // info.out_channels
        per_row = (row + 1) // 2 if w_bits <= 4 else row
        return info.out_channels * per_row + scale_bytes(info)
    raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")


def plan_weight_bytes(layers: list[LayerInfo], w_bits, storage: str = "nominal") -> float:
    return float(sum(layer_weight_bytes(info, int(w), storage) for info, w in zip(layers, w_bits)))


def plan_bops(layers: list[LayerInfo], w_bits, a_bits) -> float:
    """``Σ MACs_i · w_i · a_i`` per sample."""
    return float(sum(info.macs * int(w) * int(a) for info, w, a in zip(layers, w_bits, a_bits)))


def average_bits(layers: list[LayerInfo], w_bits) -> float:
    """Weight-count-weighted mean weight bits."""
    n = sum(info.n_weights for info in layers)
    return sum(info.n_weights * int(w) for info, w in zip(layers, w_bits)) / n


@dataclass
class Budget:
    """What a plan may cost: weight memory in bytes (``storage`` says how codes count) and, optionally,
    bit operations per sample (``None``: unconstrained)."""

    weight_bytes: float
    bops: float | None = None
    storage: str = "nominal"
    avg_bits: float | None = None  # set when the budget was given as average weight bits (for reports)

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise ValueError(f"budget storage must be one of {STORAGES}, got {self.storage!r}")
        if not np.isfinite(self.weight_bytes) or self.weight_bytes <= 0:
            raise ValueError(f"weight budget must be a positive number of bytes, got {self.weight_bytes!r}")
        if self.bops is not None and (not np.isfinite(self.bops) or self.bops <= 0):
            raise ValueError(f"bit-operations budget must be positive or None, got {self.bops!r}")

    @classmethod
    def from_avg_bits(cls, layers: list[LayerInfo], avg_bits: float, a_bits: int | None = 8) -> "Budget":
        """The nominal memory of every layer at ``avg_bits`` weight bits (fractional allowed), and the BOPs of
        ``avg_bits`` weights with ``a_bits`` activations everywhere (``a_bits=None``: no BOPs limit)."""
        if not np.isfinite(avg_bits) or not 1 <= avg_bits <= 32:
            raise ValueError(f"average weight bits must be in 1..32, got {avg_bits!r}")
        mem = sum(info.n_weights * avg_bits / 8 + scale_bytes(info) for info in layers)
        bops = None if a_bits is None else sum(info.macs * avg_bits * a_bits for info in layers)
        return cls(weight_bytes=float(mem), bops=None if bops is None else float(bops), storage="nominal",
                   avg_bits=float(avg_bits))

    @classmethod
    def from_bytes(cls, layers: list[LayerInfo], weight_bytes: float, a_bits: int | None = 8,
                   storage: str = "packed") -> "Budget":
        """A memory budget in bytes; the BOPs budget is that of a uniform plan with the same average bits
        (derived from the bytes left after scales) and ``a_bits`` activations (``None``: no BOPs limit)."""
        n = sum(info.n_weights for info in layers)
        codes = float(weight_bytes) - sum(scale_bytes(info) for info in layers)
        eq_bits = max(codes * 8 / n, 0.0)
        bops = None if a_bits is None else sum(info.macs * eq_bits * a_bits for info in layers)
        return cls(weight_bytes=float(weight_bytes), bops=None if not bops else float(bops), storage=storage)

    def to_dict(self) -> dict:
        return {"weight_bytes": self.weight_bytes, "bops": self.bops, "storage": self.storage,
                "avg_bits": self.avg_bits}


@dataclass
class Allocation:
    """A solved assignment: per-layer bits (execution order), its costs and the solver's report."""

    w_bits: list[int]
    a_bits: list[int]
    objective: float
    weight_bytes: float
    bops: float
    solve_s: float
    message: str = ""
    optimal: bool = True          # False: a node or time limit stopped the solver at its best plan so far


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level writes to stdout for the block: HiGHS prints solver-internal debug lines there
    (e.g. ``HighsMipSolverData::transformNewIntegerFeasibleSolution``) that would garble CLI output."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured or replaced stdout: nothing to silence
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _milp(*args, **kwargs):
    with _quiet_stdout():
        return milp(*args, **kwargs)


def _choices(w_choices, a_choices):
    for name, ch, lo, hi in (("weight", w_choices, 2, 8), ("activation", a_choices, 2, 16)):
        bad = [c for c in ch if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not lo <= c <= hi]
        if not ch or bad:
            raise ValueError(f"{name} bit choices must be integers in {lo}..{hi}, got {list(ch)}")
    return [(int(w), int(a)) for w in sorted(set(w_choices)) for a in sorted(set(a_choices))]


def allocate(layers: list[LayerInfo], values: np.ndarray, budget: Budget, w_choices=W_CHOICES,
             a_choices=A_CHOICES, pinned: dict | None = None, time_limit: float = 60.0) -> Allocation:
    """Solve the integer program of the module doc.

    Args:
        layers: the layers, in the order of ``values``.
        values: ``[L, |W|, |A|]`` objective value of each (layer, weight bits, activation bits) choice, in
            the order of the *sorted* choice sets.
        budget: weight-memory (and BOPs) limits.
        pinned: ``{layer index: (w_bits, a_bits)}`` fixed choices (they still count in the budget).
        time_limit: seconds for HiGHS, a safety net: the search stops at the gap :data:`MIP_REL_GAP` or
            after :data:`MIP_NODE_LIMIT` nodes (deterministic), long before it on the zoo. When a limit
            stops it, its best plan so far is returned with ``optimal=False``.

    Raises:
        InfeasibleBudgetError: no assignment satisfies the budget (the message gives the smallest one that does).
    """
    pairs = _choices(w_choices, a_choices)
    L, C = len(layers), len(pairs)
    values = np.asarray(values, dtype=np.float64)
    ws, as_ = sorted(set(w_choices)), sorted(set(a_choices))
    if values.shape != (L, len(ws), len(as_)):
        raise ValueError(f"values must have shape [L={L}, |W|={len(ws)}, |A|={len(as_)}], got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values hold NaN or infinite entries")
    mem, bops, allowed = _cost_tables(layers, pairs, budget.storage, pinned)
    _check_feasible(layers, mem, bops, allowed, budget)
    vals = values.reshape(L, C)
    # Dropping dominated choices loses no optimum and removes exact ties (W8A4 vs W4A8 under the noise
    # objective), which otherwise make branch-and-bound crawl through equivalent solutions.
    allowed &= ~_dominated(vals, mem, bops, allowed)

    # Rows are scaled to O(1) so HiGHS' absolute tolerances act as relative ones, with a hair of slack so a
    # tolerance-level violation cannot push the exact costs over the budget (retried without it for a
    # budget that is exactly the minimum). Disallowed choices are variables with upper bound 0.
    vscale = max(np.abs(vals[allowed]).max(), 1e-300)
    c = -(vals / vscale).ravel()
    one_hot = sparse.kron(sparse.eye_array(L), np.ones((1, C))).tocsr()
    cost_rows = [(mem / budget.weight_bytes).ravel()]
    if budget.bops is not None:
        cost_rows.append((bops / budget.bops).ravel())
    A = sparse.vstack([one_hot, sparse.csr_array(np.vstack(cost_rows))]).tocsr()
    lo = np.concatenate([np.ones(L), np.full(len(cost_rows), -np.inf)])
    t0 = time.perf_counter()
    for slack in (1e-9, 0.0):
        hi = np.concatenate([np.ones(L), np.full(len(cost_rows), 1.0 - slack)])
        res = _milp(c, constraints=LinearConstraint(A, lo, hi), integrality=np.ones(L * C),
                    bounds=Bounds(np.zeros(L * C), allowed.ravel().astype(float)),
                    options={"time_limit": float(time_limit), "mip_rel_gap": MIP_REL_GAP,
                             "node_limit": MIP_NODE_LIMIT})
        if res.x is not None:
            break
    solve_s = time.perf_counter() - t0
    if res.x is None:
        raise RuntimeError(f"the bit-allocation solver found no solution ({res.message}); budget {budget}")
    pick = res.x.reshape(L, C).round().argmax(1)
    w_bits = [pairs[k][0] for k in pick]
    a_bits = [pairs[k][1] for k in pick]
    used_mem = float(mem[np.arange(L), pick].sum())
    used_bops = float(bops[np.arange(L), pick].sum())
    if used_mem > budget.weight_bytes * (1 + 1e-9) or (budget.bops is not None and used_bops > budget.bops * (1 + 1e-9)):
        raise RuntimeError(f"solver returned a plan over budget (memory {used_mem:.0f}/{budget.weight_bytes:.0f}, "
                           f"BOPs {used_bops:.4g}/{budget.bops})")
    return Allocation(w_bits, a_bits, float(vals[np.arange(L), pick].sum()), used_mem, used_bops, solve_s,
                      str(res.message), optimal=res.status == 0)


def _dominated(vals: np.ndarray, mem: np.ndarray, bops: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``[L, C]``: choice ``c`` of layer ``i`` is dominated when another *allowed* choice is no worse in value,
    memory and BOPs and better in one (of exact ties, all but the first are marked)."""
    v, m, b = vals[:, :, None], mem[:, :, None], bops[:, :, None]        # c along axis 1, c' along axis 2
    v2, m2, b2 = vals[:, None, :], mem[:, None, :], bops[:, None, :]
    no_worse = (v2 >= v) & (m2 <= m) & (b2 <= b) & allowed[:, None, :]
    better = (v2 > v) | (m2 < m) | (b2 < b)
    C = vals.shape[1]
    earlier = np.tril(np.ones((C, C), dtype=bool), -1)[None]              # [c, c'] true when c' < c
    return ((no_worse & better) | (no_worse & ~better & earlier)).any(2)


def _cost_tables(layers, pairs, storage: str, pinned: dict | None):
    """Per layer and choice: weight bytes ``[L, C]``, BOPs ``[L, C]`` and whether allowed ``[L, C]``."""
    pinned = dict(pinned or {})
    for i, (w, a) in pinned.items():
        if (int(w), int(a)) not in pairs:
            raise ValueError(f"pinned layer {layers[i].name!r} at W{w}A{a}, which is not among the choices "
                             f"{sorted({p[0] for p in pairs})} x {sorted({p[1] for p in pairs})}")
    mem = np.array([[layer_weight_bytes(info, w, storage) for w, _ in pairs] for info in layers])
    bops = np.array([[float(info.macs) * w * a for w, a in pairs] for info in layers])
    allowed = np.ones((len(layers), len(pairs)), dtype=bool)
    for i, (w, a) in pinned.items():
        allowed[i] = [p == (int(w), int(a)) for p in pairs]
    return mem, bops, allowed


def check_budget(layers: list[LayerInfo], budget: Budget, w_choices=W_CHOICES, a_choices=A_CHOICES,
                 pinned: dict | None = None) -> None:
    """Raise :class:`InfeasibleBudgetError` if no assignment fits ``budget`` (fast: no solve)."""
    pairs = _choices(w_choices, a_choices)
    mem, bops, allowed = _cost_tables(layers, pairs, budget.storage, pinned)
    _check_feasible(layers, mem, bops, allowed, budget)


def _check_feasible(layers, mem, bops, allowed, budget: Budget) -> None:
    """Raise when a budget is below its minimum. Both minima are reached by the same assignment (every
    free layer at its fewest weight and activation bits), so budgets that are feasible one by one are
    feasible together."""
    big = np.where(allowed, 0.0, np.inf)
    min_mem = float((mem + big).min(1).sum())
    min_bops = float((bops + big).min(1).sum())
    unit = "bytes" + (" (codes densely packed, scales included)" if budget.storage == "nominal"
                      else " (codes as finetune.quant stores them, scales included)")
    if budget.weight_bytes < min_mem:
        given = f"{budget.avg_bits:g} average weight bits = " if budget.avg_bits is not None else ""
        n = sum(info.n_weights for info in layers)
        as_bits = (f" (= {(min_mem - sum(scale_bytes(i) for i in layers)) * 8 / n:.2f} average weight bits)"
                   if budget.storage == "nominal" else "")
        raise InfeasibleBudgetError(
            f"weight-memory budget {given}{budget.weight_bytes:,.0f} bytes is infeasible: the smallest feasible "
            f"budget for these {len(layers)} layers is {min_mem:,.0f} {unit}{as_bits}, every layer at its fewest "
            f"bits (pinned layers at theirs)", min_weight_bytes=min_mem, min_bops=min_bops)
    if budget.bops is not None and budget.bops < min_bops:
        raise InfeasibleBudgetError(
            f"bit-operations budget {budget.bops:.4g} is infeasible: the smallest feasible one is {min_bops:.4g} "
            "BOPs per sample, every layer at its fewest weight and activation bits",
            min_weight_bytes=min_mem, min_bops=min_bops)

