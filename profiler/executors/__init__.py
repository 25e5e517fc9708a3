"""Executors: run many profiling jobs, locally in a process pool or on a Ray cluster.

An executor is a small class with ``map_unordered(fn, items)``: it calls the picklable callable
``fn(item)`` on every plain-JSON item (a campaign's item is a job plus what is known for it) and yields
``(item, result)`` pairs **as they finish**, in completion order, so a campaign can write each record the
moment it exists. Items are drawn from the iterable lazily, as workers free up. ``fn`` must not raise for a job's own
failure (:func:`profiler.jobs.run_job` records failures instead); an exception that does escape (a worker
process killed by the OOM killer, a Ray task lost with its node) is yielded as the result, an instance of
:class:`BaseException`, and the campaign records the job as failed.

Registry (one seam per concern, like fine-tuning methods)::

    EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}
    get_executor("local", workers=2)
"""
from __future__ import annotations

import difflib

from profiler.executors.base import Executor
from profiler.executors.local import LocalExecutor
from profiler.executors.ray import RayExecutor

EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "ray": RayExecutor}


def get_executor(name: str, **kwargs) -> Executor:
    """The executor called ``name``, constructed with ``kwargs`` (e.g. ``workers=2``)."""
    if name not in EXECUTORS:
        close = difflib.get_close_matches(name, list(EXECUTORS), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown executor {name!r}.{hint} Known: {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**kwargs)


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "get_executor"]
