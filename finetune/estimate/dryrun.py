"""One training step of a method on fake tensors: the memory of the step without allocating it.

:func:`shape_model` builds the pipeline's modules from their configs under ``FakeTensorMode`` (every
tensor has a shape, a dtype and a device but no storage). The method's
:meth:`~finetune.methods.base.Method.estimate_prepare_` gives that :class:`ShapeModel` the structure its
``setup_`` gives a real model (quantized layers, adapters, a trainable embedding), and :func:`dry_steps`
runs ``steps`` training steps — forward, loss, backward, optimizer step — under
``torch.distributed._tools.mem_tracker.MemTracker``, which counts the bytes of every live tensor at each
operator and keeps the peak (parameters, buffers, gradients, activations, temporaries, optimizer state).
Two steps, because optimizer state is allocated inside the first step and the second step's forward runs
with it resident.

What the tracker does not see (calibrated in :mod:`finetune.estimate.core`): the allocator's slack, the
process's own growth while training (thread pools, kernel workspaces), a CUDA context.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker


class _NoHook:
    def remove(self) -> None:
        pass


class _Tracker(MemTracker):
    """MemTracker that skips gradient hooks on frozen parameters (``register_hook`` refuses a tensor that
    does not require grad: the known gap for frozen encoders)."""

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
        for p in module.parameters():
            if not p.requires_grad:
                self._param_to_grad_hook_handles.setdefault(p, (_NoHook(), _NoHook()))
        return super()._track_module_params_and_buffers(module, install_grad_hooks)

    def _update_peak_stats(self, peak_state) -> None:
        # Only the global peak is read (``get_tracker_snapshot("peak")``): skip MemTracker's per-module peaks,
        # which walk every module seen so far at every operator (most of a dry run's time on a small model).
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap["Total"]:
                self._peak_mem[dev] = snap["Total"]
                self._peak_mem_snap[dev] = dict(snap)

    def peak_bytes(self) -> int:
        return int(sum(s["Total"] for s in self.get_tracker_snapshot("peak").values()))

    def peak_breakdown(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for snap in self.get_tracker_snapshot("peak").values():
            for k, v in snap.items():
                key = k if isinstance(k, str) else k.value
                out[key] = out.get(key, 0) + int(v)
        return out


def module_bytes(module: nn.Module | None) -> int:
    """Bytes of ``module``'s parameters and buffers (each tensor once)."""
    if module is None:
        return 0
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@dataclass
class ShapeModel:
    """Shapes-only stand-in for :class:`~finetune.model.T2IModel`, handed to ``Method.estimate_prepare_``.

    ``denoiser``, ``text_encoder``, ``vae`` are real ``nn.Module`` classes holding fake tensors.
    A method's hook may call :meth:`quantize_` (``quantize_``'s structure, without its data-dependent
    work), :meth:`cast_`, :meth:`hold` (a tensor the method keeps, e.g. a copy of a table) and
    :meth:`on_step` (work done after each optimizer step, e.g. restoring frozen rows)."""

    denoiser: nn.Module
    text_encoder: nn.Module | None
    vae: nn.Module | None
    is_transformer: bool
    prompt_tokens: int
    fake_mode: FakeTensorMode
    held: list = field(default_factory=list)
    after_step: list = field(default_factory=list)

    def quantize_(self, module: nn.Module, bits: int = 4, *, plan=None, init: str = "clip", skip=None,
                  **layer_kwargs) -> nn.Module:
        """Replace the layers :func:`finetune.quant.quantize_` would replace by uninitialised quantized layers
        of the same configuration (``layer_kwargs``: ``separable``, ``n_timestep_sets``, ``symmetric``,
        ``a_bits``, as ``quantize_`` takes them). Same plan resolution, same layer classes, so the same bytes."""
        from finetune.quant import load_plan, resolve_plan

        a_bits = layer_kwargs.pop("a_bits", None)
        skip = [skip] if isinstance(skip, str) else list(skip or ())
        plan = {"re:.*": {"w_bits": bits, "a_bits": a_bits}} if plan is None else load_plan(plan)
        for name, spec in resolve_plan(module, plan, skip).items():
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name)
            fp = getattr(parent, child)
            cls = _SHAPE_ONLY[nn.Linear if isinstance(fp, nn.Linear) else nn.Conv2d]
            q = cls.from_float(fp, spec["w_bits"], init=init, a_bits=spec.get("a_bits"), **layer_kwargs)
            q.fqn = name
            q.train(fp.training)
            setattr(parent, child, q)
        return module

    def cast_(self, module: nn.Module, dtype: torch.dtype) -> nn.Module:
        """``module.to(dtype)`` for fake parameters (``Module.to`` fails under fake mode)."""
        with self.fake_mode:
            return _cast_fake_(module, dtype)

    def hold(self, t: torch.Tensor) -> torch.Tensor:
        self.held.append(t)
        return t

    def on_step(self, fn) -> None:
        self.after_step.append(fn)

    def cond(self, batch: int) -> torch.Tensor:
        """Prompt embeddings ``[B, L, D]`` as the frozen text encoder gives them (call under fake mode)."""
        dim = self.text_encoder.config.hidden_size if self.text_encoder is not None else \
            int(self.denoiser.config.cross_attention_dim)
        return torch.randn(batch, self.prompt_tokens, dim)


