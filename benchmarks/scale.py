"""How the matching graph scales: store ingest, graph build, embedding, selector fit and recommend, timed
(wall seconds) and metered (peak RSS) on synthetic graphs from 1k models × 100 datasets to 10k × 1k.

    python benchmarks/scale.py [--sizes 1000x100,3000x300,10000x1000] [--density 0.01] [--json FILE]

Each size runs in a fresh subprocess (so its peak RSS is its own) and goes through the product's own path:

1. **ingest** — ``mandc.Store(path, reference=(records, models, datasets))``: the SQLite store seeded with
   the synthetic lines (one ProfileRecord per profiled pair);
2. **graph** — ``Store.graph()``: the :class:`~mandc.graph.MatchingGraph` (perf edges normalised per
   dataset, ``k = 5`` similarity edges per dataset);
3. **embed** — ``SageEmbedder().fit(graph)`` (GraphSAGE link prediction, the default ``SelectorConfig``'s);
4. **select** — ``Selector().fit(graph, embedder)``: the out-of-fold GNN fits (``crossfit = 4``), the
   rows, the grouped CV of the boosting rounds and the final LightGBM ranker; the fitted selector is
   handed to a :class:`~mandc.Planner`'s cache (pickled to disk, as a fit in ``recommend`` would be);
5. **recommend_cold** — ``Planner.recommend(folder)`` for a new imagefolder (40 generated 64×64 photos with
   captions): its DatasetFeatures are computed (MiniLM + image statistics), it enters the graph with
   similarity edges only and every model is scored;
6. **recommend_cached** — the same call again on the same planner: the folder's features and its
   predictions come from the caches.

The peak RSS of a step is the process's ``VmHWM`` (``finetune.memory``) reset at the step's start, so it
includes what earlier steps left resident (the graph, the fitted selector): it is the memory the machine
needs for that step. ``fit`` = embed + select.

**The synthetic graph** has the real feature dimensions: every model has the
``profiler.modelinfo.feature_names()`` keys (shape keys, ``mix_<family>`` over the catalog families,
16 card-embedding values), every dataset a ``DatasetFeatures.to_vector()`` vector (45 values) and a
catalog family. Values are drawn around the shipped reference's per-column mean and spread (columns the
reference holds constant stay constant), from a latent structure of rank ``RANK``: a dataset has a latent
``v_d = c_{f(d)} + 0.5 ε`` (``c_f`` its family's centroid), a model a latent ``a_m``, a pretraining mixture
(specialist on one or two families, or generalist) and a capacity ``c_m`` (its ``log10_params``); the
dataset vector is a fixed linear map of ``v_d`` plus noise and the card embedding one of ``a_m``. Quality
``q = 0.6·mix_m[f(d)] + 0.25·⟨a_m, v_d⟩/RANK + 0.15·c_m``; held-out loss ``base_d·exp(-q)·(1 + 0.02 ε)``.
A ``density`` share of all pairs is profiled: every dataset gets ``round(density·models)`` models drawn
uniformly without replacement. The JSON reports the selector's own CV regret (grouped 4-fold over the
training datasets) of the neighbour prior alone (0 rounds) and of the chosen rounds, against a random
pick, to show the selection problem is learnable, not noise. ``recommend_*_cached`` are the
``Recommendation.cached`` flags (the selector, or the target's predictions, came from a cache: true for
both calls, since the select step hands its fitted selector to the planner).

The before/after in the README ran this script in a copy of the tree before the scale changes.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # recommend_cold.make_folder

RANK = 8
DEFAULT_SIZES = "1000x100,3000x300,10000x1000"
STEPS = ("ingest", "graph", "embed", "select", "recommend_cold", "recommend_cached")


def make_lines(n_models: int, n_datasets: int, density: float = 0.01, seed: int = 0):
    """``(records, models, datasets)`` of a synthetic graph (see the module docstring): lines in the shipped
    reference's format, ``round(density·n_models)`` ok records per dataset (one seed)."""
    import numpy as np

    from data.features import DatasetFeatures
    from data.reference import load_reference
    from profiler.modelinfo import SHAPE_KEYS, feature_names

    rng = np.random.default_rng(seed)
    ref_records, ref_models, ref_datasets = load_reference()
    dnames = DatasetFeatures.feature_names()
    ref_vec = np.array([d["vector"] for d in ref_datasets])
    vmu, vsd = ref_vec.mean(0), ref_vec.std(0)
    mkeys = feature_names()
    fams = [k[4:] for k in mkeys if k.startswith("mix_")]
    cards = [k for k in mkeys if k.startswith("card_emb_")]
    ref_card = np.array([[m["features"].get(k, 0.0) for k in cards] for m in ref_models])
    cmu, csd = ref_card.mean(0), ref_card.std(0)
    shapes = [{k: m["features"].get(k, 0.0) for k in SHAPE_KEYS} for m in ref_models]

    centroids = rng.standard_normal((len(fams), RANK))
    A = rng.standard_normal((len(dnames), RANK)) / np.sqrt(RANK)
    B = rng.standard_normal((len(cards), RANK)) / np.sqrt(RANK)
    fam_of = rng.integers(0, len(fams), n_datasets)
    V = centroids[fam_of] + 0.5 * rng.standard_normal((n_datasets, RANK))       # [N, r] dataset latents
    Z = V @ A.T + 0.3 * rng.standard_normal((n_datasets, len(dnames)))
    vectors = np.where(vsd > 0, vmu + vsd * Z, vmu)                              # [N, 45]
    base = rng.uniform(0.05, 0.2, n_datasets)
    datasets = [{"ref": f"synthetic:d{i:05d}", "name": f"d{i:05d}", "family": fams[fam_of[i]],
                 "vector": vectors[i].round(6).tolist(), **({"feature_names": dnames} if i == 0 else {})}
                for i in range(n_datasets)]

    Am = rng.standard_normal((n_models, RANK))                                   # [M, r] model latents
    card = cmu + csd * (Am @ B.T + 0.3 * rng.standard_normal((n_models, len(cards))))
    mix = np.zeros((n_models, len(fams)))
    kind = rng.integers(0, 3, n_models)                                          # 0/1: specialist, 2: generalist
    first, second = rng.integers(0, len(fams), n_models), rng.integers(0, len(fams), n_models)
    mix[np.arange(n_models), first] = 1.0
    mix[kind == 1, second[kind == 1]] += 0.5
    mix[kind == 2] = 1.0
    mix /= mix.sum(1, keepdims=True)
    cap = rng.uniform(0, 1, n_models)
    models = []
    for i in range(n_models):
        feats = dict(shapes[i % len(shapes)])
        feats["log10_params"] = 5.0 + 2.0 * float(cap[i])
        feats.update({f"mix_{f}": float(round(mix[i, k], 6)) for k, f in enumerate(fams)})
        feats.update({k: float(card[i, j]) for j, k in enumerate(cards)})
        models.append({"ref": f"synthetic:m{i:05d}", "name": f"m{i:05d}", "features": feats,
                       "info": {"family": "dit" if feats.get("is_dit") else "unet",
                                "mixture": {f: float(round(mix[i, k], 6)) for k, f in enumerate(fams) if mix[i, k] > 0}}})

    per = max(2, int(round(density * n_models)))
    records = []
    for j in range(n_datasets):
        chosen = rng.choice(n_models, per, replace=False)
        q = 0.6 * mix[chosen, fam_of[j]] + 0.25 * (Am[chosen] @ V[j]) / RANK + 0.15 * cap[chosen]
        loss = base[j] * np.exp(-q) * (1 + 0.02 * rng.standard_normal(per))
        zs = 1.6 * base[j] * np.exp(-0.8 * q) * (1 + 0.04 * rng.standard_normal(per))
        for i, lo, z in zip(chosen.tolist(), loss.tolist(), zs.tolist()):
            job = {"model": models[i]["ref"], "dataset": datasets[j]["ref"], "method": "full",
                   "config": {"steps": 20}, "seed": 0}
            records.append({"job_id": hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16],
                            "job": job, "status": "ok", "error": None,
                            "metrics": {"heldout_loss": lo, "zero_shot_loss": z}, "peak_mem_bytes": 1,
                            "wall_s": 1.0, "train_s": 1.0, "versions": {}, "host": "synthetic",
                            "finished_at": "2025-01-01T00:00:00"})
    return records, models, datasets


