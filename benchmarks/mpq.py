"""The default bit allocator and MPQ-Diff against uniform, random and sensitivity allocation, at equal memory and BOPs.

    python benchmarks/mpq.py [--models unet-xs-gradients dit-s-gradients unet-l-shapes] [--budgets 3 4 5] [--json FILE]
    python benchmarks/mpq.py --ablations [--json FILE]     # MPQ-Diff's own choices (profiler.mpq.profile doc)
    python benchmarks/mpq.py --skip-baselines [--json FILE]  # only the default and the gradient allocators

For each zoo model (built on first use) and each budget of average weight bits ``B`` the budget is the
weight memory and the bit operations of the uniform plan ``W{B}A8``, and five allocators fill it:

* ``default`` — ``profiler.mpq.allocators.DEFAULT_ALLOCATOR`` with its default settings, exactly what
  ``mandc quantize`` and ``mandc plan`` use (``"grad-sensitivity"``: the per-layer quantization error
  estimated by gradient probes; activation ranges from a K = 3 profile widened by a 10-step range pass);
  its entry names the allocator.
  The extra keys ``grad-sensitivity`` and ``combined`` (that error weighted by MPQ-Diff's orthogonality
  importance, contrast 1, from the same K = 3 profile) and ``validated`` (whichever of the two plans scores
  lower on validation images; its validation time is in ``cost``) are gradient allocators on the default's profile;
* ``uniform`` — every layer at ``W{B}A8`` (the budget's owner);
* ``mpq`` — MPQ-Diff, K sampled timesteps, with (contrast, α) picked by validation on training images
  outside the calibration batch (``profiler.mpq.profile.select_by_validation``); ``mpq_default`` (an extra
  key) is MPQ-Diff at contrast 1, α 0 without that selection;
* ``random`` — the same integer program with MPQ-Diff's importances (at the validated settings) permuted
  across layers (mean of ``--random-draws`` draws; each draw is in ``draws``);
* ``sensitivity`` — per-layer quantization error: each layer alone quantized at each choice, output MSE
  of the denoiser, minimised in sum by the same integer program.

Quality, on the dataset's held-out split: ``loss_increase`` (``finetune.metrics.heldout_loss`` of the
quantized model minus the full-precision one's: fixed timesteps and noise) and ``sample_mse`` (mean
squared pixel difference, in [0, 1] units, between DDIM samples of the quantized and the full-precision
model: same prompts, seeds and sampler). Cost: wall time of the K-timestep profile against a dense profile,
and the Spearman rank correlation of their importance vectors (at contrast 1, α 0). The dense profile takes
every 4th timestep (``--all-timesteps 250`` of T = 1000; ``--all-timesteps 1000`` is every step, ~4× the
time): neighbouring steps give nearly the same orthogonality, and all 1000 would add ~2.5 (UNet) and ~5
(DiT) minutes of a core (0.19 / 0.39 s per step), past the 10 minutes this benchmark may take. The JSON says which (``all_timesteps``, ``all_stride``) and extrapolates the cost of
all T steps linearly (``all_T_s_est``: the profile's cost is one forward and L Grams per step). The
trade-off curve (``curve``) scores K = 1…100 sampled steps against the dense profile, taking for each
sampled step the nearest dense one. Storage: the MPQ plan at the middle budget applied with ``quantize_``:
bytes in memory and on disk against the budget. Fine-tuning: ``finetune.run(..., "peqa", {"plan": FILE})``
on that plan (the product path: PEQA quantizes with the plan's bits and trains only the scales), held-out
loss before and after.

Prints a Markdown table (stdout) and, with ``--json``, writes::

    {"models": {MODEL: {"budgets": {AVG_BITS: {ALLOCATOR: {"loss_increase", "sample_mse", "weight_bytes", ...}}},
                        "limits": {AVG_BITS: {"weight_bytes", "bops"}}, "base_heldout_loss": X}},
     "cost": {MODEL: {"k10_s", "all_s", "spearman", "all_timesteps", "curve", ...}}, "storage": {...},
     "finetune": {...}, "chosen": {...}, "timing": {...}, "settings": {...}}

with ALLOCATOR ``default``, ``mpq``, ``uniform``, ``random``, ``sensitivity`` and the extras ``mpq_default``,
``grad-sensitivity`` and ``combined``; ``cost`` also holds the default's profile (``default_s``: its orthogonality profile
and its sensitivity estimate) against the dense profile (``default_ratio``, ``default_ratio_T_est``).
``--finetune-steps 0`` skips the PEQA run.

Runs the models in parallel processes (``--jobs``, default one per model) of one torch thread each
(``--threads``): on a 2-core machine two single-threaded processes beat one two-threaded one (OpenMP
spin-waits made multi-threaded runs several times slower when the machine was shared). Both profiles of a
model run in the same process, so their cost ratio is fair whatever the load.

Full run (2 models × 3 budgets × 4 allocators, K = 10 against the dense profile), about 10 minutes on 2
quiet cores::

    MANDC_HOME=... python benchmarks/mpq.py --json bench/mpq.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from data.io import atomic_write

ALLOCATORS = ("default", "mpq", "uniform", "random", "sensitivity")
GRADIENT_ALLOCATORS = ("grad-sensitivity", "combined", "validated")  # evaluated on the default's profile, beside it
EXTRAS = ("mpq_default",) + GRADIENT_ALLOCATORS


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def images_to_array(images):
    import numpy as np

    return np.stack([np.asarray(im, dtype=np.float64) / 255.0 for im in images])


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def evaluate(model, plan, heldout, base_loss, prompts, ref_images, steps):
    """Held-out loss increase and sample MSE of ``model`` quantized with ``plan`` (``model`` untouched)."""
    from finetune.metrics import heldout_loss
    from profiler.mpq.profile import quantized_copy

    q = quantized_copy(model, plan)
    loss = heldout_loss(q, heldout).mean - base_loss
    imgs = images_to_array(q.sample(prompts, steps=steps, seed=0))
    return {"loss_increase": loss, "sample_mse": float(((imgs - ref_images) ** 2).mean()),
            "weight_bytes": float(plan.usage["weight_bytes"]), "packed_bytes": float(plan.usage["packed_bytes"]),
            "bops": float(plan.usage["bops"]), "avg_bits": float(plan.usage["avg_bits"]),
            "solver_optimal": bool(plan.timing.get("solver_optimal", True))}


def finetune_plan(model_ref: str, plan, data_ref: str, steps: int, lr: float, out_dir: Path) -> dict:
    """``finetune.run`` with PEQA on ``plan`` (written to ``out_dir/plan.json``): the quantized model fine-tunes."""
    from finetune.runner import run

    path = plan.save(out_dir / "plan.json")
    res = run(model_ref, data_ref, "peqa", {"plan": str(path), "steps": steps, "lr": lr, "batch_size": 16,
                                           "checkpoint_every": 0}, out_dir / "peqa", force=True)
    return {"steps": res.steps, "lr": lr, "heldout_loss_before": res.heldout_loss_before,
            "heldout_loss_after": res.heldout_loss_after, "seconds": res.wall_s, "step_s": res.step_s,
            "trainable_params": res.trainable_params}


def load_setup(name: str, args):
    """``(model, ds, cfg, batch, val, layers)`` shared by a model's main run and its ablations: the zoo model
    (built first if missing), the dataset, the MPQ config from the flags, the calibration batch, the
    validation images and the probed layers."""
    import torch

    from data import load_dataset
    from finetune import zoo
    from finetune.load import load_model
    from profiler.mpq.capture import calibration_batch, probe_layers
    from profiler.mpq.profile import MPQConfig, validation_images

    torch.set_num_threads(args.threads)
    if not zoo.is_built(name):
        log(f"[{name}] building the zoo model (once; cached in {zoo.zoo_home()})")
        zoo.build(name)
    model = load_model(f"zoo:{name}")
    ds = load_dataset(args.data)
    cfg = MPQConfig(timesteps=args.timesteps, n_calib=args.n_calib, time_limit=args.time_limit,
                    n_validation=args.n_validation, allocator="mpq")
    batch = calibration_batch(model, ds.train, cfg.n_calib, cfg.seed)
    val = validation_images(ds.train, batch, cfg.n_validation)
    return model, ds, cfg, batch, val, probe_layers(model, batch)


def run_model(name: str, args) -> dict:
    import numpy as np

    from finetune.metrics import heldout_loss
    from finetune.quant import quantized_weight_bytes, save_quantized
    from profiler.mpq.allocate import Budget
    from profiler.mpq.baselines import baseline_plan, sensitivity_profile
    from profiler.mpq.capture import describe
    from profiler.mpq.importance import aggregate_importance, beta_for_contrast, sample_timesteps
    from profiler.mpq.allocators import DEFAULT_ALLOCATOR, get_allocator
    from profiler.mpq.profile import (MPQConfig, measure_sensitivity, pick_by_validation, pinned_layers, plan_from_profile,
                                      profile_importance, quantized_copy, select_by_validation,
                                      sensitivity_timesteps)

    t_model = time.perf_counter()
    timing = {}
    model, ds, cfg, batch, val, layers = load_setup(name, args)
    pinned = pinned_layers(layers, cfg)
    log(f"[{name}] {describe(layers)}")

    timing["load"] = time.perf_counter() - t_model
    prof = profile_importance(model, batch, cfg.timesteps, layers)
    k_s = prof.seconds
    log(f"[{name}] K={cfg.timesteps} profile: {k_s:.1f}s")
    T = model.num_train_timesteps
    n_all = min(args.all_timesteps or T, T)
    c0 = time.process_time()  # CPU seconds of this one-thread process: a cost ratio the other jobs' load leaves alone
    prof_all = profile_importance(model, batch, n_all, layers,
                                  progress=lambda s, d, n: log(f"[{name}] dense profile {d}/{n}")
                                  if d % 50 == 0 else None)
    timing["profile_k"], timing["profile_dense"] = k_s, prof_all.seconds
    dense_cpu = time.process_time() - c0
    beta = prof.beta(cfg)
    rho = spearman(prof.importance(beta, 0.0), prof_all.importance(prof_all.beta(cfg), 0.0))
    mid = Budget.from_avg_bits(layers, args.budgets[len(args.budgets) // 2])
    plan_k, plan_all = plan_from_profile(prof, mid, cfg), plan_from_profile(prof_all, mid, cfg)
    agree = float(np.mean([plan_k.layers[n] == plan_all.layers[n] for n in plan_k.layers]))
    # Trade-off curve for free: a K-step profile is the dense profile restricted to K sampled steps (same
    # batch, same noise; each sampled step replaced by the nearest dense one), and costs ~K/n of it.
    curve = []
    dense_t = np.asarray(prof_all.timesteps)
    theta_all = prof_all.importance(prof_all.beta(cfg), 0.0)
    for k in (1, 2, 3, 5, 10, 20, 50, 100):
        if k >= len(dense_t):
            break
        rows = sorted({int(np.abs(dense_t - t).argmin()) for t in sample_timesteps(T, k)})
        g = prof_all.gamma[rows]
        th = aggregate_importance(g, dense_t[rows].tolist(), T, beta_for_contrast(g, cfg.contrast), 0.0)
        curve.append({"k": k, "spearman": spearman(th, theta_all),
                      "est_s": prof_all.seconds * len(rows) / len(dense_t)})
    per_step = prof_all.seconds / len(prof_all.timesteps)
    cost = {"k10_s" if cfg.timesteps == 10 else f"k{cfg.timesteps}_s": k_s, "all_s": prof_all.seconds,
            "spearman": rho, "k": cfg.timesteps, "all_timesteps": len(prof_all.timesteps),
            "all_stride": T / len(prof_all.timesteps), "num_train_timesteps": T,
            "all_T_s_est": per_step * T, "ratio": k_s / prof_all.seconds, "ratio_T_est": k_s / (per_step * T),
            "plan_agreement": agree, "curve": curve}
    log(f"[{name}] dense {len(prof_all.timesteps)} of {T} timesteps: {prof_all.seconds:.1f}s (all {T}: "
        f"~{per_step * T:.0f}s); ratio {cost['ratio']:.3f} (vs all T: {cost['ratio_T_est']:.4f}); "
        f"spearman {rho:.3f}; identical layer bits {agree:.0%}; curve "
        + ", ".join(f"K={c['k']}: {c['spearman']:.3f}" for c in curve))

    sens_ts = sensitivity_timesteps(T, args.sensitivity_timesteps)  # the default allocator's steps, too
    if not args.skip_baselines:
        sens = sensitivity_profile(model, batch, layers, sens_ts, n_samples=args.sensitivity_samples)
        cost["sensitivity_s"] = timing["sensitivity"] = sens.seconds
        log(f"[{name}] sensitivity profile: {sens.seconds:.1f}s")

    # the default allocator, as mandc quantize / mandc plan run it (its own K and sensitivity estimate)
    cfg_d = MPQConfig(n_calib=args.n_calib, time_limit=args.time_limit, sens_timesteps=args.sensitivity_timesteps,
                      sens_samples=args.sensitivity_samples, sens_probes=args.sensitivity_probes)
    c0 = time.process_time()
    prof_d = profile_importance(model, batch, cfg_d.k, layers, range_timesteps=cfg_d.range_timesteps,
                                range_samples=cfg_d.range_samples)
    measure_sensitivity(model, batch, prof_d, cfg_d)
    d_cpu = time.process_time() - c0
    cpu_250 = dense_cpu / len(prof_all.timesteps) * 250  # the README's dense reference: every 4th of T = 1000
    d_sens = prof_d.sensitivity.seconds if prof_d.sensitivity is not None else 0.0
    cost.update(default_allocator=DEFAULT_ALLOCATOR, default_k=cfg_d.k, default_profile_s=prof_d.seconds,
                default_sensitivity_s=d_sens, default_s=prof_d.seconds + d_sens,
                default_ratio=(prof_d.seconds + d_sens) / prof_all.seconds,
                default_ratio_T_est=(prof_d.seconds + d_sens) / (per_step * T),
                default_range_timesteps=prof_d.range_timesteps,
                dense_cpu_s=dense_cpu, default_cpu_s=d_cpu, default_cpu_ratio_250_est=d_cpu / cpu_250,
                default_ratio_250_est=(prof_d.seconds + d_sens) / (per_step * 250),
                # its activation ranges against the K-step profile's (the baselines'): max and median ratio
                default_ranges_vs_k=[float(np.max(prof_d.input_max / np.maximum(prof.input_max, 1e-30))),
                                     float(np.median(prof_d.input_max / np.maximum(prof.input_max, 1e-30)))])
    timing["default_profile"] = cost["default_s"]
    log(f"[{name}] default allocator {DEFAULT_ALLOCATOR}: K={cfg_d.k} profile {prof_d.seconds:.1f}s + sensitivity "
        f"estimate {d_sens:.1f}s = {cost['default_ratio']:.3f} of the dense profile "
        f"({cost['default_ratio_T_est']:.4f} of all T); CPU {d_cpu:.1f}s = {cost['default_cpu_ratio_250_est']:.3f} "
        f"of a 250-step dense profile's CPU time (extrapolated)")

    t0 = time.perf_counter()
    base = heldout_loss(model, ds.heldout).mean
    prompts = list(ds.heldout.captions[: args.prompts])
    ref = images_to_array(model.sample(prompts, steps=args.sample_steps, seed=0))
    timing["reference"] = time.perf_counter() - t0

    budgets, chosen, limits = {}, {}, {}
    mid_plan = None
    for bits in args.budgets:
        budget = Budget.from_avg_bits(layers, bits)
        t0 = time.perf_counter()
        row, val_s, best = {}, 0.0, None
        if not args.skip_baselines:  # MPQ-Diff (validated and not), uniform, random, sensitivity
            best, table = select_by_validation(model, prof, budget, val, cfg)
            val_s = time.perf_counter() - t0
            chosen_table = table
            mpq = plan_from_profile(prof, budget, best)
            chosen[str(bits)] = {"contrast": best.contrast, "alpha": best.alpha, "validation_s": val_s,
                                 "grid": chosen_table}
            theta = prof.importance(prof.beta(best), best.alpha)
            row = {"mpq": evaluate(model, mpq, ds.heldout, base, prompts, ref, args.sample_steps)}
            row["mpq"].update(contrast=best.contrast, alpha=best.alpha)
            # MPQ-Diff without the validation step (contrast 1, α 0): what the selection adds
            row["mpq_default"] = evaluate(model, plan_from_profile(prof, budget, cfg), ds.heldout, base, prompts, ref,
                                          args.sample_steps)
            uni = baseline_plan(layers, "uniform", budget, uniform_bits=(round(bits) if float(bits).is_integer() else bits, 8),
                                act_ranges=prof.input_max)
            row["uniform"] = evaluate(model, uni, ds.heldout, base, prompts, ref, args.sample_steps)
            draws = [evaluate(model, baseline_plan(layers, "random", budget, pinned=pinned, seed=s, theta=theta,
                                                   propagate=best.propagate, act_ranges=prof.input_max,
                                                   time_limit=args.time_limit),
                              ds.heldout, base, prompts, ref, args.sample_steps) for s in range(args.random_draws)]
            row["random"] = {k: float(np.mean([d[k] for d in draws])) for k in draws[0] if k != "solver_optimal"}
            row["random"]["solver_optimal"] = all(d["solver_optimal"] for d in draws)
            row["random"]["draws"] = [{k: d[k] for k in ("loss_increase", "sample_mse")} for d in draws]
            sp = baseline_plan(layers, "sensitivity", budget, pinned=pinned, sensitivity=sens, act_ranges=prof.input_max,
                               time_limit=args.time_limit)
            row["sensitivity"] = evaluate(model, sp, ds.heldout, base, prompts, ref, args.sample_steps)
        for a in GRADIENT_ALLOCATORS:
            cfg_a = cfg_d.replace(allocator=a)
            if get_allocator(a).candidates:  # picks on validation images (timed: part of its cost)
                c0 = time.process_time()
                plan_a = pick_by_validation(model, prof_d, budget, val, cfg_a)
                cost.setdefault(f"{a}_validation_cpu_s", {})[str(bits)] = time.process_time() - c0
                row[a] = evaluate(model, plan_a, ds.heldout, base, prompts, ref, args.sample_steps)
                row[a].update(candidate=plan_a.settings["candidate"], validation_s=plan_a.timing["validation_s"],
                              candidates=plan_a.settings["candidates"])
                cost.setdefault(f"{a}_validation_s", {})[str(bits)] = plan_a.timing["validation_s"]
            else:
                row[a] = evaluate(model, plan_from_profile(prof_d, budget, cfg_a), ds.heldout, base, prompts, ref,
                                  args.sample_steps)
        row["default"] = (dict(row[DEFAULT_ALLOCATOR]) if DEFAULT_ALLOCATOR in GRADIENT_ALLOCATORS else
                          evaluate(model, plan_from_profile(prof_d, budget, cfg_d), ds.heldout, base, prompts, ref,
                                   args.sample_steps))
        row["default"]["allocator"] = DEFAULT_ALLOCATOR
        limits[str(bits)] = {"weight_bytes": budget.weight_bytes, "bops": budget.bops}  # what every allocator had
        budgets[str(bits)] = row
        timing[f"budget_{bits}"] = time.perf_counter() - t0
        timing[f"validation_{bits}"] = val_s
        if bits == args.budgets[len(args.budgets) // 2]:
            mid_plan = plan_from_profile(prof_d, budget, cfg_d) if args.skip_baselines else mpq
        log(f"[{name}] B={bits}: " + ", ".join(f"{a} {row[a]['loss_increase']:.4f}" for a in ALLOCATORS + EXTRAS
                                               if a in row)
            + ("" if best is None else f" (mpq contrast {best.contrast}, alpha {best.alpha}; validation {val_s:.0f}s)"))

    # storage: the middle-budget MPQ plan (the default's with --skip-baselines) really applied and saved
    t0 = time.perf_counter()
    q = quantized_copy(model, mid_plan)
    float_w = 4 * sum(i.n_weights for i in layers)
    with tempfile.TemporaryDirectory() as d:
        path = save_quantized(q.denoiser, Path(d) / "q.safetensors")
        disk = path.stat().st_size
        storage = {"avg_bits": args.budgets[len(args.budgets) // 2],
                   "budget_nominal_bytes": mid_plan.budget["weight_bytes"],
                   "plan_nominal_bytes": mid_plan.usage["nominal_bytes"],
                   "plan_packed_bytes": mid_plan.usage["packed_bytes"],
                   "memory_bytes": quantized_weight_bytes(q.denoiser), "disk_bytes": disk, "float_weight_bytes": float_w,
                   "float_denoiser_bytes": sum(p.numel() * p.element_size() for p in model.denoiser.parameters())}
        timing["storage"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ft = (finetune_plan(f"zoo:{name}", mid_plan, args.data, args.finetune_steps, args.finetune_lr, Path(d))
              if args.finetune_steps > 0 else None)
        timing["finetune"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_model
    log(f"[{name}] storage {storage['memory_bytes']:,} B in memory, {disk:,} B on disk (float weights {float_w:,} B); "
        + (f"PEQA {ft['heldout_loss_before']:.4f} -> {ft['heldout_loss_after']:.4f}; " if ft else "")
        + f"model total {timing['total']:.0f}s")
    return {"budgets": budgets, "limits": limits, "cost": cost, "storage": storage, "finetune": ft, "chosen": chosen,
            "base_heldout_loss": base, "n_layers": len(layers), "timing": timing}


ABLATIONS = ("uniform", "mpq", "propagate", "objective_bits", "contrast_0", "mpq_validated", "propagate_validated")


def run_ablations(name: str, args) -> dict:
    """``--ablations``: MPQ-Diff's own choices (``profiler.mpq.profile`` module doc), held-out loss increase only.

    ``mpq`` is the default (θ_i, noise objective, contrast 1, α 0); ``propagate`` uses OMPQ's suffix mean θ̄;
    ``objective_bits`` OMPQ's literal importance-weighted bits; ``contrast_0`` no orthogonality signal;
    the ``*_validated`` pair picks (contrast, α) by validation with θ and with θ̄.
    """
    from finetune.metrics import heldout_loss
    from profiler.mpq.allocate import Budget
    from profiler.mpq.baselines import baseline_plan
    from profiler.mpq.profile import plan_from_profile, profile_importance, quantized_copy, select_by_validation

    t0 = time.perf_counter()
    model, ds, cfg, batch, val, layers = load_setup(name, args)
    prof = profile_importance(model, batch, cfg.timesteps, layers)
    base = heldout_loss(model, ds.heldout).mean

    def loss(plan) -> float:
        return heldout_loss(quantized_copy(model, plan), ds.heldout).mean - base

    out = {}
    for bits in args.budgets:
        budget = Budget.from_avg_bits(layers, bits)
        row = {"uniform": loss(baseline_plan(layers, "uniform", budget, uniform_bits=(bits, 8),
                                             act_ranges=prof.input_max))}
        for key, c in (("mpq", cfg), ("propagate", cfg.replace(propagate=True)),
                       ("objective_bits", cfg.replace(objective="bits")), ("contrast_0", cfg.replace(contrast=0.0))):
            row[key] = loss(plan_from_profile(prof, budget, c))
        for key, c in (("mpq_validated", cfg), ("propagate_validated", cfg.replace(propagate=True))):
            best, _ = select_by_validation(model, prof, budget, val, c)
            row[key] = loss(plan_from_profile(prof, budget, best))
        out[str(bits)] = row
        log(f"[{name}] ablations B={bits}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    return {"ablations": out, "seconds": time.perf_counter() - t0}


def markdown(results: dict) -> str:
    lines = ["| model | avg bits | allocator | loss increase | sample MSE | weight bytes | BOPs/sample |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        for bits, row in r["budgets"].items():
            for a in [a for a in ALLOCATORS + EXTRAS if a in row]:
                v = row[a]
                label = f"**default** ({v['allocator']})" if a == "default" else a
                lines.append(f"| {name} | {bits} | {label} | {v['loss_increase']:.4f} | {v['sample_mse']:.5f} | "
                             f"{v['weight_bytes']:,.0f} | {v['bops']:.3g} |")
    lines += ["", "| model | K-step profile (s) | dense profile (s) | ratio | all T steps (s, extrapolated) | ratio to all T "
              "| Spearman | identical plan bits | sensitivity profile (s) | default's profile (s) | its ratio | its ratio to all T |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in results["cost"].items():
        k = next(v for key, v in c.items() if key.startswith("k") and key.endswith("_s"))
        lines.append(f"| {name} | {k:.1f} ({c['k']} steps) | {c['all_s']:.1f} ({c['all_timesteps']} steps) | "
                     f"{c['ratio']:.3f} | {c['all_T_s_est']:.0f} ({c['num_train_timesteps']}) | {c['ratio_T_est']:.4f} | "
                     f"{c['spearman']:.3f} | {c['plan_agreement']:.0%} | {c.get('sensitivity_s', float('nan')):.1f} | "
                     f"{c['default_s']:.1f} (K={c['default_k']} + sensitivity estimate) | {c['default_ratio']:.3f} | "
                     f"{c['default_ratio_T_est']:.4f} |")
    lines += ["", "| model | " + " | ".join(f"K={c['k']}" for c in next(iter(results["cost"].values()))["curve"]) + " |"]
    lines += ["|---|" + "---|" * len(next(iter(results["cost"].values()))["curve"])]
    for name, c in results["cost"].items():
        lines.append(f"| {name} Spearman to dense | " + " | ".join(f"{v['spearman']:.3f}" for v in c["curve"]) + " |")
    lines += ["", "| model | budget (nominal B) | plan nominal B | in memory B | on disk B | float32 weights B | PEQA loss before → after |",
              "|---|---|---|---|---|---|---|"]
    for name, s in results["storage"].items():
        f = results["finetune"][name]
        ft = f"{f['heldout_loss_before']:.4f} → {f['heldout_loss_after']:.4f}" if f else "(not run)"
        lines.append(f"| {name} | {s['budget_nominal_bytes']:,.0f} | {s['plan_nominal_bytes']:,.0f} | {s['memory_bytes']:,} | "
                     f"{s['disk_bytes']:,} | {s['float_weight_bytes']:,} | {ft} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["unet-xs-gradients", "dit-s-gradients", "unet-l-shapes"],
                   help="zoo model names")
    p.add_argument("--data", default="builtin:gradients_linear", help="dataset reference (calibration, validation, held-out)")
    p.add_argument("--budgets", nargs="+", type=float, default=[3.0, 4.0, 5.0], help="average weight bits")
    p.add_argument("--timesteps", type=int, default=10, help="K sampled timesteps")
    p.add_argument("--all-timesteps", type=int, default=250,
                   help="steps of the dense reference profile, uniform over 0..T-1 (250: every 4th of T=1000)")
    p.add_argument("--n-calib", type=int, default=32)
    p.add_argument("--n-validation", type=int, default=32)
    p.add_argument("--random-draws", type=int, default=5)
    p.add_argument("--prompts", type=int, default=8, help="held-out captions sampled for sample_mse")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps for sample_mse")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per integer program (a safety net: HiGHS "
                   "stops at a 1e-4 gap or 2000 nodes, deterministically, in < 2 s on the zoo)")
    p.add_argument("--finetune-steps", type=int, default=20, help="PEQA steps (batch 16) on the middle budget's plan "
                   "(0: skip the PEQA run)")
    p.add_argument("--finetune-lr", type=float, default=1e-4, help="PEQA scale lr (zoo scale; SD uses ~3e-6)")
    p.add_argument("--sensitivity-timesteps", type=int, default=2)
    p.add_argument("--sensitivity-samples", type=int, default=8)
    p.add_argument("--sensitivity-probes", type=int, default=8,
                   help="gradient probes per timestep of the default's sensitivity estimate (MPQConfig.sens_probes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    p.add_argument("--jobs", type=int, default=None, help="models run in parallel processes (default: one per model)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--skip-baselines", action="store_true",
                   help="only the default allocator and its gradient extras (and the cost profiles): rerun the default "
                        "after a change without the slow baselines, which do not depend on it")
    p.add_argument("--ablations", action="store_true",
                   help="instead: MPQ-Diff's own choices (propagation, objective, contrast 0, validation), loss only")
    args = p.parse_args(argv)
    args.budgets = [int(b) if float(b).is_integer() else b for b in args.budgets]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    jobs = max(1, min(args.jobs or len(args.models), len(args.models)))
    fn = run_ablations if args.ablations else run_model
    if jobs == 1:
        runs = [fn(name, args) for name in args.models]
    else:  # one process per model; spawn: no forked torch/OpenMP state
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(fn, args.models, [args] * len(args.models)))
    if args.ablations:
        results = {"ablations": {name: r["ablations"] for name, r in zip(args.models, runs)},
                   "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "seconds": time.perf_counter() - t0}
        lines = ["| model | avg bits | " + " | ".join(ABLATIONS) + " |", "|---|---|" + "---|" * len(ABLATIONS)]
        for name, rows in results["ablations"].items():
            for bits, row in rows.items():
                lines.append(f"| {name} | {bits} | " + " | ".join(f"{row[k]:.4f}" for k in ABLATIONS) + " |")
        print("held-out loss increase over full precision\n\n" + "\n".join(lines))
        print(f"\ntotal {results['seconds']:.0f}s")
        _write_json(args.json, results)
        return 0
    results = {"models": {}, "cost": {}, "storage": {}, "finetune": {}, "chosen": {}, "timing": {}}
    for name, r in zip(args.models, runs):
        results["models"][name] = {"budgets": r["budgets"], "limits": r["limits"], "base_heldout_loss": r["base_heldout_loss"],
                                   "n_layers": r["n_layers"]}
        for k in ("cost", "storage", "finetune", "chosen", "timing"):
            results[k][name] = r[k]
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["seconds"] = time.perf_counter() - t0
    _write_json(args.json, results)  # first: a table that fails to print loses no measurement
    print(markdown(results))
    print(f"\ntotal {results['seconds']:.0f}s: {len(args.models)} model(s) in {jobs} process(es) of {args.threads} "
          f"thread(s)")
    _write_json(args.json, results)
    return 0


def _write_json(path: Path | None, results: dict) -> None:
    if path:
        atomic_write(path, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
