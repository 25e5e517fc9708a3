"""``ray``: one Ray task per job, on a local Ray instance or a cluster (``pip install mandc[ray]``).

Ray is imported lazily, so the rest of the profiler works without it. If Ray is not initialised yet,
``ray.init(address)`` is called (``address=None`` starts a local instance; ``"auto"`` joins a running
cluster). Each task reserves ``num_cpus`` CPUs (and ``num_gpus`` GPUs) and runs torch on that many
threads. The job function and the jobs are plain Python/JSON, so Ray pickles them by value.
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
    """Ray tasks with ``num_cpus``/``num_gpus`` each; at most ``max_in_flight`` submitted at once
    (default: as many as the cluster's CPUs/GPUs can run at once, so items are drawn lazily, as tasks
    finish, like the local pool)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 max_in_flight: int | None = None, init_kwargs: dict | None = None, workers: int | None = None):
        self.ray = _import_ray()
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        # `workers` (the CLI's --workers) caps the tasks in flight, like the local pool's size
        self.max_in_flight = max_in_flight if max_in_flight is not None else workers
        self.init_kwargs = dict(init_kwargs or {})

    def describe(self) -> str:
        return f"ray: tasks of {self.num_cpus} CPU / {self.num_gpus} GPU"

    def _capacity(self) -> int:
        """Tasks the cluster can run at once with this executor's per-task resources."""
        res = self.ray.cluster_resources()
        n = int(res.get("CPU", 1) // self.num_cpus) if self.num_cpus else 1 << 30
        if self.num_gpus:
            n = min(n, int(res.get("GPU", 0) // self.num_gpus))
        return max(1, n)

    def map_unordered(self, fn: Callable[[dict], object], items: Iterable[dict]) -> Iterator[tuple[dict, object]]:
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address, **{"include_dashboard": False, **self.init_kwargs})
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_call_with_threads)
        threads = max(1, int(self.num_cpus))
        items = iter(items)
        running = {}

        def submit_next() -> bool:
            item = next(items, None)
            if item is None:
                return False
            running[remote.remote(fn, item, threads)] = item
            return True

        limit = self.max_in_flight or self._capacity()
        while len(running) < limit and submit_next():
            pass
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                item = running.pop(ref)
                try:
                    result = ray.get(ref)
                except BaseException as e:  # noqa: BLE001 — a lost task or worker: report, go on
                    result = e
                yield item, result
                submit_next()
