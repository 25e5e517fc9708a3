"""``finetune.run`` (defined here): the one entry point that fine-tunes a model on a dataset with a registered method.

::

    from finetune import run
    result = run("zoo:unet-s-shapes", "builtin:shapes_circles", "tuneqdm", {"steps": 200, "lr": 1e-4}, "out/tq")
    result.heldout_loss_after, result.peak_mem_bytes, result.artefacts

What happens, in order (memory is metered from before the model loads; ``peak_mem_bytes`` is the peak
from the end of step 2 to the end of training, so it counts the prepared model, the training state and
activations, but not a transient full-precision copy that a quantizing method loads and then frees;
that loading peak is ``load_peak_bytes``):

1. the model (``T2IModel`` or a reference) and the dataset (``SplitDataset`` or a reference) are resolved;
2. the method prepares the model in place (quantize, adapters, placeholder token) and resolves any option
   that depends on the model (zo-ti's SNR-matched timestep window): ``result.config`` is the config as run;
3. the held-out denoising loss *before* training is measured on the prepared model (for textual
   inversion that is the initializer word's loss; for PEQA/TuneQDM the freshly quantized model's);
4. training images are encoded once (VAE latents or pixels; prompt embeddings too when the text encoder
   is frozen) and the method steps ``config.steps`` times from a seeded generator, writing a resumable
   checkpoint to ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps (atomically);
5. the held-out loss *after*, the artefacts, and ``out_dir/result.json`` are written.

Resume: a later call with the same model, dataset, method and config continues from the checkpoint;
the run is deterministic, so an interrupted-and-resumed run ends where an uninterrupted one would.
A call whose ``result.json`` already exists for the same inputs returns that result without training
(``force=True`` retrains).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from data.io import atomic_output, atomic_write
from finetune.device import resolve_device
from finetune.memory import PeakMemory, enable_gradient_checkpointing_
from finetune.methods import MethodConfig, TrainData, get_method
from finetune.train import train_

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"


@dataclass
class FinetuneResult:
    method: str
    config: dict
    model: str
    dataset: str
    steps: int
    wall_s: float                      # whole run: load, prepare, train, evaluate, save
    train_s: float                     # the training steps only
    step_s: float                      # mean seconds per step (after the first, which includes warm-up)
    peak_mem_bytes: int                # training peak above the footprint before the model loaded
    load_peak_bytes: int               # peak while loading and preparing the model (before training)
    mem_method: str                    # cuda_max_memory_allocated | cpu_peak_rss
    device: str
    trainable_params: int
    heldout_loss_before: float | None
    heldout_loss_after: float | None
    losses: list[float] = field(default_factory=list)
    artefacts: dict[str, str] = field(default_factory=dict)
    resumed_from: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    images: dict = field(default_factory=dict)  # data.pixels.image_account: resized/cropped/converted + line

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneResult":
        return cls(**d)


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def _fingerprint(model_ref: str, dataset_ref: str, method: str, config: dict) -> str:
    blob = json.dumps([model_ref, dataset_ref, method, config], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_config(method: str, config: MethodConfig | dict | None) -> MethodConfig:
    """The method's config dataclass from a dict of overrides (or as given), validated."""
    cls = get_method(method)
    cfg = config if isinstance(config, MethodConfig) else cls.Config.from_dict(config)
    if not isinstance(cfg, cls.Config):
        raise TypeError(f"method {method!r} takes a {cls.Config.__name__}, got {type(cfg).__name__}")
    cfg.validate()
    return cfg


@torch.no_grad()
def encode_train_data(model, dataset, method, batch_size: int = 16) -> TrainData:
    """x0 for every training image (encoded once: the VAE is frozen) and the method's prompt per image."""
    pixels = dataset.train.to_tensor(model.resolution)
    x0 = torch.cat([model.encode_images(pixels[i:i + batch_size]).cpu() for i in range(0, len(pixels), batch_size)])
    prompts = [method.prompt(c) for c in dataset.train.captions]
    cond = None
    if not method.trains_text:
        cond = torch.cat([model.encode_prompt(prompts[i:i + batch_size]).cpu()
                          for i in range(0, len(prompts), batch_size)])
    return TrainData(x0=x0, prompts=prompts, cond=cond)


def evaluate(model, method, heldout, batch_size: int) -> float:
    from finetune.metrics import heldout_loss

    return heldout_loss(model, heldout, cond=method.eval_conditioning(list(heldout.captions)),
                        batch_size=batch_size).mean


