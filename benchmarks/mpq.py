"""MPQ-Diff against uniform, random and sensitivity bit allocation, at equal memory and bit operations.

    python benchmarks/mpq.py [--models unet-xs-gradients dit-s-gradients] [--budgets 3 4 5] [--json FILE]

For each zoo model (built on first use) and each budget of average weight bits ``B`` the budget is the
weight memory and the bit operations of the uniform plan ``W{B}A8``, and four allocators fill it:

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
model: same prompts, seeds and sampler). Cost: wall time of the K-timestep profile against the profile of
all T timesteps, and the Spearman rank correlation of their importance vectors (at contrast 1, α 0).
Storage: the MPQ plan at the middle budget applied with ``quantize_``: bytes in memory and on disk against
the budget. Fine-tuning: a few PEQA steps on the quantization scales of that model, held-out loss before
and after.

Prints a Markdown table (stdout) and, with ``--json``, writes::

    {"models": {MODEL: {"budgets": {AVG_BITS: {ALLOCATOR: {"loss_increase", "sample_mse", "weight_bytes", ...}}}}},
     "cost": {MODEL: {"k10_s", "all_s", "spearman", ...}}, "storage": {...}, "finetune": {...}, "settings": {...}}

Runs on one torch thread by default (``--threads``): on a shared 2-core machine OpenMP spin-waits made
multi-threaded runs several times slower.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ALLOCATORS = ("mpq", "uniform", "random", "sensitivity")


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
            "bops": float(plan.usage["bops"]), "avg_bits": float(plan.usage["avg_bits"])}


def finetune_scales(model, plan, data, heldout, steps: int, lr: float, seed: int = 0) -> dict:
    """PEQA on the plan's quantized model: train only the quantization scales for ``steps`` steps."""
    import torch

    from finetune.metrics import heldout_loss
    from finetune.quant import mark_only_scales_trainable_, scale_parameters
    from profiler.mpq.profile import quantized_copy

    q = quantized_copy(model, plan)
    before = heldout_loss(q, heldout).mean
    mark_only_scales_trainable_(q.denoiser)
    opt = torch.optim.AdamW(scale_parameters(q.denoiser), lr=lr, weight_decay=0.0)
    pixels = data.to_tensor(model.resolution)
    captions = list(data.captions)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(captions), (16,), generator=g)
        batch = {"pixel_values": pixels[idx], "prompts": [captions[i] for i in idx.tolist()]}
        loss = q.training_loss(batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.denoiser.eval()
    after = heldout_loss(q, heldout).mean
    return {"steps": steps, "lr": lr, "heldout_loss_before": before, "heldout_loss_after": after,
            "seconds": time.perf_counter() - t0}


def run_model(name: str, args) -> dict:
    import numpy as np
    import torch

    from data import load_dataset
    from finetune import zoo
    from finetune.metrics import heldout_loss
    from finetune.model import T2IModel
    from finetune.quant import quantized_weight_bytes, save_quantized
    from profiler.mpq.allocate import Budget
    from profiler.mpq.baselines import baseline_plan, sensitivity_profile
    from profiler.mpq.capture import calibration_batch, describe, probe_layers
    from profiler.mpq.importance import aggregate_importance, beta_for_contrast, sample_timesteps
    from profiler.mpq.profile import (MPQConfig, pinned_layers, plan_from_profile, profile_importance,
                                      quantized_copy, select_by_validation, validation_images)

    t_model = time.perf_counter()
    if not zoo.is_built(name):
        log(f"[{name}] building the zoo model (once; cached in {zoo.zoo_home()})")
        zoo.build(name)
    model = T2IModel.from_pretrained(f"zoo:{name}")
    ds = load_dataset(args.data)
    cfg = MPQConfig(timesteps=args.timesteps, n_calib=args.n_calib, time_limit=args.time_limit,
                    n_validation=args.n_validation)
    batch = calibration_batch(model, ds.train, cfg.n_calib, cfg.seed)
    val = validation_images(ds.train, batch, cfg.n_validation)
    layers = probe_layers(model, batch)
    pinned = pinned_layers(layers, cfg)
    log(f"[{name}] {describe(layers)}")

    prof = profile_importance(model, batch, cfg.timesteps, layers)
    k_s = prof.seconds
    log(f"[{name}] K={cfg.timesteps} profile: {k_s:.1f}s")
    n_all = args.all_timesteps or model.num_train_timesteps
    prof_all = profile_importance(model, batch, n_all, layers,
                                  progress=lambda s, d, n: log(f"[{name}] all-timesteps profile {d}/{n}")
                                  if d % 100 == 0 else None)
    beta = prof.beta(cfg)
    rho = spearman(prof.importance(beta, 0.0), prof_all.importance(prof_all.beta(cfg), 0.0))
    mid = Budget.from_avg_bits(layers, args.budgets[len(args.budgets) // 2])
    plan_k, plan_all = plan_from_profile(prof, mid, cfg), plan_from_profile(prof_all, mid, cfg)
    agree = float(np.mean([plan_k.layers[n] == plan_all.layers[n] for n in plan_k.layers]))
    # Trade-off curve for free: a K-step profile is the all-steps profile restricted to K sampled steps
    # (same batch, same noise), and its cost is ~K/T of it.
    curve = []
    theta_all = prof_all.importance(prof_all.beta(cfg), 0.0)
    for k in (1, 2, 3, 5, 10, 20, 50, 100):
        if k >= len(prof_all.timesteps):
            break
        rows = [prof_all.timesteps.index(t) for t in sample_timesteps(model.num_train_timesteps, k)
                if t in prof_all.timesteps]
        if len(rows) == k:
            g = prof_all.gamma[rows]
            th = aggregate_importance(g, [prof_all.timesteps[r] for r in rows], model.num_train_timesteps,
                                      beta_for_contrast(g, cfg.contrast), 0.0)
            curve.append({"k": k, "spearman": spearman(th, theta_all),
                          "est_s": prof_all.seconds * k / len(prof_all.timesteps)})
    cost = {"k10_s" if cfg.timesteps == 10 else f"k{cfg.timesteps}_s": k_s, "all_s": prof_all.seconds,
            "spearman": rho, "k": cfg.timesteps, "all_timesteps": len(prof_all.timesteps),
            "ratio": k_s / prof_all.seconds, "plan_agreement": agree, "curve": curve}
    log(f"[{name}] all {len(prof_all.timesteps)} timesteps: {prof_all.seconds:.1f}s; ratio {cost['ratio']:.3f}; "
        f"spearman {rho:.3f}; identical layer bits {agree:.0%}; curve "
        + ", ".join(f"K={c['k']}: {c['spearman']:.3f}" for c in curve))

    sens_ts = [prof.timesteps[i] for i in np.linspace(0, len(prof.timesteps) - 1, args.sensitivity_timesteps + 2)
               .round().astype(int)[1:-1]]  # interior points of the K sampled steps
    sens = sensitivity_profile(model, batch, layers, sens_ts, n_samples=args.sensitivity_samples)
    cost["sensitivity_s"] = sens.seconds
    log(f"[{name}] sensitivity profile: {sens.seconds:.1f}s")

    base = heldout_loss(model, ds.heldout).mean
    prompts = list(ds.heldout.captions[: args.prompts])
    ref = images_to_array(model.sample(prompts, steps=args.sample_steps, seed=0))

    budgets, chosen = {}, {}
    mid_plan = None
    for bits in args.budgets:
        budget = Budget.from_avg_bits(layers, bits)
        t0 = time.perf_counter()
        best, table = select_by_validation(model, prof, budget, val, cfg)
        val_s = time.perf_counter() - t0
        mpq = plan_from_profile(prof, budget, best)
        chosen[str(bits)] = {"contrast": best.contrast, "alpha": best.alpha, "validation_s": val_s}
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
        row["random"] = {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}
        row["random"]["draws"] = [{k: d[k] for k in ("loss_increase", "sample_mse")} for d in draws]
        sp = baseline_plan(layers, "sensitivity", budget, pinned=pinned, sensitivity=sens, act_ranges=prof.input_max,
                           time_limit=args.time_limit)
        row["sensitivity"] = evaluate(model, sp, ds.heldout, base, prompts, ref, args.sample_steps)
        row["budget"] = {"weight_bytes": budget.weight_bytes, "bops": budget.bops}
        budgets[str(bits)] = row
        if bits == args.budgets[len(args.budgets) // 2]:
            mid_plan = mpq
        log(f"[{name}] B={bits}: " + ", ".join(f"{a} {row[a]['loss_increase']:.4f}" for a in ALLOCATORS + ("mpq_default",))
            + f" (mpq contrast {best.contrast}, alpha {best.alpha}; validation {val_s:.0f}s)")

    # storage: the middle-budget MPQ plan really applied and saved
    q = quantized_copy(model, mid_plan)
    with tempfile.TemporaryDirectory() as d:
        path = save_quantized(q.denoiser, Path(d) / "q.safetensors")
        disk = path.stat().st_size
    float_w = 4 * sum(i.n_weights for i in layers)
    storage = {"avg_bits": args.budgets[len(args.budgets) // 2], "budget_nominal_bytes": mid_plan.budget["weight_bytes"],
               "plan_nominal_bytes": mid_plan.usage["nominal_bytes"], "plan_packed_bytes": mid_plan.usage["packed_bytes"],
               "memory_bytes": quantized_weight_bytes(q.denoiser), "disk_bytes": disk, "float_weight_bytes": float_w,
               "float_denoiser_bytes": sum(p.numel() * p.element_size() for p in model.denoiser.parameters())}
    ft = finetune_scales(model, mid_plan, ds.train, ds.heldout, args.finetune_steps, args.finetune_lr)
    log(f"[{name}] storage {storage['memory_bytes']:,} B in memory, {disk:,} B on disk (float weights {float_w:,} B); "
        f"PEQA {ft['heldout_loss_before']:.4f} -> {ft['heldout_loss_after']:.4f}; model total {time.perf_counter() - t_model:.0f}s")
    return {"budgets": budgets, "cost": cost, "storage": storage, "finetune": ft, "chosen": chosen,
            "base_heldout_loss": base, "n_layers": len(layers)}


def markdown(results: dict) -> str:
    lines = ["| model | avg bits | allocator | loss increase | sample MSE | weight bytes | BOPs/sample |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        for bits, row in r["budgets"].items():
            for a in ALLOCATORS + ("mpq_default",):
                v = row[a]
                lines.append(f"| {name} | {bits} | {a} | {v['loss_increase']:.4f} | {v['sample_mse']:.5f} | "
                             f"{v['weight_bytes']:,.0f} | {v['bops']:.3g} |")
    lines += ["", "| model | K-step profile (s) | all-step profile (s) | ratio | Spearman | identical plan bits | sensitivity profile (s) |",
              "|---|---|---|---|---|---|---|"]
    for name, c in results["cost"].items():
        k = next(v for key, v in c.items() if key.startswith("k") and key.endswith("_s"))
        lines.append(f"| {name} | {k:.1f} | {c['all_s']:.1f} ({c['all_timesteps']} steps) | {c['ratio']:.3f} | "
                     f"{c['spearman']:.3f} | {c['plan_agreement']:.0%} | {c['sensitivity_s']:.1f} |")
    lines += ["", "| model | budget (nominal B) | plan nominal B | in memory B | on disk B | float32 weights B | PEQA loss before → after |",
              "|---|---|---|---|---|---|---|"]
    for name, s in results["storage"].items():
        f = results["finetune"][name]
        lines.append(f"| {name} | {s['budget_nominal_bytes']:,.0f} | {s['plan_nominal_bytes']:,.0f} | {s['memory_bytes']:,} | "
                     f"{s['disk_bytes']:,} | {s['float_weight_bytes']:,} | {f['heldout_loss_before']:.4f} → "
                     f"{f['heldout_loss_after']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["unet-xs-gradients", "dit-s-gradients"], help="zoo model names")
    p.add_argument("--data", default="builtin:gradients_linear", help="dataset reference (calibration, validation, held-out)")
    p.add_argument("--budgets", nargs="+", type=float, default=[3.0, 4.0, 5.0], help="average weight bits")
    p.add_argument("--timesteps", type=int, default=10, help="K sampled timesteps")
    p.add_argument("--all-timesteps", type=int, default=None, help="steps of the reference profile (default: all T)")
    p.add_argument("--n-calib", type=int, default=32)
    p.add_argument("--n-validation", type=int, default=32)
    p.add_argument("--random-draws", type=int, default=5)
    p.add_argument("--prompts", type=int, default=8, help="held-out captions sampled for sample_mse")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps for sample_mse")
    p.add_argument("--time-limit", type=float, default=3.0, help="seconds per integer program")
    p.add_argument("--finetune-steps", type=int, default=20)
    p.add_argument("--finetune-lr", type=float, default=1e-4, help="PEQA scale lr (zoo scale; SD uses ~3e-6)")
    p.add_argument("--sensitivity-timesteps", type=int, default=2)
    p.add_argument("--sensitivity-samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    args.budgets = [int(b) if float(b).is_integer() else b for b in args.budgets]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = {"models": {}, "cost": {}, "storage": {}, "finetune": {}, "chosen": {}}
    for name in args.models:
        r = run_model(name, args)
        results["models"][name] = {"budgets": r["budgets"], "base_heldout_loss": r["base_heldout_loss"],
                                   "n_layers": r["n_layers"]}
        for k in ("cost", "storage", "finetune", "chosen"):
            results[k][name] = r[k]
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["seconds"] = time.perf_counter() - t0
    print(markdown(results))
    print(f"\ntotal {results['seconds']:.0f}s on {args.threads} thread(s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
