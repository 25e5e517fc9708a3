"""Profiling jobs: fine-tune one model on one dataset with a fixed budget, and measure the outcome.

A :class:`ProfileJob` is a plain-JSON spec — model ref, dataset ref, method, method-config overrides, seed —
so any executor can ship it to any process or machine; :func:`run_job` turns it into a
:class:`ProfileRecord` (plain JSON too)::

    job = ProfileJob("zoo:unet-s-broad", "builtin:shapes_circles", "full", {"steps": 30, "lr": 3e-4}, seed=0)
    rec = run_job(job)
    rec.status, rec.metrics["heldout_loss"], rec.metrics["zero_shot_loss"]

What a job measures (``finetune.run`` does the work):

- ``zero_shot_loss``: the held-out denoising loss of the pretrained model, before any fine-tuning;
- ``heldout_loss``: the same loss after ``config["steps"]`` steps of ``method`` from ``seed``.

Both are :func:`finetune.metrics.heldout_loss` (v- or ε-MSE at fixed timesteps and fixed noise on the
dataset's held-out split; lower is better). The dataset is always the canonical one (``builtin:`` seed 0);
``seed`` seeds the fine-tuning (batch order, timesteps, noise), so two seeds of one (model, dataset)
pair measure fine-tuning noise.

**Never raises for the job's own failure**: a bad model ref, a dataset error or a crash inside training
is recorded as ``status="failed"`` with the error, so a campaign goes on with the other jobs. Running out
of device memory (``torch.OutOfMemoryError``) is recorded as ``status="did_not_fit"`` with the memory the
job asked for (:mod:`profiler.schema`).

**LR warm-up.** ``config["warmup_steps"] = W`` ramps the learning rate linearly over the first W
optimizer steps, ``lr·min(1, (k+1)/W)`` at step k: it is a method-config option like the others
(:class:`finetune.methods.MethodConfig`), applied by ``finetune.run``.

**Per-process caches** (a worker runs many jobs): the loaded pipeline of the last two models, the
resolved datasets, and the caption embeddings of the frozen text encoder. Every job still starts from
the pristine pretrained weights: it gets a fresh deep copy of the cached denoiser (methods may change
it in place, even structurally: adapters, quantized layers); methods that train the text side
(textual inversion) get a freshly loaded model. ``cache=False`` switches all caching off.

**Zero-shot reuse.** Two seeds of one (model, dataset) pair measure the same zero-shot loss; a campaign
passes the first seed's value to the second job (``run_job(..., zero_shot_loss=...)``), which then skips
that evaluation (bit-identical record; ~11% less campaign time at the reference budget).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from profiler.schema import (STATUSES, ProfileJob, ProfileRecord, canonical_json, describe_error, hostname,
                             light_versions, utc_now)

#: Job-config keys the profiler handles itself (not passed to the method config unless it has them).
#: Methods whose zero-shot loss is the pretrained model's own (preparing the model changes neither its
#: function nor uses randomness), so jobs that differ only in the seed share it (see :func:`run_job`).
SEED_FREE_ZERO_SHOT = ("full",)


# ------------------------------------------------------------------------------------------ running
def run_job(job: ProfileJob | dict, workdir: str | os.PathLike | None = None, *, cache: bool = True,
            device: str | None = None, zero_shot_loss: float | None = None) -> ProfileRecord:
    """Run ``job`` and return its record; a failure of the job itself is recorded, never raised.

    Args:
        job: the job (or its dict form).
        workdir: parent folder of the job's temporary ``finetune.run`` output folder (default: the
            system temp dir); the folder is deleted before returning, so nothing large is kept.
        cache: reuse this process's loaded models, datasets and caption embeddings (see module docstring).
        device: torch device (default: CUDA when available, else CPU).
        zero_shot_loss: the zero-shot loss measured by a job with the same :attr:`ProfileJob.pair_key`
            (another seed). For :data:`SEED_FREE_ZERO_SHOT` methods it is reused instead of measured
            again — one held-out evaluation is ~1/4 of a reference job's time, so this saves ~11% of
            a two-seed campaign; the loss after training is then measured by the same function on the
            same model state as inside ``finetune.run``, so the record is bit-identical. Ignored otherwise.
    """
    job = ProfileJob.from_dict(job) if isinstance(job, dict) else job
    tmp = None
    t0 = time.perf_counter()
    try:
        from data import load_dataset
        from finetune.device import resolve_device
        from finetune.methods import get_method
        from finetune.runner import evaluate, resolve_config, run

        t0 = time.perf_counter()  # a worker's one-off imports (~5 s) are not part of its first job's time
        _quiet_loading()
        method_cls = get_method(job.method)
        options = method_cls.Config.help()
        config = dict(job.config)
        config["seed"] = job.seed
        if "checkpoint_every" in options:  # no resumable checkpoints: the job is the unit of resumption
            config.setdefault("checkpoint_every", 0)
        cfg = resolve_config(job.method, config)  # fail fast on a bad option, before loading anything
        dev = resolve_device(device)
        # the dataset first: it is cheap and fails fast; a model ref may mean building a zoo model
        dataset = _dataset(job.dataset) if cache else load_dataset(job.dataset)
        model = _pristine_model(job.model, dev, text_too=method_cls.trains_text) if cache else job.model
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"job-{job.job_id}-", dir=workdir)
        reuse = (zero_shot_loss is not None and job.method in SEED_FREE_ZERO_SHOT
                 and not isinstance(model, (str, os.PathLike)))
        with _caption_cache(model, enabled=cache and not method_cls.trains_text):
            res = run(model, dataset, job.method, config, tmp, device=dev, resume=False, force=True,
                      evaluate_loss=not reuse)
            if reuse:  # exactly finetune.run's own evaluation after training (its eval batch = the batch size)
                res.heldout_loss_before = float(zero_shot_loss)
                res.heldout_loss_after = evaluate(model, method_cls(model, cfg), dataset.heldout, max(1, cfg.batch_size))
        return record_from_result(job, res, wall_s=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 — a job's failure is data, not a crash of the campaign
        if _is_out_of_memory(e):
            request = oom_request_bytes(str(e))
            return ProfileRecord(job_id=job.job_id, job=job, status="did_not_fit", error=describe_error(e),
                                 metrics={"oom_request_bytes": float(request)},
                                 peak_mem_bytes=_allocated_bytes() + request,
                                 wall_s=round(time.perf_counter() - t0, 3), versions=light_versions(),
                                 host=hostname(), finished_at=utc_now())
        return ProfileRecord(job_id=job.job_id, job=job, status="failed", error=describe_error(e),
                             wall_s=round(time.perf_counter() - t0, 3), versions=light_versions(), host=hostname(),
                             finished_at=utc_now())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


_OOM_REQUEST = re.compile(r"Tried to allocate ([0-9.]+) ?([KMGT]i?B|B|bytes)", re.IGNORECASE)
_UNITS = {"b": 1, "bytes": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def oom_request_bytes(message: str) -> int:
    """The failing allocation's size from an out-of-memory message (CUDA's caching allocator says
    ``"Tried to allocate 1.50 GiB"``), in bytes; 0 when the message does not say."""
    m = _OOM_REQUEST.search(message)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()]) if m else 0


def _is_out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")  # an OOM comes from torch, so it is imported if one happened
    return torch is not None and isinstance(e, torch.OutOfMemoryError)


def _allocated_bytes() -> int:
    """CUDA bytes allocated on the current device now (0 without CUDA): with the failed call's frames
    still referenced by the exception being handled, that is about what was in use when it failed."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return int(torch.cuda.memory_allocated())