class Meter:
    """Times and meters steps: ``with meter("name"): ...`` records wall seconds and the peak RSS (bytes)."""

    def __init__(self):
        self.steps: dict[str, dict] = {}

    def __call__(self, name: str):
        meter = self

        class _Step:
            def __enter__(self):
                from finetune.memory import reset_peak_rss

                gc.collect()
                reset_peak_rss()
                print(f"  {name} ...", file=sys.stderr, flush=True)
                self.t0, self.c0 = time.perf_counter(), time.process_time()
                return self

            def __exit__(self, *exc):
                from finetune.memory import current_rss_bytes, peak_rss_bytes

                wall = time.perf_counter() - self.t0
                meter.steps[name] = {"wall_s": round(wall, 3), "cpu_s": round(time.process_time() - self.c0, 3),
                                     "peak_rss_bytes": peak_rss_bytes(),
                                     "rss_after_bytes": current_rss_bytes()}
                print(f"  {name}: {wall:.1f} s, peak RSS {peak_rss_bytes() / 2**30:.2f} GiB", file=sys.stderr, flush=True)

        return _Step()


def run_size(n_models: int, n_datasets: int, density: float, seed: int, folder: Path, work: Path) -> dict:
    """Every step of the module docstring on one synthetic graph; returns the size's JSON entry."""
    import numpy as np

    from finetune.memory import reset_peak_rss
    from mandc import Planner, Store
    from mandc.cache import selector_key
    from mandc.embed import SageEmbedder
    from mandc.select import Selector, SelectorConfig, make_embedder

    t0 = time.perf_counter()
    import lightgbm  # noqa: F401  (imported before the steps, so no step pays for the libraries' import)
    import torch_geometric.nn  # noqa: F401

    import_s = time.perf_counter() - t0
    reset_peak_rss()
    t0 = time.perf_counter()
    lines = make_lines(n_models, n_datasets, density, seed)
    gen_s = time.perf_counter() - t0
    n_records = len(lines[0])
    meter = Meter()
    with meter("ingest"):
        store = Store(work / "graph.sqlite", reference=lines)
    del lines
    with meter("graph"):
        graph = store.graph()
    cfg = SelectorConfig()
    with meter("embed"):
        emb = make_embedder(cfg, graph)
    assert isinstance(emb, SageEmbedder)
    with meter("select"):
        sel = Selector(cfg).fit(graph, embedder=emb)
        planner = Planner(store, cache_dir=work / "cache")
        planner.cache.selector(selector_key(planner._graph_key(), cfg), lambda: sel)
    fitted = sel.fitted_summary()
    cv = sel.cv_.get("rank", {})
    del graph, emb, sel
    with meter("recommend_cold"):
        cold = planner.recommend(str(folder))
    with meter("recommend_cached"):
        warm = planner.recommend(str(folder))
    same = [e.model for e in cold.entries] == [e.model for e in warm.entries]
    regret = dict(zip(cv.get("grid", []), cv.get("regret", [])))
    # a random pick's expected regret over the profiled datasets (max score 1 - mean score)
    g = store.graph()
    rand = float(np.mean([1.0 - np.mean(list(g.scores(d).values())) for d in g.profiled]))
    out = {"models": n_models, "datasets": n_datasets, "density": density, "records": n_records,
           "perf_edges": len(g.edges("perf")), "sim_edges": len(g.edges("sim")),
           "import_s": round(import_s, 2), "generate_s": round(gen_s, 2), "steps": meter.steps,
           "fit_s": round(meter.steps["embed"]["wall_s"] + meter.steps["select"]["wall_s"], 2),
           "fit_peak_rss_bytes": max(meter.steps[s]["peak_rss_bytes"] for s in ("embed", "select")),
           "process_peak_rss_bytes": max(s["peak_rss_bytes"] for s in meter.steps.values()),
           "fitted": fitted, "cv_regret_prior": regret.get(0), "cv_regret_chosen": regret.get(fitted["rank"]["rounds"]),
           "random_regret": round(rand, 5), "recommend_cold_cached": cold.cached, "recommend_cached_cached": warm.cached,
           "cached_ranks_alike": same, "top3": [e.model for e in cold.entries[:3]],
           "recommend_seconds_inside": {"cold": cold.seconds, "cached": warm.seconds}}
    del g
    store.close()
    return out


