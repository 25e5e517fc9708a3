"""Campaigns: resume after an interruption, failures recorded, atomic record files, executors."""
from __future__ import annotations

import json
import os

import jobs_tiny
import pytest

from profiler.campaign import Campaign
from profiler.executors import EXECUTORS, Executor, LocalExecutor, get_executor
from profiler.jobs import ProfileJob

CFG = jobs_tiny.CFG


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A very small pipeline saved as a local diffusers folder (a model ref like any other)."""
    return jobs_tiny.tiny_folder(tmp_path_factory.getbasetemp())


class InlineExecutor(Executor):
    """Runs jobs in this process, in order (test double: no process start-up). Counts what it ran and
    can stop after ``stop_after`` jobs, like a campaign killed mid-way."""

    name = "inline"

    def __init__(self, stop_after: int | None = None):
        self.ran: list[str] = []
        self.items: list[dict] = []
        self.stop_after = stop_after

    def map_unordered(self, fn, items):
        for item in items:
            if self.stop_after is not None and len(self.ran) >= self.stop_after:
                raise KeyboardInterrupt("campaign killed")
            self.ran.append(ProfileJob.from_dict(item["job"]).job_id)
            self.items.append(item)
            yield item, fn(item)


def _jobs(folder, datasets=("builtin:shapes_circles", "builtin:gradients_linear"), seeds=(0, 1)):
    return [ProfileJob(folder, d, "full", dict(CFG), s) for d in datasets for s in seeds]


def test_interrupted_campaign_resumes_without_rerunning(tiny_folder, tmp_path):
    jobs = _jobs(tiny_folder)
    camp = Campaign(tmp_path / "camp")
    killed = InlineExecutor(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        camp.run(jobs, killed, progress=False)
    assert len(killed.ran) == 2
    done = {r.job_id: r for r in camp.records()}
    assert set(done) == set(killed.ran)  # records appear as jobs finish, before the campaign ends
    assert not (tmp_path / "camp" / "work").exists()
    stamps = {j: os.stat(camp.record_path(j)).st_mtime_ns for j in done}

    # jobs run model-major, then seed-major: the two that finished are the seed-0 ones
    seed1 = [j for j in jobs if j.seed == 1]
    assert set(killed.ran) == {j.job_id for j in jobs if j.seed == 0}
    assert camp.pending(jobs) == seed1
    again = InlineExecutor()
    summary = camp.run(jobs + jobs[:1], again, progress=False)  # a duplicate job is run once
    assert sorted(again.ran) == sorted(j.job_id for j in seed1)  # finished jobs were NOT re-run
    assert summary["jobs"] == 4 and summary["skipped"] == 2 and summary["ran"] == 2 and summary["ok"] == 2
    assert {j: os.stat(camp.record_path(j)).st_mtime_ns for j in done} == stamps  # untouched
    assert camp.pending(jobs) == []
    third = InlineExecutor()
    assert camp.run(jobs, third, progress=False)["ran"] == 0 and third.ran == []


def test_second_seed_reuses_the_zero_shot_loss_exactly(tiny_folder, tmp_path):
    """A pair's second seed gets the first seed's zero-shot loss instead of measuring it again, and its
    record is bit-identical to one measured in full."""
    from profiler.jobs import run_job

    jobs = _jobs(tiny_folder, datasets=("builtin:shapes_circles",))
    ex = InlineExecutor()
    camp = Campaign(tmp_path / "c")
    camp.run(jobs, ex, progress=False)
    first, second = (camp.read_record(j.job_id) for j in jobs)
    assert ex.items[0]["zero_shot_loss"] is None
    assert ex.items[1]["zero_shot_loss"] == first.metrics["zero_shot_loss"]
    assert second.metrics == run_job(jobs[1]).metrics  # measured in full: the same numbers
    assert second.metrics["heldout_loss"] != first.metrics["heldout_loss"]


def test_records_of_other_weights_are_redone(tiny_folder, tmp_path):
    """A rebuilt model (same ref, other weights) makes its old records stale: they run again."""
    import shutil

    from profiler.jobs import model_fingerprint

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    job = ProfileJob(str(folder), "builtin:shapes_circles", "full", dict(CFG))
    camp = Campaign(tmp_path / "c")
    camp.run([job], InlineExecutor(), progress=False)
    fp = camp.read_record(job.job_id).versions["model"]
    assert fp == model_fingerprint(str(folder)) and camp.pending([job]) == []
    weights = next((folder / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # the last weight becomes 1.0
    assert model_fingerprint(str(folder)) != fp
    assert camp.pending([job]) == [job]
    again = InlineExecutor()
    camp.run([job], again, progress=False)
    assert again.ran == [job.job_id] and camp.read_record(job.job_id).versions["model"] != fp


def test_failing_job_is_recorded_and_others_finish(tiny_folder, tmp_path):
    bad = ProfileJob("zoo:no-such-model", "builtin:shapes_circles", "full", dict(CFG))
    jobs = [*_jobs(tiny_folder, datasets=("builtin:shapes_circles",), seeds=(0,)), bad,
            *_jobs(tiny_folder, datasets=("builtin:gradients_linear",), seeds=(0,))]
    camp = Campaign(tmp_path / "camp")
    summary = camp.run(jobs, InlineExecutor(), progress=False, group_by_model=False)
    assert summary["ok"] == 2 and summary["failed"] == 1
    assert summary["failed_jobs"][0]["job_id"] == bad.job_id
    rec = camp.read_record(bad.job_id)
    assert rec.status == "failed" and "unknown zoo model 'no-such-model'" in rec.error
    assert len(camp.records("ok")) == 2
    # failed jobs are skipped on resume unless asked to retry
    assert camp.pending(jobs) == []
    assert [j.job_id for j in camp.pending(jobs, retry_failed=True)] == [bad.job_id]
    retry = InlineExecutor()
    Campaign(tmp_path / "camp", retry_failed=True).run(jobs, retry, progress=False)
    assert retry.ran == [bad.job_id]
    # export: ok records by default, one JSON object per line
    n = camp.export_jsonl(tmp_path / "records.jsonl")
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert n == len(lines) == 2 and all(json.loads(x)["status"] == "ok" for x in lines)
    assert camp.export_jsonl(tmp_path / "all.jsonl", include_failed=True) == 3


def test_a_dead_worker_is_recorded_as_a_failed_job(tiny_folder, tmp_path):
    class DyingExecutor(Executor):
        def map_unordered(self, fn, items):
            for item in items:
                yield item, RuntimeError("worker process died (killed by signal 9)")

    jobs = _jobs(tiny_folder, datasets=("builtin:shapes_circles",), seeds=(0,))
    summary = Campaign(tmp_path / "c").run(jobs, DyingExecutor(), progress=False)
    assert summary["failed"] == 1
    assert summary["failed_jobs"][0]["error"].startswith("worker failed: RuntimeError: worker process died")


def test_unreadable_record_counts_as_missing(tiny_folder, tmp_path, capsys):
    job = _jobs(tiny_folder, datasets=("builtin:shapes_circles",), seeds=(0,))[0]
    camp = Campaign(tmp_path / "c")
    camp.record_path(job.job_id).parent.mkdir(parents=True)
    camp.record_path(job.job_id).write_text('{"job_id": "trunc')
    assert camp.pending([job]) == [job] and camp.records() == []
    assert "unreadable record" in capsys.readouterr().err


def test_local_executor_runs_jobs_in_spawned_workers(tiny_folder, tmp_path):
    """The real process pool (spawn, one torch thread), with a good and a failing job."""
    jobs = [*_jobs(tiny_folder, datasets=("builtin:shapes_circles",), seeds=(0,)),
            ProfileJob("zoo:no-such-model", "builtin:shapes_circles", "full", dict(CFG))]
    ex = LocalExecutor(workers=1)
    assert ex.threads == 1 and "1 worker process" in ex.describe()
    summary = Campaign(tmp_path / "c").run(jobs, ex, progress=True)
    assert summary["ok"] == 1 and summary["failed"] == 1


def test_executor_registry_and_errors():
    assert set(EXECUTORS) == {"local", "ray"}
    assert get_executor("local").workers == (os.cpu_count() or 1)
    assert get_executor("local", workers=3).workers == 3
    with pytest.raises(ValueError, match="unknown executor 'locale'.*Did you mean local"):
        get_executor("locale")
    with pytest.raises(ValueError, match="workers"):
        LocalExecutor(workers=0)


def test_profile_command_options():
    from profiler.profile_cmd import build_jobs, parse_list, parse_seeds
    from profiler.reference import budget

    assert parse_list(" zoo:a, zoo:b,,zoo:a ", "--models") == ["zoo:a", "zoo:b"]
    assert parse_seeds("0,1") == [0, 1] and parse_seeds("3") == [3]
    for bad in ("", "x", "-1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    jobs = build_jobs(["zoo:a", "zoo:b"], ["builtin:x"], seeds=[0, 1])
    assert [(j.model, j.seed) for j in jobs] == [("zoo:a", 0), ("zoo:a", 1), ("zoo:b", 0), ("zoo:b", 1)]
    assert jobs[0].config == budget()  # the full method profiles with the reference budget: records compare
    assert build_jobs(["zoo:a"], ["builtin:x"], "lora", steps=5)[0].config == {"steps": 5}
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        build_jobs(["zoo:a"], ["builtin:x"], "nope")
