"""What every fine-tuning method shares: its config fields, the training data it sees, and one step.

A method is a :class:`Method` subclass registered by name (see :mod:`finetune.methods`). It prepares the
model in place (:meth:`Method.setup_`: quantize, add adapters, add a placeholder token...), says which
tensors train (:meth:`Method.trainable`), takes one optimisation step (:meth:`Method.step`: a gradient
step by default, forward passes only for ``zo-ti``), and saves what it learned (:meth:`Method.save`).
:func:`finetune.run` drives it.

Training data: images with prompts. ``template`` turns a caption into the prompt: ``"{caption}"``
(domain adaptation: each image keeps its own caption), ``"a photo of {token}"`` (subject
personalisation: every image gets the same prompt), or e.g. ``"{caption}, {token} style"``. ``{token}``
is the learned placeholder for textual-inversion methods and ``identifier`` (DreamBooth's rare token)
for the others.
"""
from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch

from finetune.options import option  # noqa: F401  (re-exported: the methods import it from here)

OPTIMIZERS = ("adamw", "fp32-master", "remainder", "remainder-in-backward")


@dataclass
class MethodConfig:
    """Fields common to every method. Subclasses change defaults to their paper's recipe."""

    steps: int = option(400, "optimisation steps")
    batch_size: int = option(1, "images per step")
    lr: float = option(1e-4, "learning rate")
    seed: int = option(0, "seeds data order, timesteps, noise and any random directions")
    template: str = option("{caption}", "prompt per image: {caption} is its caption, {token} the placeholder "
                                        "(TI methods) or the identifier; 'a photo of {token}' = subject mode")
    identifier: str = option("sks", "word that stands for the subject in non-TI methods' prompts")
    optimizer: str = option("adamw", f"one of {OPTIMIZERS}: fp32 AdamW; bf16 params + fp32 master (standard "
                                     "mixed precision); bf16 + 16 remainder bits; remainder + step inside backward")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    max_grad_norm: float = option(0.0, "global-norm gradient clipping (0: off; not with remainder-in-backward)")
    timestep_min: int = option(0, "timesteps are drawn uniformly from [timestep_min, timestep_max)")
    timestep_max: int = option(1000, "upper end (exclusive) of the timestep range, of T=1000")
    warmup_steps: int = option(0, "linear learning-rate warm-up: step k (from 0) uses lr·min(1, (k+1)/warmup_steps) "
                                  "(0 or 1: constant lr; zo-ti keeps its constant lr)")
    p_uncond: float = option(0.0, "probability that a training prompt is replaced by the empty prompt (caption "
                                  "dropout, which classifier-free guidance needs; 0.1 is the usual pretraining value)")
    snr_gamma: float | None = option(None, "Min-SNR-γ loss weighting (diffusers' --snr_gamma; 5.0 is its usual "
                                           "value; none: plain MSE)")
    checkpoint_every: int = option(100, "save a resumable checkpoint every N steps (0: only at the end)")
    gradient_checkpointing: bool = option(False, "recompute the denoiser's activations in backward instead of "
                                                 "keeping them (diffusers' --gradient_checkpointing): less memory, "
                                                 "~1 extra forward per step; no effect on zo-ti (no backward)")

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1 (0 steps would save an untrained result), got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.optimizer == "remainder-in-backward" and self.max_grad_norm > 0:
            raise ValueError("max_grad_norm needs every gradient before the first update; it cannot be used "
                             "with optimizer='remainder-in-backward' (which steps inside backward)")
        lo = 0 if self.timestep_min is None else self.timestep_min  # None: the method resolves it (zo-ti)
        hi = 1000 if self.timestep_max is None else self.timestep_max
        if not 0 <= lo < hi <= 1000:
            raise ValueError(f"need 0 ≤ timestep_min < timestep_max ≤ 1000, got {self.timestep_min}, {self.timestep_max}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be ≥ 0, got {self.warmup_steps}")
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be > 0 or none, got {self.snr_gamma}")
        if "{caption}" not in self.template and "{token}" not in self.template:
            raise ValueError(f"template {self.template!r} uses neither {{caption}} nor {{token}}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "MethodConfig":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(names))}")
        return cls(**d)

    @classmethod
    def parse_overrides(cls, items: list[str] | None, flags: dict | None = None) -> dict:
        """Typed overrides from ``KEY=VALUE`` strings (the CLI's ``--set``) and dedicated flags.

        Each value is parsed to its field's type (``int``, ``float``, ``bool``: true/false/1/0/yes/no,
        ``str``; ``X | None`` also takes ``none``/``null``); ``-`` in a key reads as ``_``. ``flags``
        maps field names to values given by their own options (``--steps 5`` → ``{"steps": 5}``; None
        means not given). Raises ``ValueError`` naming the field, its type and its help for a value
        that does not parse, for an unknown key, and for a key given twice (by ``--set`` twice, or by
        ``--set`` and its flag) with different values.
        """
        known = {f.name: f for f in fields(cls)}
        hints = typing.get_type_hints(cls)
        out: dict[str, object] = {}
        given: dict[str, str] = {}  # field -> how it was given first, for the conflict message
        for item in items or []:
            if "=" not in item:
                raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
            key, text = item.split("=", 1)
            key = key.strip().replace("-", "_")
            if key not in known:
                raise ValueError(f"{cls.__name__} has no option {key!r}; options: {', '.join(sorted(known))}")
            value = _parse_field(key, text.strip(), hints[key], known[key].metadata.get("help", ""))
            if key in out and out[key] != value:
                raise ValueError(f"option {key} given twice with different values ({given[key]}, --set {item}); "
                                 f"give it once")
            out.setdefault(key, value)
            given.setdefault(key, f"--set {item}")
        for key, value in (flags or {}).items():
            if value is None:
                continue
            if key in out and out[key] != value:
                raise ValueError(f"option {key} given twice with different values ({given[key]}, and {value!r} "
                                 f"by its own flag); give it once")
            out[key] = value
        return out

    @classmethod
    def help(cls) -> dict[str, tuple[object, str]]:
        """``{field: (default, help)}`` for docs and the CLI."""
        return {f.name: (f.default, f.metadata.get("help", "")) for f in fields(cls)}


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse_field(key: str, text: str, tp, help: str):
    """``text`` as a value of type ``tp`` (int, float, bool, str, or one of them ``| None``)."""
    args = typing.get_args(tp)
    optional = (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else tp
    if optional and text.lower() in ("none", "null"):
        return None
    name = getattr(base, "__name__", str(base)) + (" or none" if optional else "")
    try:
        if base is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if base is int:
            return int(text)
        if base is float:
            value = float(text)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(text)
            return value
        if base is str:
            return text
        return json.loads(text)
    except (ValueError, json.JSONDecodeError):
        raise ValueError(f"option {key} takes {'true or false' if base is bool else name}, got {text!r} "
                         f"({key}: {help})") from None


@dataclass
class TrainData:
    """What a method trains on: ``x0`` ``[N, C, h, w]`` (pixels or VAE latents, encoded once), the prompt
    per image, and — when the text encoder is frozen and the prompts fixed — their embeddings: ``cond``
    ``[N, L, D]``, or ``[U, L, D]`` (one row per distinct prompt) with ``cond_index`` ``[N]`` (long) into it.
    ``weights`` ``[N]`` (non-negative, positive sum) makes batches draw image ``i`` with probability
    ``w_i / Σw``, with replacement (a pretraining mixture is just per-image weights); None: uniform."""

    x0: torch.Tensor
    prompts: list[str]
    cond: torch.Tensor | None = None
    cond_index: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.x0.shape[0]
        if n == 0:
            raise ValueError("TrainData: no training images")
        if len(self.prompts) != n:
            raise ValueError(f"TrainData: {n} images but {len(self.prompts)} prompts")
        if self.cond_index is not None and (self.cond is None or self.cond_index.shape != (n,)):
            raise ValueError(f"TrainData: cond_index must be [{n}] and needs cond")
        if self.weights is not None and (self.weights.shape != (n,) or not bool((self.weights >= 0).all())
                                         or float(self.weights.sum()) <= 0):
            raise ValueError(f"TrainData: weights must be [{n}], non-negative, with a positive sum")

    def __len__(self) -> int:
        return self.x0.shape[0]


def build_optimizer(config: MethodConfig, params: list[torch.Tensor]):
    """The optimizer ``config.optimizer`` names over ``params`` (see :data:`OPTIMIZERS`)."""
    from finetune.optim import Fp32MasterAdamW, RemainderAdamW

    c = config
    if c.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    if c.optimizer == "fp32-master":
        return Fp32MasterAdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    return RemainderAdamW(params, lr=c.lr, weight_decay=c.weight_decay,
                          step_in_backward=c.optimizer == "remainder-in-backward",
                          max_grad_norm=c.max_grad_norm or None)


class Method:
    """Base class. Subclasses set ``name``, ``Config``, and override the hooks they need."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: True when the prompt embeddings change during training (textual inversion): re-encode every step.
    trains_text: ClassVar[bool] = False
    #: True when the method quantizes the model (the benchmark then compares against quantized inference).
    quantized: ClassVar[bool] = False
    #: True when a step is forward passes only, no autograd and no torch optimizer (``zo-ti``).
    gradient_free: ClassVar[bool] = False

    def __init__(self, model, config: MethodConfig):
        self.model, self.config = model, config
        self.optimizer = None
        self._uncond = None  # the empty prompt's embedding [1, L, D], encoded on first use (p_uncond)

    # -- memory estimate (finetune.estimate) ------------------------------------------------------------
    @classmethod
    def estimate_prepare_(cls, model, config: MethodConfig) -> list[torch.Tensor]:
        """Give ``model``, a shapes-only stand-in (:class:`finetune.estimate.dryrun.ShapeModel`: the
        denoiser, text encoder and VAE on fake tensors), the structure :meth:`setup_` gives a real model,
        without data-dependent work, and return what the optimizer updates. Default: ``setup_`` itself."""
        m = cls(model, config)
        m.setup_()
        return m.trainable()

    @classmethod
    def estimate_forward_passes(cls, config: MethodConfig) -> int:
        """Forward passes per step of a gradient-free method."""
        return 1

    # -- preparation ----------------------------------------------------------------------------------
    def setup_(self) -> None:
        """Modify ``self.model`` in place (freeze, quantize, add adapters or tokens)."""
        self.model.denoiser.requires_grad_(False)

    def trainable(self) -> list[torch.Tensor]:
        """Tensors the optimizer updates."""
        raise NotImplementedError

    def token(self) -> str:
        return self.config.identifier

    def prompt(self, caption: str) -> str:
        return self.config.template.format(caption=caption, token=self.token())

    # -- one step ---------------------------------------------------------------------------------------
    def make_optimizer(self):
        params = self.trainable()
        if not params:
            raise ValueError(f"method {self.name!r} has nothing to train")
        return build_optimizer(self.config, params)

    def sample_timesteps(self, n: int, g: torch.Generator) -> torch.Tensor:
        c = self.config
        scale = self.model.num_train_timesteps / 1000
        lo, hi = int(c.timestep_min * scale), int(c.timestep_max * scale)
        return torch.randint(lo, hi, (n,), generator=g)

    def batch_indices(self, data: TrainData, g: torch.Generator) -> torch.Tensor:
        """``[batch_size]`` image indices: uniform, or by ``data.weights``; with replacement."""
        n = self.config.batch_size
        if data.weights is None:
            return torch.randint(len(data), (n,), generator=g)
        return torch.multinomial(data.weights, n, replacement=True, generator=g)

    def conditioning(self, data: TrainData, idx: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings ``[B, L, D]`` of images ``idx``; where ``drop`` ``[B]`` (bool) is set, the empty
        prompt's instead."""
        if data.cond is not None and not self.trains_text:
            cond = data.cond[idx if data.cond_index is None else data.cond_index[idx]]
        else:
            cond = self.model.encode_prompt([data.prompts[i] for i in idx.tolist()])
        if drop is not None:
            if self._uncond is None:
                self._uncond = self.model.empty_prompt_embedding().to(cond.device, cond.dtype)
            cond = torch.where(drop[:, None, None].to(cond.device), self._uncond, cond)
        return cond

    def loss(self, data: TrainData, idx: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             drop: torch.Tensor | None = None) -> torch.Tensor:
        """Denoising loss on images ``idx`` at timesteps ``t`` ``[B]`` with ``noise`` (shape of ``x0[idx]``),
        the prompts ``drop`` ``[B]`` marks replaced by the empty one, Min-SNR-γ weighted if ``snr_gamma``."""
        batch = {"x0": data.x0[idx], "encoder_hidden_states": self.conditioning(data, idx, drop)}
        return self.model.training_loss(batch, timesteps=t, noise=noise, snr_gamma=self.config.snr_gamma)

    def step(self, data: TrainData, g: torch.Generator) -> float:
        """One gradient step; returns the loss. ``g`` seeds, in this order, the batch, the dropped prompts
        (only when ``p_uncond > 0``), the timesteps and the noise."""
        c = self.config
        idx = self.batch_indices(data, g)
        drop = torch.rand(c.batch_size, generator=g) < c.p_uncond if c.p_uncond > 0 else None
        t = self.sample_timesteps(c.batch_size, g)
        noise = torch.randn(data.x0[idx].shape, generator=g)
        loss = self.loss(data, idx, t, noise, drop)
        loss.backward()
        if c.max_grad_norm > 0 and c.optimizer in ("adamw", "fp32-master"):
            torch.nn.utils.clip_grad_norm_(self.trainable(), c.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.after_step()
        return float(loss.detach())

    def after_step(self) -> None:
        """Hook after each optimiser update (textual inversion restores the frozen embedding rows)."""

    # -- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the method learned (checkpointed and saved); default: the trainable tensors by name."""
        names = {id(p): n for n, p in self.model.denoiser.named_parameters()}
        return {names[id(p)]: p.detach().clone() for p in self.trainable()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        own = dict(self.model.denoiser.named_parameters())
        with torch.no_grad():
            for k, v in sd.items():
                own[k].copy_(v)

    def optimizer_state(self) -> dict | None:
        opt = self.optimizer
        return opt.state_dict() if opt is not None and hasattr(opt, "state_dict") else None

    def load_optimizer_state(self, state: dict | None) -> None:
        if state is not None and self.optimizer is not None and hasattr(self.optimizer, "load_state_dict"):
            self.optimizer.load_state_dict(state)

    def save(self, out_dir: Path) -> dict[str, str]:
        """Write the learned artefacts into ``out_dir``; returns ``{kind: path}``."""
        raise NotImplementedError

    def eval_conditioning(self, captions: list[str]) -> torch.Tensor:
        """Prompt embeddings used to score held-out images (the training template applied to their captions)."""
        return self.model.encode_prompt([self.prompt(c) for c in captions])
