"""Budgeted probing on the shipped reference: top-1 and regret against the fraction of the profiling cost spent.

    python benchmarks/probe_budget.py [--seeds 2] [--shortlist 4] [--steps 5 10 20] [--workers 2]
                                      [--work DIR] [--json FILE]

The reference (``data/reference``: 11 zoo models × 32 datasets, the ``full`` method, 80 steps, 2 seeds)
is the ground truth: a dataset's best model is the one with the lowest mean held-out loss over both seeds.

1. **Prior.** For each protocol (``lodo``: one dataset leaves the graph; ``lofo``: its whole family) and
   each selector seed, M&C's selector (``mandc``, no zero-shot probe) is fitted on the graph without the
   held-out performance edges and ranks the 11 models for each held-out dataset: the graph's guess.
2. **Probe runs.** Each model that some prior puts in its top ``--shortlist`` of a dataset is fine-tuned
   on it by :func:`profiler.jobs.run_job` — the jobs the product's probe runs (:mod:`mandc.probing`:
   method ``full``, the reference's batch/lr/warm-up, seed ``PROBE_SEED`` = 2, which the reference did not
   use) — once for each step count of ``--steps``; records are cached in ``--work`` (a campaign folder, so
   a killed run resumes). Each job here measures the zero-shot loss too (the product's
   later-round jobs reuse their model's, so ``cost`` below is an upper bound).
3. **Policies**, scored by the same metrics as ``mandc.evaluate`` against the reference row:
   ``prior`` (no probe: the graph's top pick), ``halving k=K B=STEPS`` (:func:`mandc.probing.successive_halving`
   over the prior's top K with a budget of B training steps, the product's policy, answered from the
   cached runs), and ``full (one seed)`` (every model at the reference budget once, the lowest loss picked,
   scored against the two-seed mean: cost 1). Cost is reported two ways:
   ``cost_steps`` = probe training steps / (11 models × 80 steps), and ``cost`` = whole jobs: a job of
   ``s`` steps costs ``s + O`` training-step equivalents, ``O`` (:func:`job_overhead_steps`) being its
   loading, encoding and two held-out evaluations, so a probe job costs ``s + O`` and a reference job
   ``80 + O`` (one seed per model: the reference's second seed is a replicate, not part of "fine-tune
   every model").

The noise ceiling (same winner under the reference's two seeds) is ``mandc.evaluate.noise_ceiling``.
Prints a Markdown table per protocol and the JSON::

    {"config": {...}, "noise_ceiling": X, "job_overhead_steps": O, "protocols": {"lodo": {"POLICY": {"top1", "regret",
     "cost", "cost_steps", "k", "budget"}, ...}, "lofo": {...}}, "runs": N, "run_seconds": X}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

# (k, budget) pairs whose halving schedules (mandc.probing.halving_rounds) use only the default step grid
# {5, 10, 20}: 2×5 | 2×10 | 3×5 → 2×10 | 4×5 → 2×10 | 2×20 | 3×10 → 2×20 | 4×10 → 2×20
POLICIES = [(2, 10), (2, 20), (3, 35), (4, 40), (2, 40), (3, 70), (4, 80)]


def _prior(task: tuple[str, int]) -> tuple[str, int, dict]:
    """``(protocol, seed, {dataset: {model: score}})`` of the M&C selector fitted without each held-out unit."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Mean of empty slice")
    from mandc.evaluate import held_out_groups, load_graph, selector_config
    from mandc.select import Selector, make_embedder

    protocol, seed = task
    graph = load_graph()
    preds = {}
    for group in held_out_groups(graph, protocol):
        h = graph.without_performance(group)
        cfg = selector_config("mandc", seed)
        sel = Selector(cfg).fit(h, embedder=make_embedder(cfg, h))
        for d in group:
            preds[d] = {m: float(v) for m, v in sel.predict(h, d).items()}
    return protocol, seed, preds


def priors(seeds: int, work: Path, workers: int) -> dict:
    """``{protocol: {seed: {dataset: {model: score}}}}``; each (protocol, seed) is cached in ``work`` as it
    finishes, so a killed run resumes."""
    from concurrent.futures import ProcessPoolExecutor

    out: dict = {"lodo": {}, "lofo": {}}
    todo = []
    for protocol in ("lofo", "lodo"):  # the cheaper protocol first (8 fits per seed, not 32)
        for seed in range(seeds):
            f = work / f"prior-{protocol}-s{seed}.json"
            if f.exists():
                out[protocol][str(seed)] = json.loads(f.read_text())
            else:
                todo.append((protocol, seed))
    if todo:
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            for protocol, seed, preds in pool.map(_prior, todo):
                (work / f"prior-{protocol}-s{seed}.json").write_text(json.dumps(preds))
                out[protocol][str(seed)] = preds
                print(f"prior {protocol} seed {seed}: {len(preds)} datasets", file=sys.stderr, flush=True)
    return out


