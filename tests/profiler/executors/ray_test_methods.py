"""Test-only fine-tuning methods for the Ray executor tests (never imported by the product).

The Ray test cluster calls :func:`setup` in every worker (``worker_process_setup_hook``), which
registers the methods below in ``finetune.methods`` there (only there: the test process's registry,
which other tests parametrize over, stays as the product has it); a job names one as its ``method`` and its
``hook_dir`` option, so the failure happens *inside the job*, on the real code path of
:func:`profiler.jobs.run_job` → ``finetune.run`` → ``Method.step``. Every attempt appends the worker's
pid to ``hook_dir/attempts``.

- ``test-pause``: the first attempt writes its pid to ``hook_dir/pid`` and waits to be killed (the test
  sends SIGKILL); a later attempt (Ray's retry) trains like ``full``.
- ``test-crash``: every attempt kills its own worker process (SIGKILL), as a segfault would.
- ``test-broken``: the job's own code fails (``RuntimeError`` in the first step).
- ``test-oom``: the first step raises ``torch.OutOfMemoryError`` with CUDA's allocator message, as a
  batch that does not fit the GPU would (on a CPU machine there is no CUDA allocator to exhaust).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.methods import METHODS, register
from finetune.methods.base import option
from finetune.methods.full import Full, FullConfig

#: What ``test-oom`` raises: CUDA's message for a 1.5 GiB request on a nearly full 8 GiB device.
OOM_MESSAGE = ("CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 7.79 GiB of which "
               "1.06 GiB is free. Of the allocated memory 6.12 GiB is allocated by PyTorch")
OOM_REQUEST = 3 * 2 ** 29  # 1.50 GiB


@dataclass
class HookConfig(FullConfig):
    hook_dir: str = option("", "folder where the test hook keeps its pid and attempt files")


class _Hooked(Full):
    Config = HookConfig

    def _attempt(self) -> Path:
        folder = Path(self.config.hook_dir)
        with open(folder / "attempts", "a") as f:
            f.write(f"{os.getpid()}\n")
        return folder


class Pause(_Hooked):
    name = "test-pause"

    def setup_(self) -> None:
        super().setup_()
        folder = self._attempt()
        if not (folder / "pid").exists():
            (folder / "pid.tmp").write_text(str(os.getpid()))
            os.replace(folder / "pid.tmp", folder / "pid")
            time.sleep(120)  # killed long before


class Crash(_Hooked):
    name = "test-crash"

    def setup_(self) -> None:
        self._attempt()
        os.kill(os.getpid(), 9)


class Broken(_Hooked):
    name = "test-broken"

    def step(self, data, g):
        self._attempt()
        raise RuntimeError("the method's own bug")


class OutOfMemory(_Hooked):
    name = "test-oom"

    def step(self, data, g):
        self._attempt()
        raise torch.OutOfMemoryError(OOM_MESSAGE)


def setup() -> None:
    """Register the methods (idempotent): the Ray workers' setup hook."""
    for cls in (Pause, Crash, Broken, OutOfMemory):
        if cls.name not in METHODS:
            register(cls)


def stamp(item: dict) -> dict:
    """An executor function: wait until the file ``item["wait_for"]`` exists (at most ``item["timeout"]``
    s; no file named: return at once), then say whether it appeared and which GPU Ray gave the task."""
    import ray

    deadline = time.time() + item.get("timeout", 0)
    released = "wait_for" not in item
    while not released and time.time() < deadline:
        released = os.path.exists(item["wait_for"])
        time.sleep(0.05)
    return {"released": released, "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
