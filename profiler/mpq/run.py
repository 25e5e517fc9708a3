"""``run_quantize``: everything ``mandc quantize`` does, as one function.

::

    mandc quantize --model zoo:unet-xs-gradients --data builtin:gradients_linear --avg-bits 4 --out plan.json

1. load the model and the dataset; 2. profile and allocate (:func:`~profiler.mpq.profile.profile_bits`);
3. write ``plan.json`` and the per-layer bit-width plot ``plan.png`` beside it; 4. apply the plan to the
denoiser (``finetune.quant.quantize_`` + activation scales) and save the quantized layers to
``plan.safetensors`` (``finetune.quant.save_quantized``, loadable with ``load_quantized_``); 5. report the
weight memory against the budget: the plan's accounting, the bytes the quantized layers hold in memory, and
the file's bytes on disk.

``--budget-mb X`` is a weight-memory budget of ``X·10⁶`` bytes for the quantizable layers' weights as
``finetune.quant`` stores them (codes at their stored width + per-channel scales); ``--avg-bits B`` is the
memory of every layer at ``B`` bits, densely packed (the paper's model size). Biases and the layers that
are not ``nn.Linear`` / ``nn.Conv2d`` (norms, embeddings) stay in full precision and are reported apart.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from profiler.mpq.bitplan import BitPlan, apply_bitplan
from profiler.mpq.plot import plot_bitplan
from profiler.mpq.profile import MPQConfig, Progress, load_model_and_data, profile_bits

MB = 10**6


@dataclass
class QuantizeResult:
    """What :func:`run_quantize` produced and measured (bytes are of the quantizable layers' weights)."""

    plan: BitPlan
    plan_path: Path
    plot_path: Path
    weights_path: Path | None
    budget_bytes: float          # the budget, in the plan's storage model
    plan_bytes: float            # the plan's weight bytes in the same model (≤ budget)
    float_bytes: int             # those weights in full precision (before)
    memory_bytes: int            # what the quantized layers hold in memory after quantize_ (codes + scales)
    disk_bytes: int | None       # size of the saved quantized-layer file (adds biases, activation scales, header)
    other_float_bytes: int       # denoiser parameters besides the quantized weights (biases, norms), in float
    seconds: float
    timings: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line (the CLI prints these)."""
        p, b = self.plan, self.plan.budget
        out = [f"plan: {self.plan_path}  (plot: {self.plot_path})", f"  {p.summary()}",
               f"  weight budget {self.budget_bytes:,.0f} B ({b.get('storage')}); plan {self.plan_bytes:,.0f} B",
               f"  quantized weights in memory: {self.memory_bytes:,} B (float32 before: {self.float_bytes:,} B, "
               f"{self.float_bytes / max(self.memory_bytes, 1):.1f}x smaller)"]
        if b.get("storage") == "nominal" and self.memory_bytes > self.budget_bytes:
            out.append("  (the average-bits budget counts codes densely packed; finetune.quant stores 3-bit codes in "
                       "4 bits and 6-bit codes in 8, so memory can exceed it: give --budget-mb for a budget on the "
                       "stored bytes)")
        if self.disk_bytes is not None:
            out.append(f"  on disk: {self.weights_path} {self.disk_bytes:,} B (with biases and activation scales)")
        out.append(f"  denoiser parameters besides those weights (biases, norms, embeddings; kept in float): "
                   f"{self.other_float_bytes:,} B")
        out.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        return out

    def to_dict(self) -> dict:
        """JSON-able summary (paths as strings, the plan as its file's content)."""
        d = {k: getattr(self, k) for k in ("budget_bytes", "plan_bytes", "float_bytes", "memory_bytes", "disk_bytes",
                                           "other_float_bytes", "seconds", "timings")}
        d.update(plan_path=str(self.plan_path), plot_path=str(self.plot_path),
                 weights_path=None if self.weights_path is None else str(self.weights_path),
                 storage=self.plan.budget.get("storage"), plan=self.plan.to_dict())
        return d


def run_quantize(model, data, out, *, budget_mb: float | None = None, avg_bits: float | None = None,
                 timesteps: int | None = None, n_calib: int = 32, validate: bool = False, seed: int = 0,
                 save_weights: bool = True, config: MPQConfig | None = None,
                 progress: Progress | None = None, allocator: str | None = None) -> QuantizeResult:
    """Profile, allocate, write ``out`` (plan JSON) + ``out``.png, quantize and save; see module doc.

    Args:
        model, data: references (``zoo:NAME`` / folder / Hub id; ``builtin:NAME`` / folder) or objects.
        out: path of the plan JSON (``.json`` is appended when missing).
        budget_mb / avg_bits: the weight budget (exactly one).
        timesteps, n_calib, validate, seed: profile settings (see :class:`~profiler.mpq.profile.MPQConfig`;
            ``timesteps=None``: the allocator's K).
        allocator: a registered allocator (``profiler.mpq.allocators``: ``"grad-sensitivity"``, the default,
            ``"combined"``, ``"validated"``, ``"mpq"`` for MPQ-Diff as published, ``"sensitivity"``); ``None``: ``config``'s.
        save_weights: write the quantized layers to ``out`` with suffix ``.safetensors``.
        progress: ``progress(stage, done, total)``; stages "load", "profile", "validate", "quantize".
    """
    if (budget_mb is None) == (avg_bits is None):
        raise ValueError("give exactly one of budget_mb (megabytes, 10^6 bytes) or avg_bits (average weight bits)")
    if budget_mb is not None and not budget_mb > 0:
        raise ValueError(f"budget_mb must be positive, got {budget_mb!r}")
    out = Path(out)
    if out.suffix != ".json":
        out = out.with_name(out.name + ".json")
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"--out {str(out)!r} is a folder; give a file path such as plan.json")
    tick = progress or (lambda *a: None)
    t0 = time.perf_counter()
    timings = {}

    tick("load", 0, 1)
    ref = str(model) if isinstance(model, (str, os.PathLike)) else None
    m, ds = load_model_and_data(model, data)
    timings["load"] = time.perf_counter() - t0
    tick("load", 1, 1)

    t = time.perf_counter()
    cfg = (config or MPQConfig()).replace(n_calib=n_calib, seed=seed, validate=validate,
                                          **({} if allocator is None else {"allocator": allocator}))
    plan = profile_bits(m, ds, budget=None if budget_mb is None else budget_mb * MB, avg_bits=avg_bits,
                        timesteps=timesteps, config=cfg, progress=progress)
    if ref is not None:
        plan.settings["model"] = ref
    timings["profile"] = time.perf_counter() - t
    plan.save(out)
    png = plot_bitplan(plan, out.with_suffix(".png"),
                       title=f"{plan.settings.get('model') or 'model'} on {plan.settings.get('dataset') or 'data'}")

    t = time.perf_counter()
    tick("quantize", 0, 1)
    denoiser = m.denoiser
    float_params = sum(p.numel() * p.element_size() for p in denoiser.parameters())
    summary = apply_bitplan(m, plan)
    weights = None
    disk = None
    if save_weights:
        from finetune.quant import save_quantized

        weights = save_quantized(denoiser, out.with_suffix(".safetensors"))
        disk = weights.stat().st_size
    timings["quantize"] = time.perf_counter() - t
    tick("quantize", 1, 1)
    return QuantizeResult(plan=plan, plan_path=out, plot_path=png, weights_path=weights,
                          budget_bytes=float(plan.budget["weight_bytes"]), plan_bytes=float(plan.usage["weight_bytes"]),
                          float_bytes=summary.bytes_before, memory_bytes=summary.bytes_after, disk_bytes=disk,
                          other_float_bytes=float_params - summary.bytes_before,
                          seconds=time.perf_counter() - t0, timings=timings)