def probe_jobs(prior: dict, shortlist: int, steps: list[int]):
    from mandc.probing import PROBE_SEED
    from mandc.select import rank_of
    from profiler.reference import METHOD, budget
    from profiler.schema import ProfileJob

    pairs = set()
    for per_seed in prior.values():
        for preds in per_seed.values():
            for d, pred in preds.items():
                pairs.update((m, d) for m in rank_of(pred)[:shortlist])
    # dataset-major: a run stopped early leaves whole datasets measured (score() scores those)
    jobs = [ProfileJob(m, d, METHOD, budget(s), PROBE_SEED) for m, d in sorted(pairs, key=lambda p: (p[1], p[0]))
            for s in steps]
    return jobs, sorted(pairs)


def run_probes(jobs, work: Path, workers: int, run: bool = True) -> dict:
    """``{job_id: record dict}``: every job's ok record (run now, unless ``run`` is false, or found in the
    campaign folder)."""
    from profiler.campaign import Campaign
    from profiler.executors import get_executor
    from profiler.reference import ensure_built

    camp = Campaign(work)
    print(f"{len(jobs)} probe jobs, {len(camp.pending(jobs))} to run", file=sys.stderr, flush=True)
    if run:
        ensure_built(sorted({j.model for j in jobs}))
        summary = camp.run(jobs, get_executor("local", workers=workers), progress=sys.stderr.isatty())
        if summary.get("failed_jobs"):
            print(f"failed: {summary['failed_jobs'][:3]}", file=sys.stderr)
    ids = {j.job_id for j in jobs}
    return {r.job_id: r.to_dict() for r in camp.records("ok") if r.job_id in ids}


def job_overhead_steps(records: list[dict]) -> float:
    """O: what a probe job costs beyond its training steps (loading from the worker's cache, encoding, the
    zero-shot and the final held-out evaluation), in training-step equivalents: the median over this run's
    jobs of ``(wall_s - train_s) / (train_s / steps)``. Both times come from the same job, so contention on
    the machine cancels in the ratio."""
    import numpy as np

    return float(np.median([(r["wall_s"] - r["train_s"]) / (r["train_s"] / r["job"]["config"]["steps"])
                            for r in records]))


def score(prior: dict, runs: dict, truth, overhead: float, steps_ref: int = 80) -> dict:
    """``{protocol: {policy: metrics}}`` (seed means) for the prior, every halving policy and full profiling."""
    import numpy as np

    from mandc.evaluate import score_ranking
    from mandc.probing import rounds_cost, successive_halving
    from mandc.select import rank_of

    n_models = len(truth.models)
    full_cost = n_models * (steps_ref + overhead)   # every model at the reference budget, one seed
    out: dict = {}
    for protocol, per_seed in prior.items():
        acc: dict = {}
        for seed, preds in per_seed.items():
            for d, pred in preds.items():
                scores, raw = truth.scores(d), truth.raw(d)
                m = score_ranking(pred, scores, raw)
                acc.setdefault("prior", []).append({"top1": m["top1"], "regret": m["regret"], "cost": 0.0,
                                                    "cost_steps": 0.0})
                order = rank_of(pred)
                for k, b in POLICIES:
                    def measure(model, s, d=d):
                        return runs[(model, d, s)]["metrics"]["heldout_loss"]

                    res = successive_halving(order, b, measure, k=k)
                    chosen = res.best or order[0]
                    # the probe's ranking: probed models in its order, the rest after them in prior order
                    rank = {mm: -i for i, mm in enumerate(res.order + [x for x in order if x not in res.order])}
                    mm = score_ranking(rank, scores, raw)
                    assert rank_of(rank)[0] == chosen
                    jobs = sum(n for n, _ in res.rounds)
                    best = max(scores.values())
                    acc.setdefault(f"halving k={k} B={b}", []).append(
                        {"top1": mm["top1"], "regret": mm["regret"], "k": k, "budget": b,
                         # the most any probe of this short-list can reach: a winner is in it
                         "shortlist_hit": float(any(scores[x] >= best for x in order[:k])),
                         "cost_steps": rounds_cost(res.rounds) / (n_models * steps_ref),
                         "cost": (res.steps + jobs * overhead) / full_cost})
        out[protocol] = {name: {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]}
                         for name, rows in acc.items()}
        out[protocol]["full (one seed)"] = {**full_profiling(truth, list(next(iter(per_seed.values())))),
                                            "cost": 1.0, "cost_steps": 1.0}
    return out


