"""Feeding measurements back: does each new dataset's records make the next recommendations better?

    python benchmarks/feedback.py [--models a,b,...] [--datasets K] [--size 48] [--steps 80] [--seeds 2]
                                  [--rules content,all] [--workers N] [--profile-only] [--json FILE]

1. Generates ``K`` datasets of procedural families the catalog does not have (spirals, star fields, bar
   charts, clouds, crossing lines, mosaics), at ``--size`` pixels (not the catalog's 32) and 120 images
   (100 train + 20 held-out, not the catalog's 96), written as image folders under
   ``.build/feedback/data/``: user datasets, without a catalog family.
2. Profiles every ``--models`` model on each with the reference budget (``profiler.reference.budget``,
   method ``full``, one fine-tuning seed), as a resumable :class:`profiler.campaign.Campaign` in
   ``.build/feedback/campaign/`` (a rerun reuses every finished record). Missing zoo models are built
   first (``profiler.reference.ensure_built``, into ``$MANDC_HOME/zoo``).
3. Starting from the shipped reference graph, feeds the new datasets' records one at a time, in
   generation order. After ``t`` of them the graph is rebuilt as a store rebuilds it (``MatchingGraph.
   from_reference`` over the reference lines plus the fed datasets' lines and records), the M&C selector
   (``mandc.evaluate.mandc_config``, one fit per selector seed) and the nearest-winner baseline rank the
   models for each of the ``K - t`` datasets not fed yet (added as a target, like ``mandc recommend``),
   and the rankings are scored against their measured records over the profiled models
   (``mandc.evaluate.score_ranking``: top-1, regret, ...). ``nn_user`` is the share of those targets
   whose nearest dataset is another user dataset rather than a catalog one.
4. Does it for each similarity rule of ``--rules`` (``mandc.graph.standardisation``: ``content``, the
   shipped one, and ``all``, the earlier one), side by side.

Prints a Markdown table and the JSON; ``--json FILE`` also writes it::

    {"config": {...}, "datasets": [ref...], "models": [ref...], "campaign": {summary},
     "curves": {RULE: {SELECTOR: [{"fed": t, "targets": K - t, "top1": X, "regret": X, "kendall": X,
                                    "top1_seeds": [...], "regret_seeds": [...], "nn_user": X}]}},
     "seconds": {"profiling": X, "selection": X}}
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the checkout

#: Zoo models without a parent and with short pretraining, so a fresh ``$MANDC_HOME`` builds them in a few
#: minutes (the whole zoo takes about half an hour to build): two UNets and two DiTs, different mixtures.
DEFAULT_MODELS = ("zoo:unet-xs-gradients", "zoo:dit-s-gradients", "zoo:unet-xs-faces", "zoo:dit-m-simple")
N_TRAIN, N_HELDOUT = 100, 20


# ------------------------------------------------------------------------------------------ new families
def _canvas(size: int, bg):
    from PIL import Image, ImageDraw

    from data.catalog.draw import SUPERSAMPLE

    im = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), bg)
    return im, ImageDraw.Draw(im), size * SUPERSAMPLE


def _done(im, size: int):
    from PIL import Image

    return im.resize((size, size), Image.Resampling.BOX)


def spiral(rng, size):
    from data.catalog.draw import CHROMATIC, LIGHT_BG, choice, color

    fg, bg = choice(rng, CHROMATIC), choice(rng, LIGHT_BG)
    im, dr, s = _canvas(size, color(rng, bg))
    turns, phase = rng.uniform(2, 4), rng.uniform(0, 2 * math.pi)
    t = np.linspace(0, turns * 2 * math.pi, 400)
    r = 0.45 * s * t / t[-1]
    cx, cy = s / 2 + rng.uniform(-0.1, 0.1) * s, s / 2 + rng.uniform(-0.1, 0.1) * s
    pts = list(zip(cx + r * np.cos(t + phase), cy + r * np.sin(t + phase)))
    dr.line(pts, fill=color(rng, fg), width=max(2, s // 24))
    return _done(im, size), f"a {fg} spiral on a {bg} background"


def starfield(rng, size):
    from data.catalog.draw import DARK_BG, choice, color

    bg = choice(rng, DARK_BG)
    im, dr, s = _canvas(size, color(rng, bg))
    n = int(rng.integers(8, 40))
    for _ in range(n):
        x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.004, 0.015) * s
        v = int(rng.integers(180, 256))
        dr.ellipse([x - r, y - r, x + r, y + r], fill=(v, v, min(255, v + 10)))
    return _done(im, size), f"{'a few' if n < 20 else 'many'} white stars on a {bg} night sky"


def bars(rng, size):
    from data.catalog.draw import CHROMATIC, choice, color

    fg = choice(rng, CHROMATIC)
    im, dr, s = _canvas(size, color(rng, "white"))
    k = int(rng.integers(3, 7))
    w = 0.8 * s / k
    for i in range(k):
        h = rng.uniform(0.15, 0.85) * s
        x0 = 0.1 * s + i * w
        dr.rectangle([x0 + 0.1 * w, s - 0.05 * s - h, x0 + 0.9 * w, s - 0.05 * s], fill=color(rng, fg))
    dr.line([(0.08 * s, 0.95 * s), (0.95 * s, 0.95 * s)], fill=(30, 30, 30), width=max(1, s // 64))
    return _done(im, size), f"a bar chart with {k} {fg} bars"


def clouds(rng, size):
    from PIL import Image
    from scipy import ndimage

    from data.catalog.draw import CHROMATIC, COLORS, pick_colors

    c1, c2 = pick_colors(rng, 2, CHROMATIC)
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / rng.uniform(6, 12), mode="wrap")
    m = (noise - noise.min()) / max(np.ptp(noise), 1e-9)
    a, b = np.array(COLORS[c1], float), np.array(COLORS[c2], float)
    img = (m[..., None] * a + (1 - m[..., None]) * b).clip(0, 255).astype(np.uint8)
    return Image.fromarray(img), f"soft {c1} and {c2} clouds"


def lines(rng, size):
    from data.catalog.draw import CHROMATIC, DARK_BG, choice, color

    fg, bg = choice(rng, CHROMATIC), choice(rng, DARK_BG)
    im, dr, s = _canvas(size, color(rng, bg))
    k = int(rng.integers(2, 6))
    for _ in range(k):
        a = rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0.2, 0.8) * s, rng.uniform(0.2, 0.8) * s
        dx, dy = math.cos(a) * s, math.sin(a) * s
        dr.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=color(rng, fg), width=max(1, s // 40))
    return _done(im, size), f"{k} thin {fg} lines crossing on a {bg} background"


def mosaic(rng, size):
    from data.catalog.draw import CHROMATIC, color, pick_colors

    names = pick_colors(rng, 2, CHROMATIC)
    im, dr, s = _canvas(size, color(rng, names[0]))
    n = int(rng.integers(3, 7))
    cell = s / n
    for i in range(n):
        for j in range(n):
            if rng.random() < 0.5:
                dr.rectangle([i * cell, j * cell, (i + 1) * cell - 2, (j + 1) * cell - 2], fill=color(rng, names[1]))
    return _done(im, size), f"a mosaic of {names[0]} and {names[1]} tiles"


FAMILIES = {"spirals": spiral, "starfield": starfield, "bars": bars, "clouds": clouds, "lines": lines,
            "mosaic": mosaic}


def make_dataset(family: str, size: int, root: Path) -> str:
    """Write the new family's dataset (deterministic) under ``root`` once; its folder path (the ref)."""
    import zlib

    from data.dataset import ImageTextDataset, SplitDataset
    from data.imagefolder import write_imagefolder

    out = root / f"{family}_{size}px"
    if not (out / "train").is_dir():
        rng = np.random.default_rng([size, zlib.crc32(family.encode())])
        items = [FAMILIES[family](rng, size) for _ in range(N_TRAIN + N_HELDOUT)]
        split = lambda part: ImageTextDataset([i for i, _ in part], [c for _, c in part], out.name)  # noqa: E731
        write_imagefolder(SplitDataset(name=out.name, train=split(items[:N_TRAIN]), heldout=split(items[N_TRAIN:])), out)
    return str(out)


