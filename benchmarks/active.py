"""Active profiling's learning curve: selection quality as measurements arrive, suggested vs random order.

    python benchmarks/active.py [--seeds 5] [--start 24] [--batch 24] [--members 4] [--embedding none]
                                [--n-estimators N] [--workers W] [--json FILE]

The shipped reference (``data/reference``: 11 models × 32 datasets, 2 fine-tuning seeds per pair) is the
full matrix. Per seed ``s``: ``--start`` random (model, dataset) pairs are revealed (both records of a
pair), then the rest one batch of ``--batch`` pairs at a time, in two orders — the pairs
:func:`mandc.active.suggest` proposes from the graph revealed so far, and a random permutation. After
every batch the graph of the revealed pairs is evaluated leave-one-dataset-out over all 32 datasets with
:func:`mandc.evaluate.evaluate_seed` (``truth=`` the full matrix: each dataset's ranking is predicted from
the *other* datasets' revealed pairs and scored against its complete measured row), giving top-1 and
regret. The target is the same evaluation with every pair revealed ("full-matrix top-1"); the script
reports how many pairs each order needs until the seed-mean curve reaches it.

The selector (for the evaluation and inside ``suggest``) is M&C's with ``--embedding`` (default
``none``: the ``no_embedding`` ablation; a GraphSAGE fit per LODO fold costs ~100× the LightGBM fit, and
this curve needs ~5,000 fits) and ``--n-estimators`` (default: chosen per fit by CV, as M&C does).

Prints one line per batch and the JSON::

    {"config": {...}, "full": {"top1": X, "regret": X},
     "curves": {"suggested": [{"pairs": N, "top1": X, "regret": X}...], "random": [...]},   (seed means)
     "per_seed": {"suggested": [[...]...], "random": [[...]...]},
     "pairs_to_full_top1": {"suggested": N, "random": N, "ratio": X}}
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

ORDERS = ("suggested", "random")


def _pair(r: dict) -> tuple[str, str]:
    return r["job"]["model"], r["job"]["dataset"]


def _lodo(records, models, datasets, truth, seed: int, cfg) -> dict:
    """Mean LODO top-1 and regret over the full matrix's datasets, from the graph of ``records``."""
    import numpy as np

    from mandc.evaluate import evaluate_seed
    from mandc.graph import MatchingGraph

    g = MatchingGraph.from_reference(records, models, datasets)
    per = evaluate_seed(g, seed, ("mandc",), base=cfg, datasets=truth.profiled, truth=truth)["mandc"]
    return {k: float(np.mean([per[d][k] for d in truth.profiled])) for k in ("top1", "regret")}


def run_seed(args: tuple) -> tuple[int, dict]:
    """Both curves of one seed: ``{order: [{"pairs", "top1", "regret"}...]}``."""
    seed, start, batch, members, cfg_kw = args
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Mean of empty slice")  # neighbour features of sparse rows
    from data.reference import load_reference
    from mandc.active import suggest
    from mandc.evaluate import mandc_config
    from mandc.graph import MatchingGraph

    cfg = mandc_config(**cfg_kw)
    records, models, datasets = load_reference()
    records = [r for r in records if r["status"] == "ok"]
    truth = MatchingGraph.from_reference(records, models, datasets)
    by_pair: dict = {}
    for r in records:
        by_pair.setdefault(_pair(r), []).append(r)
    pairs = sorted(by_pair)
    rng = random.Random(seed)
    first = rng.sample(pairs, start)
    curves = {}
    for order in ORDERS:
        shown = list(first)
        rest = [p for p in pairs if p not in set(first)]
        random.Random(1000 + seed).shuffle(rest)
        curve = []
        while True:
            recs = [r for p in shown for r in by_pair[p]]
            point = {"pairs": len(shown), **_lodo(recs, models, datasets, truth, seed, cfg)}
            curve.append(point)
            print(f"seed {seed} {order:9s} {point['pairs']:4d} pairs: top-1 {point['top1']:.3f} "
                  f"regret {point['regret']:.4f}", file=sys.stderr, flush=True)
            if not rest:
                break
            if order == "random":
                nxt = rest[:batch]
            else:
                g = MatchingGraph.from_reference(recs, models, datasets)
                nxt = [(m, d) for m, d, _ in suggest(g, batch, candidates=rest, members=members, cfg=cfg, seed=seed)]
            shown += nxt
            rest = [p for p in rest if p not in set(nxt)]
        curves[order] = curve
    return seed, curves