def full_profiling(truth, datasets: list[str]) -> dict:
    """Every model fine-tuned with the reference budget once (one seed), the lowest loss picked: top-1 and
    regret against the two-seed mean (the reference's own seeds 0 and 1, each in turn)."""
    import numpy as np

    from mandc.evaluate import score_ranking

    rows = []
    for d in datasets:
        by_seed: dict = {}
        for m, rs in truth.runs(d).items():
            for r in rs:
                by_seed.setdefault(r["seed"], {})[m] = r["loss"]
        for losses in by_seed.values():
            m = score_ranking({mm: -v for mm, v in losses.items()}, truth.scores(d), truth.raw(d))
            rows.append((m["top1"], m["regret"]))
    return {"top1": round(float(np.mean([r[0] for r in rows])), 4), "regret": round(float(np.mean([r[1] for r in rows])), 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2, help="selector seeds of the prior (default 2)")
    p.add_argument("--shortlist", type=int, default=4, help="top-k of each prior that is probed (default 4)")
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20], help="probe step counts (default 5 10 20)")
    p.add_argument("--workers", type=int, default=2, help="priors and probe jobs in parallel (processes)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "mandc-probe-budget",
                   help="campaign folder of the probe runs and the cached priors (resumable)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--priors-only", action="store_true", help="stop after computing (and caching) the priors")
    p.add_argument("--no-run", action="store_true", help="score the runs already in --work; datasets with a "
                   "shortlisted run missing are left out (and counted)")
    a = p.parse_args(argv)

    from mandc.evaluate import load_graph, noise_ceiling

    t0 = time.perf_counter()
    a.work.mkdir(parents=True, exist_ok=True)
    prior = priors(a.seeds, a.work, a.workers)
    t_prior = time.perf_counter() - t0
    if a.priors_only:
        print(json.dumps({"priors": str(a.work), "seconds": round(t_prior, 1)}))
        return 0
    jobs, pairs = probe_jobs(prior, a.shortlist, a.steps)
    t1 = time.perf_counter()
    recs = run_probes(jobs, a.work, a.workers, run=not a.no_run)
    t_runs = time.perf_counter() - t1
    runs = {}
    missing = []
    for j in jobs:
        r = recs.get(j.job_id)
        if r is None:
            missing.append(j)
        else:
            runs[(j.model, j.dataset, j.config["steps"])] = r
    if missing and not a.no_run:
        print(f"{len(missing)} probe jobs have no ok record (e.g. {missing[0].model} on {missing[0].dataset}); "
              "rerun to retry", file=sys.stderr)
        return 1
    incomplete = sorted({j.dataset for j in missing})
    for per_seed in prior.values():  # --no-run: score the datasets whose runs are all there
        for preds in per_seed.values():
            for d in incomplete:
                preds.pop(d, None)
    truth = load_graph()
    e = job_overhead_steps(list(recs.values()))
    table = score(prior, runs, truth, e)
    nc = noise_ceiling(truth)
    result = {"config": {"seeds": a.seeds, "shortlist": a.shortlist, "steps": a.steps, "policies": POLICIES,
                         "probe_seed": jobs[0].seed if jobs else None},
              "noise_ceiling": nc, "job_overhead_steps": round(e, 2), "runs": len(recs), "pairs": len(pairs),
              "datasets_scored": len(truth.profiled) - len(incomplete),
              # what the probe campaign cost, from its own records (wall: whole jobs; train: the steps)
              "job_wall_h": round(sum(r["wall_s"] for r in recs.values()) / 3600, 2),
              "job_train_h": round(sum(r["train_s"] for r in recs.values()) / 3600, 2),
              "prior_seconds": round(t_prior, 1), "run_seconds": round(t_runs, 1), "protocols": table}
    for protocol, rows in table.items():
        print(f"\n{protocol.upper()} (noise ceiling {nc:.1%}; a job's overhead = {e:.1f} training steps)")
        print("| policy | top-1 | % of ceiling | regret | winner in the short-list | cost (steps) | cost (whole jobs) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in sorted(rows.items(), key=lambda kv: kv[1]["cost"]):
            hit = f"{r['shortlist_hit']:.1%}" if "shortlist_hit" in r else "—"
            print(f"| {name} | {r['top1']:.1%} | {r['top1'] / nc:.0%} | {r['regret']:.4f} | {hit} | "
                  f"{r['cost_steps']:.3f} | {r['cost']:.3f} |")
    text = json.dumps(result, indent=2)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
