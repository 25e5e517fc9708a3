"""The Ray executor against a real local Ray cluster (2 CPUs, 2 logical GPUs), started once for the module.

Jobs are the tiny ones of ``tests/profiler/jobs_tiny.py`` (~1 s each); failures are injected inside
jobs by the test-only methods of ``ray_test_methods.py``, which every Ray worker imports at start-up.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # jobs_tiny (tests/profiler) is not a package

import jobs_tiny  # noqa: E402
import ray  # noqa: E402
import ray_test_methods  # noqa: E402

from profiler.campaign import Campaign  # noqa: E402
from profiler.executors import LocalExecutor, RayExecutor, get_executor  # noqa: E402
from profiler.jobs import ProfileJob, oom_request_bytes  # noqa: E402

CFG = jobs_tiny.CFG


def _ray_temp_dir() -> str:
    """Ray's session folder inside the repo's .build (its AF_UNIX socket paths, ~70 characters below it,
    must stay under 107), or a short folder under /tmp when the checkout's path is too long."""
    root = HERE.parents[2] / ".build" / "ray"
    if len(str(root)) <= 32:
        root.mkdir(parents=True, exist_ok=True)
        return str(root)
    import tempfile

    return tempfile.mkdtemp(prefix="ray-", dir="/tmp")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster for this module; workers import ``ray_test_methods`` and share $MANDC_HOME."""
    base = tmp_path_factory.getbasetemp()
    pythonpath = os.pathsep.join([str(HERE), str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    ctx = ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _temp_dir=_ray_temp_dir(),
                   object_store_memory=80 * 2 ** 20, logging_level="warning", log_to_driver=False,
                   runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "MANDC_HOME": str(base / "mandc_home")},
                                "worker_process_setup_hook": "ray_test_methods.setup"})
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return jobs_tiny.tiny_folder(tmp_path_factory.getbasetemp())


def _job(folder, method="full", dataset="builtin:shapes_circles", seed=0, **extra):
    return ProfileJob(folder, dataset, method, {**CFG, **extra}, seed)


def _attempts(hook_dir: Path) -> list[str]:
    path = hook_dir / "attempts"
    return path.read_text().split() if path.exists() else []


def test_campaign_on_ray_matches_the_local_executor(cluster, tiny_folder, tmp_path):
    jobs = [_job(tiny_folder, dataset=d, seed=s) for d in ("builtin:shapes_circles", "builtin:gradients_linear")
            for s in (0, 1)]
    on_ray = Campaign(tmp_path / "ray").run(jobs, RayExecutor(num_cpus=1), progress=False)
    local = Campaign(tmp_path / "local").run(jobs, LocalExecutor(workers=1), progress=False)
    assert on_ray["ok"] == local["ok"] == 4 and on_ray["failed"] == 0

    def measured(camp):
        return {r.job_id: (r.status, r.metrics, r.versions.get("model")) for r in camp.records()}

    ray_recs, local_recs = measured(Campaign(tmp_path / "ray")), measured(Campaign(tmp_path / "local"))
    assert set(ray_recs) == {j.job_id for j in jobs}
    assert ray_recs == local_recs  # bit-identical held-out and zero-shot losses, same weights
    assert len({m["heldout_loss"] for _, m, _ in ray_recs.values()}) == 4
    from finetune.methods import METHODS

    assert "test-pause" not in METHODS  # the test methods live in the Ray workers only


def test_a_worker_killed_mid_job_is_retried_and_recorded_once(cluster, tiny_folder, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    job = _job(tiny_folder, "test-pause", hook_dir=str(hooks))
    killed = {}

    def killer():  # SIGKILL the worker once it is inside the job
        deadline = time.time() + 120
        while time.time() < deadline and not (hooks / "pid").exists():
            time.sleep(0.1)
        killed["pid"] = int((hooks / "pid").read_text())
        os.kill(killed["pid"], signal.SIGKILL)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    seen = []
    camp = Campaign(tmp_path / "c")

    class Spy(RayExecutor):  # what the campaign receives from the executor
        def map_unordered(self, fn, items):
            for item, result in super().map_unordered(fn, items):
                seen.append(result)
                yield item, result

    summary = camp.run([job], Spy(max_retries=2), progress=False)
    t.join(5)
    attempts = _attempts(hooks)
    assert len(attempts) == 2 and attempts[0] == str(killed["pid"]) != attempts[1]  # retried on a new worker
    assert len(seen) == 1 and isinstance(seen[0], dict)  # one result, not an error
    assert summary["ok"] == 1 and summary["ran"] == 1
    assert [p.name for p in camp.records_dir.iterdir()] == [f"{job.job_id}.json"]
    assert camp.read_record(job.job_id).ok


def test_a_job_failing_in_its_own_code_is_recorded_and_not_retried(cluster, tiny_folder, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    job = _job(tiny_folder, "test-broken", hook_dir=str(hooks))
    camp = Campaign(tmp_path / "c")
    summary = camp.run([job], RayExecutor(max_retries=3), progress=False)
    assert summary["failed"] == 1 and summary["ok"] == 0
    rec = camp.read_record(job.job_id)
    assert rec.status == "failed" and "RuntimeError: the method's own bug" in rec.error
    assert len(_attempts(hooks)) == 1  # ran once: the failure is a record, Ray saw a finished task
    again = Campaign(tmp_path / "c").run([job], RayExecutor(), progress=False)
    assert again["ran"] == 0 and len(_attempts(hooks)) == 1  # and a resumed campaign does not rerun it


def test_a_job_that_keeps_killing_its_worker_is_retried_max_retries_times(cluster, tiny_folder, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    job = _job(tiny_folder, "test-crash", hook_dir=str(hooks))
    camp = Campaign(tmp_path / "c")
    summary = camp.run([job], RayExecutor(max_retries=1), progress=False)
    assert summary["failed"] == 1 and len(_attempts(hooks)) == 2  # the first run and one retry, then given up
    assert camp.read_record(job.job_id).error.startswith("worker failed: ")


def test_out_of_memory_is_recorded_as_did_not_fit(cluster, tiny_folder, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    job = _job(tiny_folder, "test-oom", hook_dir=str(hooks))
    camp = Campaign(tmp_path / "c")
    summary = camp.run([job], RayExecutor(), progress=False)
    assert summary["did_not_fit"] == 1 and summary["failed"] == 0 and summary["ok"] == 0
    rec = camp.read_record(job.job_id)
    assert rec.status == "did_not_fit" and rec.did_not_fit and "OutOfMemoryError: CUDA out of memory" in rec.error
    # the memory it asked for: no CUDA allocator on this machine, so 0 in use + the 1.5 GiB request
    assert rec.metrics == {"oom_request_bytes": float(ray_test_methods.OOM_REQUEST)}
    assert rec.peak_mem_bytes == ray_test_methods.OOM_REQUEST
    assert len(_attempts(hooks)) == 1
    assert oom_request_bytes("Tried to allocate 20.00 MiB") == 20 * 2 ** 20 and oom_request_bytes("oom") == 0

    # the store keeps it as history; the graph gets no performance edge from it
    from mandc.store import Store

    with Store(tmp_path / "graph.sqlite") as store:
        before = store.graph()
        model, dataset = before.models[0], before.profiled[0]
        d = rec.to_dict()
        d["job"] = {**d["job"], "model": model, "dataset": dataset}
        d["job_id"] = ProfileJob.from_dict(d["job"]).job_id
        assert store.add_records([d]) == 1
        assert d["job_id"] in {r["job_id"] for r in store.records()}
        after = store.graph()
        assert d["job_id"] not in after.runs(dataset).get(model, [])
        assert after.runs(dataset) == before.runs(dataset)


def test_results_stream_as_they_finish_on_their_own_gpu(cluster, tmp_path):
    """The slow task waits for a file that the test writes only after the fast task's result came back:
    an executor that returned results only at the end would leave it waiting until its timeout."""
    ex = RayExecutor(num_cpus=1)
    assert ex.gpus_per_task() == 1  # the cluster has GPUs: one per job by default
    release = tmp_path / "release"
    got = []
    for item, result in ex.map_unordered(ray_test_methods.stamp, [{"wait_for": str(release), "timeout": 60},
                                                                  {"id": "fast"}]):
        got.append((item, result))
        release.touch()
    (first, r1), (second, r2) = got
    assert first == {"id": "fast"} and "wait_for" in second  # completion order, not submission order
    assert r2["released"]  # the fast result came back while the slow task was still running
    assert {tuple(r1["gpu_ids"]), tuple(r2["gpu_ids"])} == {("0",), ("1",)}  # each task its own GPU
    assert sorted([r1["cuda_visible"], r2["cuda_visible"]]) == ["0", "1"]


def test_executor_options_and_the_profile_command(cluster, tiny_folder, tmp_path):
    ex = get_executor("ray", address="auto", num_gpus=0, workers=1)
    assert ex.gpus_per_task() == 0 and ex.max_in_flight == 1 and "ray on auto" in ex.describe()
    for bad in ({"num_gpus": -1}, {"num_cpus": 0}, {"max_retries": -1}):
        with pytest.raises(ValueError):
            RayExecutor(**bad)

    from typer.testing import CliRunner

    from mandc.cli import app

    gcs = cluster.address_info["gcs_address"]
    res = CliRunner().invoke(app, ["profile", "--models", tiny_folder, "--datasets", "builtin:shapes_circles",
                                   "--steps", "2", "--executor", "ray", "--address", gcs, "--gpus-per-job", "1",
                                   "--campaign-dir", str(tmp_path / "c"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["summary"]["ok"] == 1 and out["records"][0]["status"] == "ok"
    bad = CliRunner().invoke(app, ["profile", "--models", tiny_folder, "--datasets", "builtin:shapes_circles",
                                   "--executor", "local", "--gpus-per-job", "1"])
    assert bad.exit_code == 2 and "--gpus-per-job" in bad.output
