"""``ray``: one Ray task per job, on a local Ray instance or a cluster (``pip install mandc[ray]``).

Ray is imported lazily, so the rest of the profiler works without it. If Ray is not initialised yet,
``ray.init(address)`` is called (``address=None`` starts a local instance; ``"auto"`` or
``"HOST:6379"`` joins a running cluster, e.g. one started with ``ray start --head``). Each task reserves
``num_cpus`` CPUs and ``num_gpus`` GPUs (default: one GPU when the cluster has any, else none; Ray sets
``CUDA_VISIBLE_DEVICES`` so the job sees only its own) and runs torch on ``num_cpus`` threads. The job
function and the jobs are plain Python/JSON, so Ray pickles them by value.

**Failures.** A job's own failure (and running out of device memory) is a record returned by the task
(:func:`profiler.jobs.run_job`), so Ray never retries it. A task whose *worker process* dies — killed
(SIGKILL, the OOM killer), or lost with its node — is retried by Ray up to ``max_retries`` times on a
fresh worker; the retry returns the one record of the job. A task that still fails after that is yielded
as an exception and the campaign records the job as failed.

**Workers are reused** across jobs (``max_calls=0``; Ray's default for GPU tasks is a fresh process per
task), so each worker pays the ~5-10 s import of torch and diffusers once and keeps its per-process
caches (:mod:`profiler.jobs`), as in the local pool; ``reuse_workers=False`` restores Ray's default.

**Streaming.** Results come back in completion order (``ray.wait(num_returns=1)``), and at most
``max_in_flight`` tasks are submitted at once (default: what the cluster can run at once), so a
campaign writes each record the moment its job finishes and draws the next job lazily.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from profiler.executors.base import Executor


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("the 'ray' executor needs Ray, which is not installed: pip install mandc[ray] "
                          f"(or use --executor local). ({e})") from None
    return ray


def _call_with_threads(fn, item, threads: int):
    import torch

    torch.set_num_threads(threads)
    return fn(item)


class RayExecutor(Executor):
    """Ray tasks of ``num_cpus`` CPUs and ``num_gpus`` GPUs each (``None``: one GPU if the cluster has
    GPUs, else none); a task whose worker died is retried ``max_retries`` times; workers are reused
    unless ``reuse_workers=False``; at most
    ``max_in_flight`` tasks submitted at once (default: as many as the cluster's CPUs/GPUs can run at
    once, so items are drawn lazily, as tasks finish, like the local pool)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float | None = None,
                 max_in_flight: int | None = None, init_kwargs: dict | None = None, workers: int | None = None,
                 max_retries: int = 3, reuse_workers: bool = True):
        if num_cpus <= 0:
            raise ValueError(f"num_cpus must be > 0, got {num_cpus}")
        if num_gpus is not None and num_gpus < 0:
            raise ValueError(f"num_gpus (--gpus-per-job) must be ≥ 0, got {num_gpus}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be ≥ 0, got {max_retries}")
        self.ray = _import_ray()
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        # `workers` (the CLI's --workers) caps the tasks in flight, like the local pool's size
        self.max_in_flight = max_in_flight if max_in_flight is not None else workers
        self.init_kwargs = dict(init_kwargs or {})
        self.max_retries = int(max_retries)
        self.reuse_workers = bool(reuse_workers)

    def describe(self) -> str:
        gpus = "1 GPU if any" if self.num_gpus is None else f"{self.num_gpus} GPU"
        where = f" on {self.address}" if self.address else ""
        return f"ray{where}: tasks of {self.num_cpus} CPU / {gpus}"

    def _connect(self) -> None:
        if not self.ray.is_initialized():
            self.ray.init(address=self.address, **{"include_dashboard": False, **self.init_kwargs})

    def gpus_per_task(self) -> float:
        """``num_gpus``, or (``None``) 1 when the cluster has a GPU and 0 when it has none."""
        if self.num_gpus is not None:
            return self.num_gpus
        return 1 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0

    def _capacity(self, num_gpus: float) -> int:
        """Tasks the cluster can run at once with this executor's per-task resources."""
        res = self.ray.cluster_resources()
        n = int(res.get("CPU", 1) // self.num_cpus)
        if num_gpus:
            n = min(n, int(res.get("GPU", 0) // num_gpus))
        return max(1, n)

    def map_unordered(self, fn: Callable[[dict], object], items: Iterable[dict]) -> Iterator[tuple[dict, object]]:
        ray = self.ray
        self._connect()
        num_gpus = self.gpus_per_task()
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=num_gpus, max_retries=self.max_retries,
                            retry_exceptions=False, max_calls=0 if self.reuse_workers else 1)(_call_with_threads)
        threads = max(1, int(self.num_cpus))
        items = iter(items)
        running = {}

        def submit_next() -> bool:
            item = next(items, None)
            if item is None:
                return False
            running[remote.remote(fn, item, threads)] = item
            return True

        limit = self.max_in_flight or self._capacity(num_gpus)
        try:
            while len(running) < limit and submit_next():
                pass
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    item = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 — a task lost after its retries: report, go on
                        result = e
                    yield item, result
                    submit_next()
        finally:  # the campaign stopped early (interrupted, or an error writing a record): stop its tasks
            for ref in running:
                ray.cancel(ref, force=True)
