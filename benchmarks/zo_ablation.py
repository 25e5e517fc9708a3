"""ZOODiP's ablation with paired seeds: does each of its two additions beat plain zeroth-order TI?

    python benchmarks/zo_ablation.py [--seeds 20] [--steps 300] [--json FILE]

Four variants of ``zo-ti`` run through ``finetune.run`` on the same seeds (paired: seed s gives every
variant the same images, timesteps' generator state, noise and directions' seeds up to where the
variants' samplers diverge):

- ``plain``: neither addition (full timestep range, no subspace projection);
- ``subspace``: the subspace gradient only;
- ``timesteps``: partial uniform timestep sampling only (``zo-ti``'s defaults: the paper's SD 1.5
  window 500–899 mapped to the model's schedule by ᾱ_t, 644–922 on the zoo's cosine schedule);
- ``zoodip``: both, as the paper (``zo-ti`` with ``subspace=True``).

Subject personalisation as in ``benchmarks/finetune_quality.py``: the first ``--subject-images`` images
of ``--subject``, prompt ``"a photo of {token}"``, scored by the held-out denoising loss of the subject's
held-out images (lower is better). Per variant it reports the mean loss after; for each addition
against ``plain`` the paired mean difference (variant − plain; negative = the addition helps) with a
95% t-interval, the paired t-test's and Wilcoxon signed-rank test's two-sided p-values
(``scipy.stats.ttest_rel``, ``scipy.stats.wilcoxon``) and the number of seeds it wins.

``--set KEY=VALUE`` overrides a ``zo-ti`` option in every variant (a sweep point, e.g. ``--set tau=32``);
``--window LO HI`` moves the partial timestep window of ``timesteps`` and ``zoodip``. Each run's
subspace refreshes (kept/projected directions), the timestep window it sampled (``window``, from the run's
recorded config) and per-timestep held-out loss are in the JSON.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

FULL_RANGE = {"timestep_min": 0, "timestep_max": 1000}
VARIANTS = {
    "plain": {"subspace": False, **FULL_RANGE},
    "subspace": {"subspace": True, **FULL_RANGE},
    "timesteps": {"subspace": False},
    "zoodip": {"subspace": True},
}
PROMPT = "a photo of {token}"
SUBSPACE_ONLY = ("tau", "nu")


def paired_stats(variant: list[float], base: list[float]) -> dict:
    """Paired comparison of per-seed losses ``variant`` against ``base`` (same seed order).

    ``mean_diff`` = mean(variant − base) with a 95% Student-t interval on n − 1 degrees of freedom,
    ``p_ttest`` (``ttest_rel``) and ``p_wilcoxon`` (two-sided signed-rank; 1.0 if every difference is 0),
    ``wins`` = seeds where the variant's loss is lower.
    """
    import numpy as np
    from scipy import stats

    a, b = np.asarray(variant, float), np.asarray(base, float)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"paired_stats needs two equal-length lists of ≥ 2 losses, got {len(a)} and {len(b)}")
    d = a - b
    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    p_w = float(stats.wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
    p_t = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else (1.0 if mean == 0 else 0.0)
    return {"n": n, "mean_diff": mean, "sd_diff": sd, "ci95": [mean - half, mean + half],
            "p_ttest": p_t, "p_wilcoxon": p_w, "wins": int((d < 0).sum())}


def _record_refreshes():
    """Wrap ``SubspaceProjector.refresh`` to log (step, kept, projected) per refresh; returns the log."""
    from finetune.methods.zo_ti import SubspaceProjector

    log: list[dict] = []
    if getattr(SubspaceProjector.refresh, "_logged", False):
        return SubspaceProjector.refresh._log
    orig = SubspaceProjector.refresh

    def refresh(self):
        i_star = orig(self)
        log.append({"kept": i_star + 1, "projected": self.n_projected, "history": len(self.history)})
        return i_star

    refresh._logged, refresh._log = True, log
    SubspaceProjector.refresh = refresh
    return log


def one_run(model_ref: str, subject, seed: int, cfg: dict, runner_eval: bool = False) -> dict:
    """One ``finetune.run``; the held-out loss after is scored in its ``trained`` callback with
    ``finetune.metrics.heldout_loss`` at batch 16 (the runner's own evaluation runs batch 1, zo-ti's batch
    size, and costs as much as ~150 steps). ``runner_eval`` also lets the runner score before and after,
    and checks that its "after" equals ours."""
    from finetune.load import load_model
    from finetune.metrics import heldout_loss
    from finetune.runner import run

    log = _record_refreshes()
    log.clear()
    scored = {}

    def trained(model):  # the learned token's held-out loss, the same inputs the runner scores
        cond = model.encode_prompt([PROMPT.format(token=cfg.get("placeholder", "<mandc>"))] * len(subject.heldout))
        h = heldout_loss(model, subject.heldout, batch_size=16, cond=cond)
        scored.update(mean=h.mean, per_t={str(k): v for k, v in h.per_timestep.items()})

    with tempfile.TemporaryDirectory() as d:
        res = run(load_model(model_ref), subject, "zo-ti", {**cfg, "seed": seed}, d, force=True, trained=trained,
                  evaluate_loss=runner_eval)
    if runner_eval and not math.isclose(res.heldout_loss_after, scored["mean"], rel_tol=1e-5):
        raise RuntimeError(f"held-out loss after: runner {res.heldout_loss_after} vs benchmark {scored['mean']}")
    return {"seed": seed, "before": res.heldout_loss_before, "after": scored["mean"],
            "per_timestep_after": scored["per_t"], "refreshes": list(log), "train_s": round(res.train_s, 1),
            "window": [res.config["timestep_min"], res.config["timestep_max"]]}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one core per run: --workers runs share the machine


def parse_set(items: list[str]) -> dict:
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {it!r}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:unet-s-photos",
                    help="zoo model (default: where backprop TI gains most, see the README)")
    ap.add_argument("--subject", default="builtin:photos_cat", help="dataset whose first images are the subject")
    ap.add_argument("--subject-images", type=int, default=5)
    ap.add_argument("--initializer", default="object")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--seed-offset", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="zo-ti option for every variant")
    ap.add_argument("--window", nargs=2, type=int, default=None, metavar=("LO", "HI"),
                    help="partial timestep window (of T=1000) for 'timesteps' and 'zoodip' (default: zo-ti's)")
    ap.add_argument("--plain-from", type=Path, default=None, metavar="JSON",
                    help="reuse the 'plain' runs of an earlier --json (same model, subject, steps, seeds and plain "
                         "config) instead of rerunning them: a sweep of subspace or window options leaves plain as is")
    ap.add_argument("--reuse", type=Path, nargs="*", default=[], metavar="JSON",
                    help="reuse any variant's runs from earlier --json files where model, subject, steps, seeds and "
                         "that variant's config all match (e.g. 'timesteps' in a sweep of tau or nu)")
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel (processes, one thread each)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if "plain" not in args.variants:
        args.variants = ["plain", *args.variants]

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from finetune_quality import subject_dataset

    torch.set_num_threads(1)
    subject = subject_dataset(args.subject, args.subject_images)
    base = {"steps": args.steps, "checkpoint_every": 0, "template": PROMPT, "initializer": args.initializer,
            **parse_set(args.set)}
    window = {"timestep_min": args.window[0], "timestep_max": args.window[1]} if args.window else {}
    configs = {name: {**base, **extra, **(window if "timestep_min" not in extra else {})}
               for name, extra in VARIANTS.items() if name in args.variants}
    for cfg in configs.values():  # options that do nothing without the projection stay out of its record
        if not cfg["subspace"]:
            for key in SUBSPACE_ONLY:
                cfg.pop(key, None)
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    t0 = time.perf_counter()
    before = None
    if args.plain_from:
        prev = json.loads(args.plain_from.read_text())
        p = prev["variants"]["plain"]
        have = {r["seed"]: r for r in p["runs"]}
        if (prev["model"], prev["subject"], prev["steps"], p["config"]) != (args.model, subject.ref, args.steps,
                                                                           configs["plain"]) or set(seeds) - set(have):
            raise SystemExit(f"--plain-from {args.plain_from}: its plain runs are not this run's (model, subject, "
                             f"steps, plain config or seeds differ)")
        runs["plain"] = [have[s] for s in seeds]
        before = prev["loss_before"]
    for path in args.reuse:  # every variant whose runs an earlier file already has, config for config
        prev = json.loads(path.read_text())
        if (prev["model"], prev["subject"], prev["steps"]) != (args.model, subject.ref, args.steps):
            continue
        for name, p in prev["variants"].items():
            have = {r["seed"]: r for r in p["runs"]}
            if name in configs and not runs[name] and p["config"] == configs[name] and not set(seeds) - set(have):
                runs[name] = [have[s] for s in seeds]
                before = prev["loss_before"]
                print(f"  {name}: {len(seeds)} runs reused from {path}", file=sys.stderr)
    tasks = [(seed, name) for seed in seeds for name in configs if not runs[name]]
    score_first = before is None  # the first run also lets the runner score before/after (see one_run)
    done = {}
    with ProcessPoolExecutor(args.workers, initializer=_worker_init) as pool:
        futures = {pool.submit(one_run, args.model, subject, seed, configs[name], score_first and i == 0): (seed, name)
                   for i, (seed, name) in enumerate(tasks)}
        for fut in as_completed(futures):
            seed, name = futures[fut]
            r = done[(seed, name)] = fut.result()
            before = r["before"] if r["before"] is not None else before  # the same for every run
            print(f"  seed {seed:2d} {name:10s} {r['after']:.5f}  ({r['train_s']} s; {len(done)}/{len(tasks)}, "
                  f"{time.perf_counter() - t0:.0f} s total)", file=sys.stderr, flush=True)
    for seed in seeds:
        for name in configs:
            if (seed, name) in done:
                runs[name].append(done[(seed, name)])

    after = {name: [r["after"] for r in rs] for name, rs in runs.items()}
    summary = {name: {"config": configs[name],
                      "mean_after": sum(v) / len(v), "runs": runs[name]} for name, v in after.items()}
    for name in configs:
        if name != "plain":
            summary[name]["vs_plain"] = paired_stats(after[name], after["plain"])
        if name in ("subspace", "zoodip") and "timesteps" in configs and name != "timesteps":
            # what the projection adds on top of the window alone (zoodip) or costs (subspace)
            summary[name]["vs_timesteps"] = paired_stats(after[name], after["timesteps"])
    out = {"model": args.model, "subject": subject.ref, "seeds": seeds, "steps": args.steps, "loss_before": before,
           "set": base,
           "window": args.window, "variants": summary, "wall_s": round(time.perf_counter() - t0, 1)}

    print(f"\n### zo-ti ablation: {args.model}, {subject.ref}, {args.steps} steps, {len(seeds)} paired seeds\n")
    print("| variant | mean loss after | Δ vs plain (mean, 95% CI) | p (t-test) | p (Wilcoxon) | wins |")
    print("|---|---:|---|---:|---:|---:|")
    for name, s in summary.items():
        row = f"| {name} | {s['mean_after']:.5f} |"
        if "vs_plain" in s:
            v = s["vs_plain"]
            row += (f" {v['mean_diff']:+.5f} [{v['ci95'][0]:+.5f}, {v['ci95'][1]:+.5f}] | {v['p_ttest']:.3g} |"
                    f" {v['p_wilcoxon']:.3g} | {v['wins']}/{v['n']} |")
        else:
            row += " — | — | — | — |"
        print(row)
    for name, s in summary.items():
        if "vs_timesteps" in s:
            v = s["vs_timesteps"]
            print(f"\n{name} − timesteps: {v['mean_diff']:+.5f} [{v['ci95'][0]:+.5f}, {v['ci95'][1]:+.5f}], "
                  f"p {v['p_ttest']:.3g} (t-test), {v['p_wilcoxon']:.3g} (Wilcoxon), {v['wins']}/{v['n']} seeds ahead")
    print(f"\nloss before (initializer word): {before:.5f}; wall {out['wall_s']} s")
    write_json(args.json, out)
    return out


def write_json(path: Path | None, out: dict) -> None:
    """``out`` as indented JSON at ``path`` (atomically; nothing when ``path`` is None)."""
    if path:
        from data.io import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
