"""Profiling jobs: JSON round trips, stable ids, running a job on a tiny model, failures recorded."""
from __future__ import annotations

import json
import math

import jobs_tiny
import pytest
import torch

from profiler.jobs import ProfileJob, ProfileRecord, canonical_json, run_job

CFG = jobs_tiny.CFG


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A very small pipeline saved as a local diffusers folder (a model ref like any other)."""
    return jobs_tiny.tiny_folder(tmp_path_factory.getbasetemp())


def test_job_id_is_stable_and_canonical():
    job = ProfileJob("zoo:unet-s-broad", "builtin:shapes_circles", "full", {"steps": 30, "lr": 3e-4}, seed=0)
    # pinned: the id must not change across machines, Python versions or dict orders
    assert job.job_id == "087270b7266a2492"
    again = ProfileJob("zoo:unet-s-broad", "builtin:shapes_circles", "full", {"lr": 3e-4, "steps": 30}, seed=0)
    assert again.job_id == job.job_id
    assert len(job.job_id) == 16 and int(job.job_id, 16) >= 0
    import hashlib

    expected = hashlib.sha256(b'{"config":{"lr":0.0003,"steps":30},"dataset":"builtin:shapes_circles",'
                              b'"method":"full","model":"zoo:unet-s-broad","seed":0}').hexdigest()[:16]
    assert job.job_id == expected
    assert ProfileJob(job.model, job.dataset, job.method, job.config, seed=1).job_id != job.job_id
    assert ProfileJob(job.model, job.dataset, job.method, {"steps": 31, "lr": 3e-4}).job_id != job.job_id


def test_job_and_record_json_round_trip():
    job = ProfileJob("zoo:dit-m-simple", "builtin:digits_low", "full", {"steps": 30, "warmup_steps": 5}, seed=1)
    assert ProfileJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    rec = ProfileRecord(job_id=job.job_id, job=job, status="ok",
                        metrics={"heldout_loss": 0.1, "zero_shot_loss": 0.2}, peak_mem_bytes=123, wall_s=1.5,
                        train_s=1.0, versions={"torch": "x"}, host="h", finished_at="2025-01-01T00:00:00+00:00")
    d = json.loads(json.dumps(rec.to_dict()))
    assert set(d) == {"job_id", "job", "status", "error", "metrics", "peak_mem_bytes", "wall_s", "train_s",
                      "versions", "host", "finished_at"}
    assert ProfileRecord.from_dict(d) == rec
    d["job"]["seed"] = 7  # an edited job no longer matches its id
    with pytest.raises(ValueError, match="hashes to"):
        ProfileRecord.from_dict(d)


@pytest.mark.parametrize("bad, match", [
    ({"model": "", "dataset": "builtin:x"}, "model"),
    ({"model": "zoo:a", "dataset": "builtin:x", "seed": -1}, "seed"),
    ({"model": "zoo:a", "dataset": "builtin:x", "config": {"seed": 3}}, "ProfileJob.seed"),
    ({"model": "zoo:a", "dataset": "builtin:x", "config": {"lr": float("nan")}}, "plain JSON"),
    ({"model": "zoo:a", "dataset": "builtin:x", "budget": 3}, "no field"),
    ({"model": "zoo:a"}, "missing"),
])
def test_bad_jobs_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        ProfileJob.from_dict(bad)


def test_canonical_json_sorts_and_compacts():
    assert canonical_json({"b": 1, "a": [1.5, "x"]}) == '{"a":[1.5,"x"],"b":1}'


def test_run_job_measures_and_keeps_nothing(tiny_folder, tmp_path):
    job = ProfileJob(tiny_folder, "builtin:shapes_circles", "full", dict(CFG, warmup_steps=2), seed=0)
    rec = run_job(job, workdir=tmp_path / "work")
    assert rec.status == "ok", rec.error
    assert rec.job_id == job.job_id and rec.error is None
    assert set(rec.metrics) == {"heldout_loss", "zero_shot_loss"}
    assert all(math.isfinite(v) and v > 0 for v in rec.metrics.values())
    assert rec.metrics["heldout_loss"] != rec.metrics["zero_shot_loss"]  # it trained
    assert rec.wall_s >= rec.train_s > 0 and rec.peak_mem_bytes >= 0
    assert {"torch", "diffusers", "python"} <= set(rec.versions) and rec.host and rec.finished_at
    assert list((tmp_path / "work").iterdir()) == []  # the fine-tuning folder (denoiser, result.json) is gone
    json.dumps(rec.to_dict(), allow_nan=False)


def test_each_job_starts_from_pristine_weights(tiny_folder):
    """The per-process model cache hands every job an untouched copy: a job run after another one, and
    a job run without the cache, measure exactly the same losses."""
    job = ProfileJob(tiny_folder, "builtin:shapes_circles", "full", CFG, seed=3)
    other = ProfileJob(tiny_folder, "builtin:shapes_circles", "full", dict(CFG, steps=3, lr=1e-2), seed=4)
    first = run_job(job)
    between = run_job(other)  # trains the (copied) denoiser hard in between
    second = run_job(job)
    fresh = run_job(job, cache=False)
    assert first.ok and between.ok and between.metrics["heldout_loss"] != first.metrics["heldout_loss"]
    assert first.metrics == second.metrics == fresh.metrics


def test_failing_job_is_recorded_not_raised(tiny_folder):
    rec = run_job(ProfileJob("zoo:no-such-model", "builtin:shapes_circles", "full", CFG))
    assert rec.status == "failed" and not rec.ok
    assert rec.error.startswith("ModelRefError: unknown zoo model 'no-such-model'")
    assert rec.metrics == {} and rec.finished_at
    rec = run_job(ProfileJob(tiny_folder, "builtin:no_such_dataset", "full", CFG))
    assert rec.status == "failed" and "DatasetError" in rec.error
    rec = run_job(ProfileJob(tiny_folder, "builtin:shapes_circles", "full", {"stepz": 3}))
    assert rec.status == "failed" and "stepz" in rec.error
    rec = run_job(ProfileJob(tiny_folder, "builtin:shapes_circles", "no-such-method", CFG))
    assert rec.status == "failed" and "unknown fine-tuning method" in rec.error
    # failing fast: a zoo model that is not built yet is not built for a job that cannot run anyway
    from finetune.zoo import is_built

    rec = run_job(ProfileJob("zoo:unet-xs-gradients", "builtin:no_such_dataset", "full", CFG))
    assert rec.status == "failed" and not is_built("unet-xs-gradients")
    assert ProfileRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


def test_a_jobs_warmup_reaches_the_optimizer(tiny_folder):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    lrs = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    try:
        rec = run_job(ProfileJob(tiny_folder, "builtin:shapes_circles", "full", dict(CFG, steps=3, warmup_steps=2)))
    finally:
        handle.remove()
    assert rec.ok, rec.error
    assert lrs == pytest.approx([CFG["lr"] / 2, CFG["lr"], CFG["lr"]])
