"""The logic behind ``mandc profile``: a campaign over models × datasets × seeds, from CLI-style options.

The budget defaults to the reference campaign's (:data:`profiler.reference.BUDGET` and ``STEPS``) for
the ``full`` method, so records a user profiles compare directly with the shipped reference records
(and can join the same matching graph); other methods get only ``steps`` from the options.
"""
from __future__ import annotations

import os
from pathlib import Path

from data.io import mandc_home
from profiler.campaign import Campaign
from profiler.executors import get_executor
from profiler.jobs import ProfileJob


def parse_list(text: str | None, what: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; a clear error for an empty list."""
    items = [x.strip() for x in (text or "").split(",") if x.strip()]
    if not items:
        raise ValueError(f"{what}: give at least one, comma-separated")
    return list(dict.fromkeys(items))


def parse_seeds(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; ``"3"`` means the single seed 3."""
    seeds = []
    for s in parse_list(text, "--seeds"):
        try:
            seeds.append(int(s))
        except ValueError:
            raise ValueError(f"--seeds takes comma-separated integers ≥ 0, got {s!r}") from None
        if seeds[-1] < 0:
            raise ValueError(f"--seeds takes integers ≥ 0, got {s!r}")
    return seeds


def default_campaign_dir() -> Path:
    """``$MANDC_HOME/profiling``: one folder for all user profiling; records are keyed by job id, so a
    job profiled once is never run again, whatever campaign asks for it."""
    return mandc_home() / "profiling"


def build_jobs(models: list[str], datasets: list[str], method: str = "full", steps: int | None = None,
               seeds: list[int] = (0,), config: dict | None = None) -> list[ProfileJob]:
    """Jobs for every (model, dataset, seed), model-major; ``config`` adds method options."""
    from finetune.methods import get_method
    from profiler.reference import BUDGET, STEPS

    get_method(method)  # a clear error for an unknown method, before anything runs
    cfg = dict(BUDGET) if method == "full" else {}
    cfg["steps"] = STEPS if steps is None else int(steps)
    cfg.update(config or {})
    return [ProfileJob(m, d, method, dict(cfg), s) for m in models for d in datasets for s in seeds]


def executor_options(executor: str, workers: int | None = None, address: str | None = None,
                     gpus_per_job: float | None = None) -> dict:
    """:func:`profiler.executors.get_executor` keyword arguments from the CLI's options (``--address``
    and ``--gpus-per-job`` are Ray's: a clear error when given to another executor)."""
    ray_only = [flag for flag, v in (("--address", address), ("--gpus-per-job", gpus_per_job)) if v is not None]
    if ray_only and executor != "ray":
        raise ValueError(f"{', '.join(ray_only)} only apply to --executor ray (got --executor {executor})")
    if gpus_per_job is not None and gpus_per_job < 0:
        raise ValueError(f"--gpus-per-job must be ≥ 0, got {gpus_per_job}")
    kw = {"workers": workers} if workers is not None else {}
    if executor == "ray":
        kw.update({"address": address, "num_gpus": gpus_per_job})
    return kw


def run_profile(jobs: list[ProfileJob], campaign_dir: str | os.PathLike | None = None, executor: str = "local",
                workers: int | None = None, progress: bool = True, retry_failed: bool = False,
                address: str | None = None, gpus_per_job: float | None = None) -> tuple[dict, list[dict]]:
    """Run ``jobs`` as a campaign; returns ``(summary, records of these jobs as dicts)``. ``address`` and
    ``gpus_per_job`` configure the ``ray`` executor (:class:`profiler.executors.RayExecutor`)."""
    from profiler.reference import ensure_built

    opts = executor_options(executor, workers, address, gpus_per_job)  # bad options fail before any build
    ensure_built(list(dict.fromkeys(j.model for j in jobs)))
    camp = Campaign(campaign_dir or default_campaign_dir())
    ex = get_executor(executor, **opts)
    summary = camp.run(jobs, ex, progress=progress, retry_failed=retry_failed)
    summary["campaign_dir"] = str(camp.dir)
    records = []
    for job in jobs:
        rec = camp.read_record(job.job_id)
        if rec is not None:
            records.append(rec.to_dict())
    return summary, records


__all__ = ["build_jobs", "default_campaign_dir", "executor_options", "parse_list", "parse_seeds", "run_profile"]
