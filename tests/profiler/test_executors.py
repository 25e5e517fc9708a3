"""The local executor directly (no campaign, no model): spawned workers, one torch thread each, every item
answered once, an exception in a job yielded as its result, at most ``workers`` processes."""
from __future__ import annotations

import os

import pytest

from profiler.executors import LocalExecutor


def _probe(item: dict) -> dict:
    """Runs in a worker: what the worker looks like, or an error for a negative item."""
    import torch

    if item["i"] < 0:
        raise ValueError(f"bad item {item['i']}")
    return {"i": item["i"], "pid": os.getpid(), "threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS")}


def test_local_executor_answers_every_item_in_spawned_single_thread_workers():
    items = [{"i": i} for i in range(5)] + [{"i": -1}]
    out = list(LocalExecutor(workers=2).map_unordered(_probe, iter(items)))
    assert sorted(item["i"] for item, _ in out) == sorted(x["i"] for x in items)  # each once, any order
    results = {item["i"]: res for item, res in out}
    assert isinstance(results[-1], ValueError) and "bad item -1" in str(results[-1])
    ok = [results[i] for i in range(5)]
    assert all(r["i"] == i for i, r in enumerate(ok))
    assert all(r["pid"] != os.getpid() and r["threads"] == 1 and r["omp"] == "1" for r in ok)
    assert 1 <= len({r["pid"] for r in ok}) <= 2  # the pool's processes, reused across jobs


def test_local_executor_with_nothing_to_do_and_bad_settings():
    assert list(LocalExecutor(workers=1).map_unordered(_probe, [])) == []
    with pytest.raises(ValueError, match="threads_per_worker"):
        LocalExecutor(workers=1, threads_per_worker=0)
    assert "2 worker processes" in LocalExecutor(workers=2).describe()
