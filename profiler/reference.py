"""The reference campaign: every zoo model fine-tuned on 32 catalog datasets, the embedded default graph.

::

    python -m profiler.reference --out data/reference [--workers N] [--seeds 2] [--steps N] [--campaign-dir DIR]

builds the job list (zoo models × :func:`profiled_datasets` × seeds), runs it as a resumable
:class:`profiler.campaign.Campaign` (killed? run the same command again: finished jobs are skipped), then
writes into ``--out``: ``records.jsonl`` (the ok records of this job list), ``models.jsonl``
(:func:`profiler.modelinfo.describe_model` of each model), ``datasets.jsonl`` (features of all 56 catalog
datasets, canonical seed-0 data, with ``profiled`` marking the 32) and ``README.md`` (the command, the
budget, the measured runtime and a summary of the matrix). ``--models``/``--datasets`` restrict the lists
for trials; missing zoo models are built first (not counted in the campaign's runtime).

**The fixed profiling budget** (ours; :data:`BUDGET`): method ``full`` (the whole denoiser trains, the
text encoder stays frozen), batch 8, AdamW at lr 3e-4, constant after a 5-step linear warm-up,
**80 steps**, then the default held-out metric (:func:`finetune.metrics.heldout_loss`: v-MSE at 7 fixed
timesteps × 2 fixed noise seeds on the dataset's 16 held-out images). Why these numbers:

- *80 steps* × 8 images = 8 epochs of a catalog dataset's 80 training images: long enough that
  fine-tuning reorders the models (the zero-shot loss predicts the winner less well: mean Kendall τ
  between zero-shot and fine-tuned losses 0.78 at 20 steps, about 0.6 at 80), which is the regime a
  graph of fine-tuning results is for; short enough that pretraining still decides the winner, and that
  the 704 jobs fit 1.5–2.5 h on 2 cores (18 s per job on average). The first reference used 20 steps:
  there the zero-shot probe alone out-selected M&C without the probe;
- *lr 3e-4 with warm-up*: large enough that every model moves, small enough for the zoo's largest
  models; the warm-up keeps Adam's first, sign-like updates (each parameter moves by ~lr whatever its
  gradient's size) from jolting the pretrained weights.

Two seeds per (model, dataset) pair: the seed changes batch order, timesteps and noise (not the data),
so the pair of records measures fine-tuning noise — the noise ceiling of any selector.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from data.io import atomic_write, mandc_home
from profiler.campaign import Campaign
from profiler.executors import EXECUTORS, get_executor
from profiler.jobs import ProfileJob

METHOD = "full"
STEPS = 80
#: Method-config overrides of every reference job.
BUDGET = {"batch_size": 8, "lr": 3e-4, "warmup_steps": 5}
PROFILED_PER_FAMILY = 4


def profiled_datasets() -> list[str]:
    """The 32 profiled datasets: the first 4 (catalog order) of each of the 8 families."""
    from data.catalog import families, list_catalog

    return [f"builtin:{e.name}" for fam in families() for e in list_catalog(fam)[:PROFILED_PER_FAMILY]]


def zoo_models() -> list[str]:
    from finetune.zoo import list_zoo

    return [f"zoo:{s.name}" for s in list_zoo()]


def default_campaign_dir() -> Path:
    """``$MANDC_HOME/campaigns/reference``: outside the source tree (704 record files); records are
    keyed by job id, so campaigns with other budgets or model lists share it safely."""
    return mandc_home() / "campaigns" / "reference"


def budget(steps: int = STEPS) -> dict:
    """The method-config overrides of a reference job with ``steps`` steps."""
    return {"steps": int(steps), **BUDGET}


def reference_jobs(models: list[str] | None = None, datasets: list[str] | None = None, seeds: int = 2,
                   steps: int = STEPS) -> list[ProfileJob]:
    """Every (model, dataset, seed) job, model-major (workers keep a model cached across its jobs)."""
    models = models or zoo_models()
    datasets = datasets or profiled_datasets()
    cfg = budget(steps)
    return [ProfileJob(m, d, METHOD, dict(cfg), seed) for m in models for d in datasets for seed in range(seeds)]


def dataset_rows(profiled: set[str]) -> list[dict]:
    """One ``datasets.jsonl`` row per catalog dataset (seed-0 canonical data), in catalog order."""
    from data.catalog import list_catalog, load_builtin
    from data.features import DatasetFeatures

    names = DatasetFeatures.feature_names()
    rows = []
    for e in list_catalog():
        ref = f"builtin:{e.name}"
        vec = DatasetFeatures.compute(load_builtin(e.name, seed=0)).to_vector()
        rows.append({"ref": ref, "name": e.name, "family": e.family, "profiled": ref in profiled,
                     "vector": [round(float(x), 6) for x in vec], "feature_names": names})
    return rows


def ensure_built(models: list[str]) -> dict[str, float]:
    """Build the zoo models that are not built yet (sequentially, before the campaign, so no job's time
    includes a build and no two workers wait on one build); seconds each. Unknown names are left to
    fail in their jobs' records."""
    from finetune.refs import ModelRefError
    from finetune.zoo import build, is_built

    took = {}
    for ref in models:
        try:
            missing = ref.startswith("zoo:") and not is_built(ref[4:])
        except ModelRefError:
            continue
        if missing:
            print(f"building {ref} (not built yet) ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            build(ref[4:])
            took[ref] = round(time.perf_counter() - t0, 1)
    return took


def matrix_summary(records: list[dict]) -> dict:
    """Winners of the mean-over-seeds held-out loss per dataset, and per-model job times."""
    by_pair: dict[tuple[str, str], list[float]] = {}
    times: dict[str, list[float]] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        j = r["job"]
        by_pair.setdefault((j["dataset"], j["model"]), []).append(r["metrics"]["heldout_loss"])
        times.setdefault(j["model"], []).append(r["wall_s"])
    winners: dict[str, str] = {}
    for ds in sorted({d for d, _ in by_pair}):
        losses = {m: statistics.fmean(v) for (d, m), v in by_pair.items() if d == ds}
        winners[ds] = min(losses, key=losses.get)
    counts: dict[str, int] = {}
    for m in winners.values():
        counts[m] = counts.get(m, 0) + 1
    n = len(winners)
    return {"datasets": n, "winners": winners, "wins": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
            "max_winner_share": round(max(counts.values()) / n, 3) if n else None,
            "distinct_winners": len(counts),
            "job_s": {m: {"mean": round(statistics.fmean(v), 2), "n": len(v)} for m, v in times.items()}}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_readme(out: Path, command: str, summary: dict, n_jobs: int, n_records: int, seeds: int, steps: int,
                 workers: str, matrix: dict, total_job_s: float, versions: dict) -> None:
    wins = ", ".join(f"{m.removeprefix('zoo:')} {c}" for m, c in matrix["wins"].items()) or "—"
    per_model = "\n".join(f"| {m.removeprefix('zoo:')} | {v['mean']:.1f} | {v['n']} |"
                          for m, v in sorted(matrix["job_s"].items()))
    resumed = (f" This run resumed a campaign: {summary['skipped']} jobs had finished before and are not in "
               "the wall time." if summary["skipped"] else "")
    text = f"""# The shipped reference (embedded default graph)

Profiling records of the reference zoo on the catalog: {n_records} ok records of {n_jobs} jobs
({summary['failed']} failed in this run), {seeds} fine-tuning seed(s) per (model, dataset) pair.
Read them with `data.reference.load_reference()`.

## Regenerate

```
{command}
```

Measured: **{summary['wall_s'] / 60:.1f} min** wall time for {summary['ran']} jobs with {workers}
(sum of the jobs' own wall times: {total_job_s / 60:.1f} min) on {_cpu_name()}, {os.cpu_count()} CPUs,
finished {datetime.now(timezone.utc).isoformat(timespec='seconds')}.{resumed}
Versions: {', '.join(f'{k} {v}' for k, v in sorted(versions.items()))}.

The campaign is resumable: run the same command again after an interruption and finished jobs are
skipped (records live in the campaign folder, one JSON file per job).

## Budget (fixed for every job)

Method `full` (whole denoiser, frozen text encoder), batch {BUDGET['batch_size']}, AdamW lr {BUDGET['lr']}
constant after a {BUDGET['warmup_steps']}-step linear warm-up, **{steps} steps**; metric: held-out
denoising loss (v-MSE, 7 fixed timesteps × 2 noise seeds, 16 held-out images; lower is better) after
fine-tuning (`metrics.heldout_loss`) and before it (`metrics.zero_shot_loss`). Datasets: the first
{PROFILED_PER_FAMILY} catalog datasets of each family, canonical (seed 0) data; the seed is the
fine-tuning seed. Rationale: `profiler/reference.py`.

## The matrix

Best model per dataset (mean held-out loss over seeds): {matrix['distinct_winners']} distinct winners over
{matrix['datasets']} datasets; the most frequent winner is best on {matrix['max_winner_share']:.0%} of them.
Wins: {wins}.

| model | mean job wall time (s) | jobs |
|---|---|---|
{per_model}

## Files

- `records.jsonl`: one ProfileRecord per line (`job_id`, `job`, `status`, `error`, `metrics`,
  `peak_mem_bytes`, `wall_s`, `train_s`, `versions`, `host`, `finished_at`).
- `models.jsonl`: `ref`, `name`, `features` (`profiler.modelinfo.feature_names()`), `info`.
- `datasets.jsonl`: all catalog datasets, `ref`, `name`, `family`, `profiled`, `vector`
  (`DatasetFeatures.to_vector()`), `feature_names`.
"""
    atomic_write(out / "README.md", text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m profiler.reference", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for records/models/datasets.jsonl and README.md")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    p.add_argument("--seeds", type=int, default=2, help="fine-tuning seeds per (model, dataset) pair (default 2)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"fine-tuning steps per job (default {STEPS})")
    p.add_argument("--campaign-dir", type=Path, default=None,
                   help="campaign folder with one record per job (default: $MANDC_HOME/campaigns/reference); "
                        "resumes if present")
    p.add_argument("--models", default=None, help="comma-separated model refs (default: the whole zoo)")
    p.add_argument("--datasets", default=None, help="comma-separated dataset refs (default: the 32 profiled ones)")
    p.add_argument("--executor", default="local", choices=sorted(EXECUTORS), help="where jobs run (default local)")
    p.add_argument("--retry-failed", action="store_true", help="re-run jobs whose record is 'failed'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.seeds < 1 or a.steps < 1:
        p.error("--seeds and --steps must be ≥ 1")

    models = [m.strip() for m in a.models.split(",") if m.strip()] if a.models else zoo_models()
    datasets = [d.strip() for d in a.datasets.split(",") if d.strip()] if a.datasets else profiled_datasets()
    jobs = reference_jobs(models, datasets, a.seeds, a.steps)
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    camp = Campaign(a.campaign_dir or default_campaign_dir())
    built = ensure_built(models)
    if built:
        print(f"built {', '.join(f'{k} ({v}s)' for k, v in built.items())}", file=sys.stderr)

    kw = {"workers": a.workers} if a.workers is not None else {}
    executor = get_executor(a.executor, **kw)
    print(f"{len(jobs)} jobs ({len(models)} models × {len(datasets)} datasets × {a.seeds} seeds), "
          f"{len(camp.pending(jobs, a.retry_failed))} to run; {executor.describe()}; campaign {camp.dir}",
          file=sys.stderr, flush=True)
    summary = camp.run(jobs, executor, progress=not a.no_progress, retry_failed=a.retry_failed)

    ids = {j.job_id for j in jobs}
    records = [r.to_dict() for r in camp.records("ok") if r.job_id in ids]
    atomic_write(out / "records.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    from profiler.jobs import _quiet_loading
    from profiler.modelinfo import describe_model

    _quiet_loading()

    atomic_write(out / "models.jsonl", "".join(json.dumps(describe_model(m)) + "\n" for m in models))
    atomic_write(out / "datasets.jsonl",
                      "".join(json.dumps(r) + "\n" for r in dataset_rows(set(datasets))))

    matrix = matrix_summary(records)
    versions = records[0]["versions"] if records else {}
    command = "python -m profiler.reference " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    write_readme(out, command, summary, len(jobs), len(records), a.seeds, a.steps, executor.describe(), matrix,
                 sum(r["wall_s"] for r in records), versions)
    print(json.dumps({**{k: v for k, v in summary.items() if k != "failed_jobs"}, "records": len(records),
                      "max_winner_share": matrix["max_winner_share"],
                      "distinct_winners": matrix["distinct_winners"]}), flush=True)
    for f in summary["failed_jobs"]:
        print(f"failed {f['job_id']}: {f['error']}", file=sys.stderr)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