def record_from_result(job: ProfileJob, res, wall_s: float | None = None) -> ProfileRecord:
    """The ``"ok"`` record of ``job`` from its ``finetune.FinetuneResult`` (``heldout_loss``: after,
    ``zero_shot_loss``: before fine-tuning): the one place a fine-tuning result becomes a record (profiling
    jobs, ``mandc run``, ``mandc finetune --feedback``). Raises ``FloatingPointError`` when a loss is not
    finite. ``wall_s`` defaults to the result's own wall time."""
    losses = {"heldout_loss": res.heldout_loss_after, "zero_shot_loss": res.heldout_loss_before}
    bad = [k for k, v in losses.items() if v is None or not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"{', '.join(bad)} is not a finite number ({losses}): training diverged "
                                 "or the model produces NaNs")
    versions = dict(res.versions)
    fp = model_fingerprint(job.model)
    if fp is not None:
        versions["model"] = fp
    return ProfileRecord(job_id=job.job_id, job=job, status="ok", metrics={k: float(v) for k, v in losses.items()},
                         peak_mem_bytes=int(res.peak_mem_bytes),
                         wall_s=round(res.wall_s if wall_s is None else wall_s, 3),
                         train_s=round(float(res.train_s), 3), versions=versions, host=hostname(), finished_at=utc_now())


