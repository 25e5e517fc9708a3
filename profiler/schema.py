"""The profiling schema: a :class:`ProfileJob` (what to measure) and its :class:`ProfileRecord` (what was
measured), both plain JSON so any executor can ship them to any process or machine, and the job's id.

No torch, no diffusers: executors, campaigns and the matching-graph store read and write these without
loading a model. The worker that turns a job into a record is :func:`profiler.jobs.run_job`.

**Statuses** (:data:`STATUSES`) of a record:

- ``"ok"``: measured; ``metrics`` holds ``heldout_loss`` and ``zero_shot_loss``. Only these become
  performance edges of the matching graph.
- ``"failed"``: the job's own failure (a bad model ref, a dataset error, a crash or NaN in training) or a
  lost worker; ``error`` says which.
- ``"did_not_fit"``: training ran out of device memory (``torch.OutOfMemoryError``). Not a performance
  measurement (the graph and the store's graph ignore it) but a memory one: ``peak_mem_bytes`` is the
  memory the job asked for — the device bytes allocated when the failing allocation was attempted plus
  that request, a lower bound of its peak (weights included) — and ``metrics["oom_request_bytes"]`` the
  failing request alone (0 when the error did not say); ``error`` keeps the allocator's message.
"""
from __future__ import annotations

import hashlib
import json
import platform
import socket
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from data.io import canonical_json  # what ProfileJob.job_id hashes

STATUSES = ("ok", "failed", "did_not_fit")
#: why a job was run: ``"profile"`` (a measurement at the budget it names: a performance edge of the graph)
#: or ``"probe"`` (a short fine-tune that chooses between candidates, ``mandc.probing``: kept as history,
#: never a performance edge, since its loss is on another budget's scale)
PURPOSES = ("profile", "probe")


@dataclass
class ProfileJob:
    """One (model, dataset, method, budget, seed) to profile.

    ``config`` holds method-config overrides (``{"steps": 20, "batch_size": 8, "lr": 3e-4,
    "warmup_steps": 5}``); ``seed`` is the fine-tuning seed (so ``config`` may not hold one).
    """

    model: str
    dataset: str
    method: str = "full"
    config: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("model", "dataset", "method"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"ProfileJob.{name} must be a non-empty string, got {v!r}")
        if not isinstance(self.config, dict):
            raise ValueError(f"ProfileJob.config must be a dict of method options, got {type(self.config).__name__}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ProfileJob.seed must be an integer ≥ 0, got {self.seed!r}")
        if "seed" in self.config:
            raise ValueError("ProfileJob.config must not contain 'seed': use ProfileJob.seed")
        try:
            canonical_json(self.config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"ProfileJob.config must be plain JSON (finite numbers, strings, lists, dicts): {e}") from None

    def to_dict(self) -> dict:
        return {"model": self.model, "dataset": self.dataset, "method": self.method,
                "config": json.loads(canonical_json(self.config)), "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileJob":
        if not isinstance(d, dict):
            raise ValueError(f"a ProfileJob must be a JSON object, got {type(d).__name__}")
        known = {"model", "dataset", "method", "config", "seed"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ProfileJob has no field(s) {', '.join(unknown)}; fields: {', '.join(sorted(known))}")
        missing = sorted({"model", "dataset"} - set(d))
        if missing:
            raise ValueError(f"ProfileJob is missing field(s) {', '.join(missing)}")
        return cls(**d)

    @property
    def pair_key(self) -> str:
        """The canonical JSON of the job without its seed: jobs with the same key differ only in the
        fine-tuning seed (and, for :data:`profiler.jobs.SEED_FREE_ZERO_SHOT` methods, share the zero-shot loss)."""
        d = self.to_dict()
        d.pop("seed")
        return canonical_json(d)

    @property
    def job_id(self) -> str:
        """First 16 hex digits of the SHA-256 of :func:`canonical_json` of :meth:`to_dict`: the same job
        has the same id on every machine and in every Python version."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:16]


@dataclass
class ProfileRecord:
    """The measured outcome of one :class:`ProfileJob` (the metrics: :mod:`profiler.jobs`; the statuses:
    this module's docstring).

    ``peak_mem_bytes`` is ``finetune.run``'s training peak above the footprint at its start: with the
    per-process model cache the model is already resident then, so it counts training state and
    activations but not the weights; on CPU it is peak RSS, which in a reused worker can reuse memory
    freed by earlier jobs — memory figures for reports come from fresh processes
    (``benchmarks/finetune_memory.py``), not from profiling campaigns.
    ``wall_s`` is the whole job (load, fine-tune, evaluate); ``train_s`` the optimizer steps only.
    """

    job_id: str
    job: ProfileJob
    status: str
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    peak_mem_bytes: int = 0
    wall_s: float = 0.0
    train_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    host: str = ""
    finished_at: str = ""
    purpose: str = "profile"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"ProfileRecord.status must be one of {STATUSES}, got {self.status!r}")
        if self.purpose not in PURPOSES:
            raise ValueError(f"ProfileRecord.purpose must be one of {PURPOSES}, got {self.purpose!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def did_not_fit(self) -> bool:
        return self.status == "did_not_fit"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["job"] = self.job.to_dict()
        if d["purpose"] == "profile":  # the default is left out: records written before the field are unchanged
            del d["purpose"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileRecord":
        if not isinstance(d, dict) or "job" not in d or "job_id" not in d:
            raise ValueError("a ProfileRecord must be a JSON object with at least 'job_id' and 'job'")
        kw = dict(d)
        kw["job"] = ProfileJob.from_dict(kw["job"])
        unknown = sorted(set(kw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"ProfileRecord has no field(s) {', '.join(unknown)}")
        rec = cls(**kw)
        if rec.job.job_id != rec.job_id:
            raise ValueError(f"ProfileRecord {rec.job_id}: its job hashes to {rec.job.job_id}; the record was edited "
                             "or written by an incompatible version")
        return rec


def describe_error(e: BaseException) -> str:
    """``"Type: message (at file:line in function)"``: a traceback's last line and where it was raised."""
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0] if msg else ''}".rstrip(": ")
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        f = frames[-1]
        text += f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return text


def hostname() -> str:
    """This machine's name, for :attr:`ProfileRecord.host`."""
    return socket.gethostname() or platform.node()


def utc_now() -> str:
    """The current UTC time to the second, ISO 8601, for :attr:`ProfileRecord.finished_at`."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def light_versions() -> dict[str, str]:
    """Versions without importing anything new (a failed job may have failed before torch loaded)."""
    import sys

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


__all__ = ["PURPOSES", "STATUSES", "ProfileJob", "ProfileRecord", "canonical_json", "describe_error", "hostname", "light_versions",
           "utc_now"]