# ------------------------------------------------------------------------------------------ the curve
def feedback_curve(rule: str, new: list[dict], new_records: list[dict], seeds: int) -> dict:
    """``{selector: [point per t]}`` for one similarity rule (see the module docstring)."""
    from data.reference import load_reference
    from mandc.evaluate import METRICS, NearestWinner, mandc_config, score_ranking
    from mandc.graph import MatchingGraph
    from mandc.select import Selector

    records, models, datasets = load_reference()
    refs = [d["ref"] for d in new]
    truth = MatchingGraph.from_reference(records + new_records, models, datasets + new)
    by_ds = {r: [x for x in new_records if x["job"]["dataset"] == r] for r in refs}
    out = {"mandc": [], "nearest_winner": []}
    for t in range(len(refs)):
        fed, targets = refs[:t], refs[t:]
        g = MatchingGraph.from_reference(records + [x for r in fed for x in by_ds[r]], models,
                                         datasets + new[:t], rule=rule)
        per = {n: {s: [] for s in range(seeds)} for n in out}
        nn_user = []
        fits = {s: Selector(mandc_config(seed=s)).fit(g) for s in range(seeds)}
        for r in targets:
            h = g.copy()
            h.add_dataset(r, next(d["vector"] for d in new if d["ref"] == r))
            nn_user.append(float(h.nearest(r, n=1, profiled_only=False)[0][0] in refs))
            sc, raw = truth.scores(r), truth.raw(r)
            for s in range(seeds):
                per["mandc"][s].append(score_ranking(fits[s].predict(h, r), sc, raw))
            nw = score_ranking(NearestWinner().predict(h, r), sc, raw)
            for s in range(seeds):
                per["nearest_winner"][s].append(nw)
        for n in out:
            seed_means = {k: [float(np.mean([m[k] for m in per[n][s]])) for s in range(seeds)] for k in METRICS}
            out[n].append({"fed": t, "targets": len(targets),
                           **{k: round(float(np.mean(v)), 4) for k, v in seed_means.items()},
                           "top1_seeds": [round(x, 4) for x in seed_means["top1"]],
                           "regret_seeds": [round(x, 4) for x in seed_means["regret"]],
                           "nn_user": round(float(np.mean(nn_user)), 4)})
        print(f"rule {rule}: fed {t}: mandc top-1 {out['mandc'][-1]['top1']:.3f} regret "
              f"{out['mandc'][-1]['regret']:.3f}", file=sys.stderr, flush=True)
    return out