def model_fingerprint(ref: str) -> str | None:
    """SHA-256 (16 hex digits) of the denoiser weight files of a local folder or a built zoo model, or
    None when there are none to read (a Hub id, a zoo model not built yet, an unknown ref).

    A job names its model by reference (``zoo:NAME``), and rebuilding the zoo changes the weights behind
    a name; ok records carry this fingerprint as ``versions["model"]`` so that a campaign re-runs jobs
    whose record was measured on another build (:meth:`profiler.campaign.Campaign.pending`).
    """
    try:
        from finetune.refs import parse_model_ref

        parsed = parse_model_ref(ref)
        if parsed.kind == "zoo":
            from finetune.zoo import is_built, zoo_path

            if not is_built(parsed.value):
                return None
            folder = zoo_path(parsed.value)
        elif parsed.kind == "local":
            folder = Path(parsed.value)
        else:
            return None
    except ValueError:  # ModelRefError: the job will fail and say why
        return None
    files = sorted(f for sub in ("unet", "transformer") for pattern in ("*.safetensors", "*.bin")
                   for f in (folder / sub).glob(pattern))
    if not files:
        return None
    return _files_sha(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=64)
def _files_sha(files: tuple[tuple[str, int, int], ...]) -> str:
    """Content hash of ``files`` (cached per path, size and mtime: a model is hashed once per process)."""
    h = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _quiet_loading() -> None:
    """No per-job "Loading pipeline components / weights" progress bars in a campaign's output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


# ------------------------------------------------------------------------------- per-process caches
@functools.lru_cache(maxsize=2)
def _loaded_pipeline(ref: str):
    """The pipeline ``ref`` names, loaded once per process (two models kept: jobs come grouped by model)."""
    from finetune.load import load_pipeline

    return load_pipeline(ref)


def _pristine_model(ref: str, device, text_too: bool = False):
    """A ``T2IModel`` with the pretrained weights of ``ref`` whose denoiser no other job has touched.

    The denoiser is a deep copy of the cached one (a few ms for the zoo's ≤ 9M parameters, vs ~0.3 s to
    load it); the frozen text encoder, tokenizer and scheduler are shared. ``text_too``: the method
    changes the text side (adds tokens, trains embeddings), so load everything afresh instead.
    """
    from finetune.load import load_model
    from finetune.model import T2IModel

    if text_too:
        return load_model(ref, device=device)
    pipe = _loaded_pipeline(ref).to(device)  # in place; a no-op after the first job on this device
    key = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    components = dict(pipe.components)
    components[key] = copy.deepcopy(components[key])
    model = T2IModel(type(pipe)(**components))
    model.ref = ref  # finetune.run records `model.ref` as the model reference
    return model


@functools.lru_cache(maxsize=64)
def _dataset(ref: str):
    """The resolved canonical dataset (catalog datasets are generated; ~10-100 ms each)."""
    from data import load_dataset

    return load_dataset(ref)


# caption tuple -> prompt embeddings [B, L, D], per text encoder (keyed by its weights' identity)
_PROMPT_CACHE: dict[tuple, object] = {}
_PROMPT_CACHE_MAX = 4096


@contextlib.contextmanager
def _caption_cache(model, enabled: bool):
    """Memoise ``model.encode_prompt`` for this job when the text encoder is frozen.

    Every zoo model carries the same frozen MiniLM, so the embeddings of a dataset's captions are the
    same for every model and seed: encoding them (~0.15 s per 16-80 captions on one core) is done once
    per process instead of several times per job. The key holds a fingerprint of the encoder's weights,
    the tokenizer, the prompt length and the output dtype/device, so different encoders never share
    entries.
    """
    if not enabled or isinstance(model, (str, os.PathLike)):
        yield
        return
    original = model.encode_prompt
    encoder = model.text_encoder
    enc_key = (type(model.tokenizer).__name__, len(model.tokenizer), model.max_prompt_tokens, str(model.dtype),
               str(model.device), _weights_fingerprint(encoder))

    def encode_prompt(prompts):
        if any(p.requires_grad for p in encoder.parameters()):  # the encoder trains after all: no memo
            return original(prompts)
        key = (enc_key, tuple(prompts))
        hit = _PROMPT_CACHE.get(key)
        if hit is None:
            if len(_PROMPT_CACHE) >= _PROMPT_CACHE_MAX:
                _PROMPT_CACHE.clear()
            hit = _PROMPT_CACHE[key] = original(prompts)
        return hit

    model.encode_prompt = encode_prompt
    try:
        yield
    finally:
        del model.encode_prompt  # back to the class method


def _weights_fingerprint(module) -> str:
    """A cheap content fingerprint of a module's weights: shape and a strided sample of each tensor."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in module.named_parameters():
            flat = p.detach().reshape(-1)
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = ["STATUSES", "ProfileJob", "ProfileRecord", "run_job", "canonical_json", "describe_error", "model_fingerprint",
           "oom_request_bytes", "SEED_FREE_ZERO_SHOT"]
