"""``local``: a pool of worker processes on this machine (``concurrent.futures.ProcessPoolExecutor``).

- **spawn**, not fork: a forked child inherits the parent's torch/OpenMP thread pools and any CUDA
  context in an undefined state; a spawned worker starts clean and imports what the job needs once.
  Workers live for the whole campaign, so each pays the ~5-10 s import of torch and diffusers once and
  then keeps its per-process caches (loaded model, datasets, caption embeddings: see
  :mod:`profiler.jobs`) across jobs.
- **workers = os.cpu_count()** by default, each running torch on **one thread**. Jobs are independent
  and many (704 in the reference campaign), so parallelism across jobs scales with the cores without
  any synchronisation, while intra-op threads on the zoo's small kernels (≤ 9M parameters, 32×32
  images, batch 16: convolutions of 8-192 channels, attention over ≤ 256 tokens) split work too small
  to scale well and pay a barrier per op. One thread per worker also avoids oversubscription:
  N workers × N OpenMP threads on N cores made single steps many times slower on this machine
  (see ``tests/conftest.py``). ``threads_per_worker`` overrides it (e.g. 1 worker with all threads on
  a GPU machine, where the device does the work).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from profiler.executors.base import Executor


def _exit_with_parent_(parent_pid: int) -> None:
    """Make this worker exit when the campaign process dies, even by SIGKILL (no cleanup runs there).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel kill it with its parent. Everywhere (and
    in case the parent died before the call): a daemon thread polls ``os.getppid()`` every second and
    ``os._exit``s once the parent is gone (re-parented to init or a subreaper). The resource tracker
    then sees its pipe close and exits too.
    """
    import signal
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="mandc-parent-watch", daemon=True).start()


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    """Runs once in each worker before any job: exit with the parent, pin torch's thread pools (before
    torch starts them)."""
    if parent_pid is not None:
        _exit_with_parent_(parent_pid)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (the pool re-uses a process that ran torch before)
        pass


class LocalExecutor(Executor):
    """``workers`` spawned processes (default ``os.cpu_count()``), ``threads_per_worker`` torch threads each.

    At most ``workers`` jobs are submitted at a time (more would only queue inside the pool), so a
    killed campaign loses at most the jobs that were running.
    """

    name = "local"

    def __init__(self, workers: int | None = None, threads_per_worker: int = 1):
        workers = (os.cpu_count() or 1) if workers is None else workers
        if workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {workers}")
        if threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be ≥ 1, got {threads_per_worker}")
        self.workers, self.threads = int(workers), int(threads_per_worker)

    def describe(self) -> str:
        return f"local: {self.workers} worker process{'es' if self.workers > 1 else ''} × {self.threads} thread"

    def map_unordered(self, fn: Callable[[dict], object], items: Iterable[dict]) -> Iterator[tuple[dict, object]]:
        items = iter(items)
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(self.threads, os.getpid())) as pool:
            running = {}

            def submit_next() -> bool:
                item = next(items, None)
                if item is None:
                    return False
                running[pool.submit(fn, item)] = item
                return True

            for _ in range(self.workers):
                if not submit_next():
                    break
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    item = running.pop(fut)
                    try:
                        result = fut.result()
                    except BaseException as e:  # noqa: BLE001 — e.g. BrokenProcessPool: report, go on
                        result = e
                    yield item, result
                    submit_next()