def _reach(curve: list[dict], target: float) -> int | None:
    """Pairs revealed at the first point whose top-1 reaches ``target``."""
    return next((p["pairs"] for p in curve if p["top1"] >= target - 1e-9), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds (start pairs, random order, selector seeds); ≥ 5 for the README")
    ap.add_argument("--start", type=int, default=24, help="random pairs revealed before the first batch")
    ap.add_argument("--batch", type=int, default=24, help="pairs revealed per batch")
    ap.add_argument("--members", type=int, default=4, help="selectors in suggest's ensemble")
    ap.add_argument("--embedding", default="none", choices=("none", "sage", "node2vec"),
                    help="the selector's graph embedding (default none: see the docstring)")
    ap.add_argument("--n-estimators", type=int, default=None, help="fixed boosting rounds (default: CV per fit)")
    ap.add_argument("--workers", type=int, default=None, help="parallel processes, one seed each (default: min(seeds, cores))")
    ap.add_argument("--json", dest="json_path", default=None, help="also write the JSON result to this file")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.start < 3 or args.batch < 1:
        ap.error("--seeds ≥ 1, --start ≥ 3 and --batch ≥ 1")

    import numpy as np

    cfg_kw = {"embedding": args.embedding, "n_estimators": args.n_estimators}
    tasks = [(s, args.start, args.batch, args.members, cfg_kw) for s in range(args.seeds)]
    workers = min(args.seeds, os.cpu_count() or 1) if args.workers is None else max(1, args.workers)
    t0 = time.perf_counter()
    if workers == 1:
        results = dict(run_seed(t) for t in tasks)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = dict(pool.map(run_seed, tasks))
    seeds = sorted(results)
    per_seed = {o: [results[s][o] for s in seeds] for o in ORDERS}
    curves = {o: [{"pairs": pts[0]["pairs"], **{k: float(np.mean([c[i][k] for c in per_seed[o]])) for k in ("top1", "regret")}}
                  for i, pts in enumerate(zip(*per_seed[o]))] for o in ORDERS}
    full = {k: curves["random"][-1][k] for k in ("top1", "regret")}  # every pair revealed (the same graph in both orders)
    reach = {o: _reach(curves[o], full["top1"]) for o in ORDERS}
    reach["ratio"] = reach["suggested"] / reach["random"] if reach["suggested"] and reach["random"] else None
    out = {"config": {"seeds": args.seeds, "start": args.start, "batch": args.batch, "members": args.members, **cfg_kw,
                      "seconds": round(time.perf_counter() - t0, 1)},
           "full": full, "curves": curves, "per_seed": per_seed, "pairs_to_full_top1": reach,
           "pairs_to_full_top1_per_seed": {o: [_reach(c, c[-1]["top1"]) for c in per_seed[o]] for o in ORDERS}}

    print("| pairs | suggested top-1 | random top-1 | suggested regret | random regret |\n|---|---|---|---|---|")
    for a, b in zip(curves["suggested"], curves["random"]):
        print(f"| {a['pairs']} | {a['top1']:.3f} | {b['top1']:.3f} | {a['regret']:.4f} | {b['regret']:.4f} |")
    print(f"full matrix: top-1 {full['top1']:.3f}, regret {full['regret']:.4f}; pairs to reach it: suggested "
          f"{reach['suggested']}, random {reach['random']}")
    text = json.dumps(out, indent=1)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
