"""Model-selection quality: leave-one-dataset-out over the reference graph (wraps ``mandc evaluate``).

    python benchmarks/selection.py [--seeds 5] [--graph PATH] [--workers N] [--json FILE] [--selectors a,b]
                                   [--knn-init X] [--n-estimators N] [--probe-init W] [--protocol lodo|lofo]
    python benchmarks/selection.py --lomo [--seeds 1] [--selectors mandc,no_lineage,base_model,...]   (leave-one-model-out)

For every profiled dataset of the graph (default: the shipped reference, ``data.reference``) and every
seed, all of that dataset's performance edges are removed, each selector is rebuilt from the rest (graph
embedding and LightGBM from scratch), and its ranking of the models is scored against the measured one.
``--protocol lofo`` holds out all datasets of one catalog family at once instead (leave-one-family-out).
The protocols, the metric definitions (top-1, top-3, rel@1, mean regret, Kendall τ), the baselines and the
ablations are documented in ``mandc/evaluate.py``.

Prints a Markdown table (mean over seeds, ± the standard deviation of top-1 over seeds) and the JSON;
with ``--json FILE`` it also writes::

    {"matrix": {"models": N, "datasets": N, "max_winner_share": X, "distinct_winners": N},
     "noise_ceiling": X,
     "selectors": {NAME: {"top1": X, "top3": X, "rel1": X, "regret": X, "kendall": X}}}

with NAME ``mandc`` (M&C without the zero-shot probe), ``mandc_probe``, the baselines (``random``,
``most_frequent``, ``largest``, ``nearest_winner``, ``lgbm_features``, ``zero_shot``) and the ablations
(``no_embedding``, ``no_neighbors``, ``no_data_edges``, ``node2vec``, ``no_pair``, ``no_model_features``,
``no_data_features``). The seeds run in parallel processes of one torch thread each (``--workers``,
default one per core).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="selector seeds (≥ 5 for the reported numbers)")
    ap.add_argument("--graph", default=None, help="MatchingGraph JSON, store export, SQLite store or reference folder (default: the shipped reference)")
    ap.add_argument("--workers", type=int, default=None, help="parallel processes (default: min(seeds, cores))")
    ap.add_argument("--selectors", default=None, help="comma-separated subset of selectors (default: all)")
    ap.add_argument("--json", dest="json_path", default=None, help="also write the JSON result to this file")
    ap.add_argument("--knn-init", type=float, default=None,
                    help="M&C's neighbour-prior weight (SelectorConfig.knn_init; default: the shipped value)")
    ap.add_argument("--n-estimators", type=int, default=None,
                    help="fixed boosting rounds for every LightGBM selector (default: chosen per fit by grouped CV)")
    ap.add_argument("--probe-init", type=float, default=None,
                    help="fixed zero-shot probe weight for mandc_probe (default: chosen per fit by grouped CV)")
    ap.add_argument("--protocol", choices=("lodo", "lofo"), default="lodo",
                    help="lodo: one dataset held out at a time; lofo: all datasets of one catalog family at once")
    ap.add_argument("--lomo", action="store_true",
                    help="leave-one-model-out instead (mandc.lomo): each model enters with features and lineage only")
    args = ap.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.lomo:
        return _lomo(args)
    from data.io import atomic_write
    from mandc.evaluate import SELECTOR_NAMES, evaluate, load_graph, mandc_config

    selectors = tuple(s.strip() for s in args.selectors.split(",")) if args.selectors else SELECTOR_NAMES
    graph = load_graph(args.graph)
    print(f"{graph}; {args.seeds} seeds; {args.protocol}", file=sys.stderr)
    over = {k: v for k, v in (("knn_init", args.knn_init), ("n_estimators", args.n_estimators),
                               ("probe_init", args.probe_init)) if v is not None}
    base = mandc_config(**over) if over else None
    res = evaluate(graph, seeds=args.seeds, selectors=selectors, workers=args.workers, base=base,
                   protocol=args.protocol,
                   progress=lambda done, total: print(f"task {done}/{total} done", file=sys.stderr))
    out = res.to_json()
    print(res.to_markdown())
    print()
    print(json.dumps(out, indent=2))
    if args.json_path:
        p = atomic_write(args.json_path, json.dumps(out, indent=2) + "\n")
        print(f"wrote {p}", file=sys.stderr)
    return 0


def _lomo(args) -> int:
    """``--lomo``: the leave-one-model-out table and JSON (methods of :mod:`mandc.lomo`)."""
    from mandc.evaluate import load_graph
    from mandc.lomo import LOMO_METHODS, evaluate_lomo, to_markdown

    graph = load_graph(args.graph)
    methods = tuple(s.strip() for s in args.selectors.split(",")) if args.selectors else LOMO_METHODS
    print(f"{graph}; leave-one-model-out, {args.seeds} seeds", file=sys.stderr)
    res = evaluate_lomo(graph, seeds=args.seeds, methods=methods,
                        progress=lambda done, total: print(f"model {done}/{total} done", file=sys.stderr))
    print(to_markdown(res))
    print()
    print(json.dumps(res, indent=2))
    if args.json_path:
        from data.io import atomic_write

        atomic_write(args.json_path, json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