def to_markdown(res: dict) -> str:
    rules = list(res["curves"])
    head = "| fed | targets | " + " | ".join(f"{r}: mandc top-1 / regret | {r}: nearest-winner top-1 / regret | "
                                            f"{r}: nn is a user dataset" for r in rules) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(rules))]
    first = res["curves"][rules[0]]["mandc"]
    for i, p in enumerate(first):
        row = [str(p["fed"]), str(p["targets"])]
        for r in rules:
            m, nw = res["curves"][r]["mandc"][i], res["curves"][r]["nearest_winner"][i]
            seeds = "/".join(f"{x:.3f}" for x in m["regret_seeds"])
            row += [f"{m['top1']:.1%} / {m['regret']:.3f} ({seeds})", f"{nw['top1']:.1%} / {nw['regret']:.3f}",
                    f"{m['nn_user']:.0%}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model refs to profile")
    ap.add_argument("--datasets", type=int, default=len(FAMILIES), help=f"new datasets K (≤ {len(FAMILIES)})")
    ap.add_argument("--size", type=int, default=48, help="image side of the new datasets (the catalog's is 32)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the reference budget's)")
    ap.add_argument("--seeds", type=int, default=2, help="selector seeds")
    ap.add_argument("--rules", default="content,all", help="similarity rules (mandc.graph.RULES)")
    ap.add_argument("--workers", type=int, default=1, help="profiling processes")
    ap.add_argument("--profile-only", action="store_true", help="run (or resume) the profiling campaign and stop")
    ap.add_argument("--json", dest="json_path", default=None, help="also write the JSON result to this file")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from data import DatasetFeatures, load_dataset
    from data.io import atomic_write
    from profiler.campaign import Campaign
    from profiler.executors import get_executor
    from profiler.jobs import ProfileJob
    from profiler.reference import METHOD, STEPS, budget, ensure_built

    build = ROOT / ".build" / "feedback"
    fams = list(FAMILIES)[: args.datasets]
    refs = [make_dataset(f, args.size, build / "data") for f in fams]
    new = [{"ref": r, "name": Path(r).name, "family": None, "feature_names": DatasetFeatures.feature_names(),
            "vector": [round(float(x), 6) for x in DatasetFeatures.compute(load_dataset(r)).to_vector()]} for r in refs]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    steps = args.steps or STEPS
    t0 = time.perf_counter()
    ensure_built(models)
    jobs = [ProfileJob(m, r, METHOD, budget(steps), 0) for m in models for r in refs]
    camp = Campaign(build / "campaign")
    summary = camp.run(jobs, executor=get_executor("local", workers=args.workers))
    ids = {j.job_id for j in jobs}
    recs = [r.to_dict() for r in camp.records("ok") if r.job_id in ids]
    t_prof = time.perf_counter() - t0
    print(f"profiled {len(recs)}/{len(jobs)} jobs ok in {t_prof:.0f} s", file=sys.stderr, flush=True)
    if args.profile_only:
        return 0

    t1 = time.perf_counter()
    curves = {rule: feedback_curve(rule, new, recs, args.seeds) for rule in args.rules.split(",")}
    res = {"config": {"models": models, "size": args.size, "n_images": N_TRAIN + N_HELDOUT, "steps": steps,
                      "method": METHOD, "budget": budget(steps), "selector_seeds": args.seeds,
                      "families": fams},
           "datasets": refs, "models": models,
           "winners": {r: min((x for x in recs if x["job"]["dataset"] == r),
                              key=lambda x: x["metrics"]["heldout_loss"])["job"]["model"] for r in refs},
           "campaign": {k: v for k, v in summary.items() if k != "failed_jobs"},
           "curves": curves,
           "seconds": {"profiling": round(t_prof, 1), "selection": round(time.perf_counter() - t1, 1)}}
    print(to_markdown(res))
    print()
    print(json.dumps(res, indent=2))
    if args.json_path:
        print(f"wrote {atomic_write(args.json_path, json.dumps(res, indent=2) + chr(10))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