def _child(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    m, n = (int(x) for x in args.one.split("x"))
    with tempfile.TemporaryDirectory(prefix=f"scale-{m}x{n}-") as tmp:
        work = Path(tmp)
        from recommend_cold import make_folder

        folder = make_folder(work / "target", n=40, size=64)
        os.environ["MANDC_HOME"] = str(work / "home")
        res = run_size(m, n, args.density, args.seed, folder, work)
    Path(args.out).write_text(json.dumps(res))
    return 0


def _gib(b: int) -> str:
    return f"{b / 2**30:.2f}"


def table(results: list[dict]) -> str:
    """The Markdown table: one row per size, wall seconds (peak RSS GiB) per step."""
    head = "| models × datasets | perf edges | " + " | ".join(STEPS) + " | fit (embed+select) |"
    lines = [head, "|" + "---|" * (len(STEPS) + 3)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['models']} × {r['datasets']} | – | " + " | ".join("–" for _ in STEPS)
                         + f" | failed: {r['error'][:60]} |")
            continue
        cells = [f"{r['steps'][s]['wall_s']:.2f} s ({_gib(r['steps'][s]['peak_rss_bytes'])} GiB)" for s in STEPS]
        lines.append(f"| {r['models']} × {r['datasets']} | {r['perf_edges']} | " + " | ".join(cells)
                     + f" | {r['fit_s']:.1f} s ({_gib(r['fit_peak_rss_bytes'])} GiB) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated MODELSxDATASETS (default {DEFAULT_SIZES})")
    ap.add_argument("--density", type=float, default=0.01, help="share of (model, dataset) pairs profiled (default 0.01)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic graph")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per size (default 1: the machine is shared; as benchmarks/selection.py)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one size may take before it is stopped")
    ap.add_argument("--json", dest="json_path", type=Path, help="also write the JSON result here")
    ap.add_argument("--one", help=argparse.SUPPRESS)   # child mode: one size
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return _child(args)
    sizes = []
    for s in args.sizes.split(","):
        try:
            m, n = (int(x) for x in s.strip().lower().split("x"))
        except ValueError:
            ap.error(f"--sizes: {s!r} is not MODELSxDATASETS (e.g. 1000x100)")
        sizes.append((m, n))
    results, load_before = [], [round(x, 2) for x in os.getloadavg()]
    for m, n in sizes:
        print(f"{m} models × {n} datasets:", file=sys.stderr, flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = Path(f.name)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", f"{m}x{n}", "--out", str(out),
               "--density", str(args.density), "--seed", str(args.seed), "--threads", str(args.threads)]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, timeout=args.timeout)
            res = json.loads(out.read_text()) if r.returncode == 0 else {"error": f"exit status {r.returncode}"}
        except subprocess.TimeoutExpired:
            res = {"error": f"timed out after {args.timeout:.0f} s"}
        out.unlink(missing_ok=True)
        res.update(models=m, datasets=n, process_wall_s=round(time.perf_counter() - t0, 1))
        results.append(res)
    doc = {"benchmark": "scale", "density": args.density, "seed": args.seed, "threads": args.threads,
           "cpu_count": os.cpu_count(), "load_average_before": load_before,
           "python": platform.python_version(), "load_average_after": [round(x, 2) for x in os.getloadavg()],
           "sizes": results}
    text = json.dumps(doc, indent=2)
    print(table(results))
    print(text)
    if args.json_path:
        from data.io import atomic_write

        atomic_write(args.json_path, text + "\n")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