def run(model, dataset, method: str, config: MethodConfig | dict | None = None, out_dir: str | os.PathLike = "out",
        *, device: str | torch.device | None = None, evaluate_loss: bool = True, resume: bool = True,
        force: bool = False, progress: Callable[[int, int], None] | None = None,
        progress_text: Callable[[str], None] | None = None,
        trained: Callable[[object], None] | None = None) -> FinetuneResult:
    """Fine-tune ``model`` on ``dataset`` with ``method``; see the module docstring.

    Args:
        model: a ``T2IModel`` or a model reference (folder, ``zoo:NAME``, Hub id).
        dataset: a ``SplitDataset`` or a dataset reference (``builtin:NAME``, folder).
        method: a registered method name (``finetune.methods.METHODS``).
        config: the method's config dataclass, or a dict overriding its defaults.
        out_dir: where checkpoint, artefacts and ``result.json`` go (created).
        evaluate_loss: measure the held-out loss before and after (off for pure memory/speed runs).
        progress: called as ``progress(done_steps, total_steps)``.
        progress_text: called once with the line saying what was done to the images (resized, cropped,
            upscaled, converted), also kept in ``result.images``.
        trained: called with the trained ``T2IModel`` once the result is written (e.g. to sample from it
            when ``model`` was a reference, which keeps its loading inside the meter); not called when
            ``result.json`` answers without training.
    """
    from data import load_dataset
    from data.pixels import image_account
    from finetune.load import load_model

    cls = get_method(method)
    cfg = resolve_config(method, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_ref = model if isinstance(model, (str, os.PathLike)) else getattr(model, "ref", type(model).__name__)
    dataset_ref = dataset if isinstance(dataset, (str, os.PathLike)) else (getattr(dataset, "ref", "") or dataset.name)
    fp = _fingerprint(str(model_ref), str(dataset_ref), method, cfg.to_dict())
    if not force and (out / RESULT).exists():
        prev = json.loads((out / RESULT).read_text())
        if prev.get("fingerprint") == fp:
            prev.pop("fingerprint")
            return FinetuneResult.from_dict(prev)

    t_start = time.perf_counter()
    dev = resolve_device(device)
    with PeakMemory(dev) as meter:
        ds = load_dataset(dataset) if not hasattr(dataset, "train") else dataset  # before the slow model load
        if len(ds.train) == 0:
            raise ValueError(f"dataset {dataset_ref} has no training images")
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, device=dev)
        images = image_account(ds, model.resolution)
        if progress_text is not None:
            progress_text(images["line"])
        torch.manual_seed(cfg.seed)
        m = cls(model, cfg)
        m.setup_()
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing_(model.denoiser)
        # Meter training with the prepared model resident, not the transient full-precision copy a
        # quantizing method loads first (see PeakMemory.restart_peak); load_peak_bytes keeps that figure.
        meter.restart_peak()
        m.optimizer = m.make_optimizer()
        base_lrs = [group["lr"] for group in getattr(m.optimizer, "param_groups", ())]  # before any warm-up
        n_trainable = sum(p.numel() for p in m.trainable())
        eval_bs = max(1, cfg.batch_size)
        before = evaluate(model, m, ds.heldout, eval_bs) if evaluate_loss else None

        data = encode_train_data(model, ds, m)
        g = torch.Generator("cpu").manual_seed(cfg.seed)
        losses: list[float] = []
        start = 0
        ckpt = out / CHECKPOINT
        if resume and ckpt.exists():
            state = load_checkpoint(ckpt)
            if state is not None and state.get("fingerprint") == fp:
                m.load_state_dict(state["method_state"])
                m.load_optimizer_state(state["optimizer"])
                g.set_state(state["rng"])
                losses, start = list(state["losses"]), int(state["step"])

        def checkpoint(done: int, losses: list[float]) -> None:
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                _save_checkpoint(ckpt, fp, done, m, g, losses)

        losses, times = train_(m, data, g, base_lrs=base_lrs, start=start, losses=losses, progress=progress,
                               after_step=checkpoint)
        meter.sample()  # the training peak, before evaluation adds anything
        train_peak = meter.peak_bytes
        after = evaluate(model, m, ds.heldout, eval_bs) if evaluate_loss else None
        artefacts = m.save(out)

    result = FinetuneResult(
        method=method, config=m.config.to_dict(), model=str(model_ref), dataset=str(dataset_ref), steps=cfg.steps,
        wall_s=time.perf_counter() - t_start, train_s=sum(times),
        step_s=(sum(times[1:]) / (len(times) - 1)) if len(times) > 1 else (times[0] if times else 0.0),
        peak_mem_bytes=int(train_peak), load_peak_bytes=int(meter.extra.get("peak_before_restart", 0)),
        mem_method=meter.method, device=str(dev), trainable_params=int(n_trainable),
        heldout_loss_before=before, heldout_loss_after=after, losses=losses, artefacts=artefacts,
        resumed_from=start, versions=_versions(), images=images)
    atomic_write(out / RESULT, json.dumps({**result.to_dict(), "fingerprint": fp}, indent=2))
    ckpt.unlink(missing_ok=True)
    if trained is not None:
        trained(model)
    return result


_CHECKPOINT_KEYS = ("fingerprint", "step", "method_state", "optimizer", "rng", "losses")


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at ``path``, loaded with ``torch.load(weights_only=True)`` (tensors, numbers,
    strings and containers only: nothing is unpickled into arbitrary objects).

    A file that cannot be read that way (truncated, corrupt, or not written by this code) is set aside
    as ``checkpoint.pt.corrupt`` with a one-line warning, and None is returned: the run restarts from
    step 0 rather than blocking every rerun.
    """
    import warnings

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or any(k not in state for k in _CHECKPOINT_KEYS):
            raise ValueError("not a mandc checkpoint")
        return state
    except Exception as e:  # noqa: BLE001  (pickle/zip/torch raise many types for one bad file)
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        import pickle

        why = ("not loadable with weights_only=True: corrupt, or holds objects other than tensors"
               if isinstance(e, pickle.UnpicklingError) else str(e).splitlines()[0][:120] if str(e) else "")
        warnings.warn(f"{path}: unreadable checkpoint ({type(e).__name__}: {why}); set aside as {aside.name}, "
                      f"training restarts from step 0", UserWarning, stacklevel=2)
        return None


def _save_checkpoint(path: Path, fp: str, step: int, m, g: torch.Generator, losses: list[float]) -> None:
    with atomic_output(path) as tmp:
        torch.save({"fingerprint": fp, "step": step, "method_state": m.state_dict(), "optimizer": m.optimizer_state(),
                    "rng": g.get_state(), "losses": losses}, tmp)