def _cast_fake_(module: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    for t in list(module.parameters()) + list(module.buffers()):
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t.data = torch.empty(t.shape, dtype=dtype)
    return module


@contextlib.contextmanager
def _fake_module_to():
    """``Module.to`` cannot swap fake parameters ("has weakref associated with it"), and libraries call it
    while a method prepares the stand-in (peft moves each new adapter to its base layer's device): while
    preparing, ``Module.to`` changes only the dtype (all fake tensors live on one fake CPU)."""
    orig = nn.Module.to

    def to(self, *args, **kwargs):
        _, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        return _cast_fake_(self, dtype)

    nn.Module.to = to
    try:
        yield
    finally:
        nn.Module.to = orig


def prepare_(model: ShapeModel, method_cls, config) -> list:
    """``method_cls.estimate_prepare_`` on the stand-in, under its fake mode; returns the trainable tensors."""
    with model.fake_mode, torch.device("cpu"), _fake_module_to():
        return list(method_cls.estimate_prepare_(model, config))


def _shape_only(cls):
    class ShapeOnly(cls):
        """``cls`` whose weights are never computed (codes stay zero): shapes and bytes only."""

        def _quantize_from(self, weight, init, clip_ratios) -> None:
            pass

    ShapeOnly.__name__ = cls.__name__
    return ShapeOnly


class _Lazy(dict):
    def __missing__(self, key):
        from finetune.quant import QuantConv2d, QuantLinear

        self[nn.Linear], self[nn.Conv2d] = _shape_only(QuantLinear), _shape_only(QuantConv2d)
        return self[key]


_SHAPE_ONLY = _Lazy()


def build_module(spec: dict) -> nn.Module:
    """An ``nn.Module`` from one component of a description (library, class, config), in the current
    tensor mode (call it under ``FakeTensorMode``)."""
    cfg = {k: v for k, v in spec["config"].items() if not k.startswith("_")}
    if spec["library"] == "transformers":
        import transformers

        cfg.pop("architectures", None)
        config = transformers.AutoConfig.for_model(**cfg)
        return getattr(transformers, spec["class"])(config)
    import diffusers

    return getattr(diffusers, spec["class"]).from_config(cfg)


def shape_model(desc: dict, fake_mode: FakeTensorMode) -> ShapeModel:
    """The :class:`ShapeModel` of a description, every module in eval mode with its weights frozen (as
    ``T2IModel`` loads them)."""
    comps = desc["components"]
    den_name = "unet" if "unet" in comps else "transformer"
    with fake_mode, torch.device("cpu"):
        mods = {n: build_module(comps[n]) for n in (den_name, "text_encoder", "vae") if n in comps}
    for m in mods.values():
        m.requires_grad_(False)
        m.eval()
    tok = comps.get("tokenizer", {}).get("model_max_length")
    te_cfg = comps.get("text_encoder", {}).get("config", {})
    tokens = int(tok) if tok and int(tok) < 10_000 else int(te_cfg.get("max_position_embeddings", 77))
    return ShapeModel(mods[den_name], mods.get("text_encoder"), mods.get("vae"), den_name == "transformer",
                      tokens, fake_mode)


def _denoise(model: ShapeModel, x_t, t, cond):
    if model.is_transformer:
        out = model.denoiser(x_t, encoder_hidden_states=cond, timestep=t,
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        return out[:, : x_t.shape[1]] if out.shape[1] == 2 * x_t.shape[1] else out
    return model.denoiser(x_t, t, encoder_hidden_states=cond).sample


@dataclass
class DryRun:
    peak_bytes: int                 # peak of the tracked modules + step state over the steps
    breakdown: dict[str, int]       # MemTracker's categories at that peak
    resident_bytes: int             # the tracked modules' parameters and buffers before the first step


def dry_steps(model: ShapeModel, method_cls, config, trainable: list, *, batch: int, latent: int,
              steps: int = 2, n_forward: int = 1) -> DryRun:
    """Peak bytes of ``steps`` training steps of ``method_cls`` (see module doc). The tracked modules are
    the denoiser, and the text encoder when the method trains through it (``trains_text``). A
    gradient-free method (``method_cls.gradient_free``) runs ``n_forward`` forward passes per step under
    ``no_grad``. ``latent`` is the denoiser's input size (pixels / VAE scale factor)."""
    from finetune.methods.base import build_optimizer
    from finetune.quant import set_timestep_

    set_timestep_(model.denoiser, 600)  # TuneQDM's sets: one scale set (an int, set outside fake mode)
    tracked = [model.denoiser] + ([model.text_encoder] if method_cls.trains_text else [])
    channels = int(model.denoiser.config.in_channels)
    tracker = _Tracker()
    tracker.track_external(*tracked, *model.held)
    resident = sum(module_bytes(m) for m in tracked) + sum(t.numel() * t.element_size() for t in model.held)
    dtype = next(model.denoiser.parameters()).dtype
    grad_free = getattr(method_cls, "gradient_free", False)
    with model.fake_mode, torch.device("cpu"), tracker:
        opt = None if grad_free else build_optimizer(config, trainable)
        for _ in range(steps):
            x_t = torch.randn(batch, channels, latent, latent, dtype=dtype)
            noise = torch.randn(batch, channels, latent, latent, dtype=dtype)
            t = torch.randint(0, 1000, (batch,))
            ctx = torch.no_grad() if grad_free else contextlib.nullcontext()
            with ctx:
                for _ in range(n_forward if grad_free else 1):
                    tracker.reset_mod_stats()  # per-module stats are one pass's; the global peak stays
                    if method_cls.trains_text:
                        ids = torch.zeros(batch, model.prompt_tokens, dtype=torch.long)
                        cond = model.text_encoder(input_ids=ids)[0]
                    else:
                        cond = model.cond(batch)
                    loss = F.mse_loss(_denoise(model, x_t, t, cond.to(dtype)).float(), noise.float())
            if not grad_free:
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            for fn in model.after_step:
                fn()
            del loss, x_t, noise, cond
    return DryRun(tracker.peak_bytes(), tracker.peak_breakdown(), resident)


def dry_encode(model: ShapeModel, *, n_images: int, resolution: int, chunk: int = 16) -> int:
    """Peak bytes above the VAE's own weights of encoding ``n_images`` training images once (as
    ``finetune.runner.encode_train_data`` does, ``chunk`` at a time, no autograd); 0 in pixel space."""
    if model.vae is None:
        return 0
    tracker = _Tracker()
    tracker.track_external(model.vae)
    b = min(chunk, n_images)
    with model.fake_mode, torch.device("cpu"), tracker, torch.no_grad():
        pixels = torch.randn(n_images, 3, resolution, resolution)
        model.vae.encode(pixels[:b]).latent_dist.mean
    return max(0, tracker.peak_bytes() - module_bytes(model.vae))
