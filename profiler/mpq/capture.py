"""Capturing what the profiler needs from a denoiser: layer shapes and MACs, and per-timestep Gram matrices.

The calibration batch (:class:`CalibrationBatch`) is ``N`` training images with their captions, encoded
once: ``x_0`` ``[N, C, h, w]``, prompt embeddings ``[N, L, D]`` and one fixed noise draw ``ε`` ``[N, C, h, w]``.
At timestep ``t`` the denoiser sees ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε`` with the captions as conditioning,
exactly as in training; the same ``ε`` at every ``t`` keeps timesteps comparable.

**Quantizable layers** are every ``nn.Linear`` and ``nn.Conv2d`` of the denoiser that the forward pass
calls (``finetune.quant``'s definition). :func:`probe_layers` runs one single-sample forward with hooks
and returns a :class:`LayerInfo` per layer in *execution order*, with its MACs per sample measured from the
actual output shape (Linear: ``out.numel()/B · in_features``; Conv2d: ``out.numel()/B · C_in/groups · kh · kw``),
and which layer reads the denoiser's input and which one writes its output.

**Grams, memory-bounded** (:func:`layer_grams`). A forward hook flattens a layer's output per sample
(``[N, D_i]``) and reduces it at once to the centred Gram ``K̃_i = X̃_i X̃_iᵀ`` (``N×N``, float64): raw
features are never kept beyond the hook that sees them. A layer that runs twice in one forward (its
per-sample feature is the concatenation ``[X_a, X_b]``) adds the Grams of its calls, since
``[X_a, X_b][X_a, X_b]ᵀ = X_a X_aᵀ + X_b X_bᵀ`` and centring is linear. When ``micro_batch < N`` (a forward
over all N samples does not fit) each layer's Gram needs all N rows, so layers are profiled in groups
whose raw features fit ``max_feature_bytes``: one forward per micro-batch and group stores only that
group's features, and stops as soon as the group's last layer ran.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from profiler.mpq.orthogonality import centered_gram_from_features

QUANTIZABLE = (nn.Linear, nn.Conv2d)
#: Raw-feature memory allowed per group of layers when the calibration batch is split into micro-batches.
DEFAULT_MAX_FEATURE_BYTES = 512 * 2**20


@dataclass
class LayerInfo:
    """One quantizable layer: its name in the denoiser and the sizes the allocator needs."""

    name: str
    kind: str                 # "linear" or "conv2d"
    weight_shape: tuple
    out_channels: int
    n_weights: int
    macs: int                 # multiply-accumulates per sample (summed over calls if called twice)
    feature_dim: int          # output values per sample (D_i)
    role: str = ""            # "input" (reads x_t), "output" (last layer run) or ""
    calls: int = 1            # times the layer runs per forward pass

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerInfo":
        return cls(**{**d, "weight_shape": tuple(d["weight_shape"])})


@dataclass
class CalibrationBatch:
    """Encoded calibration data: ``x0`` ``[N, C, h, w]``, ``cond`` ``[N, L, D]``, ``noise`` like ``x0``."""

    x0: torch.Tensor
    cond: torch.Tensor
    noise: torch.Tensor
    captions: list
    indices: list | None = None  # positions of the images in the split they came from

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def noised(self, model, t: int, idx: slice = slice(None)) -> torch.Tensor:
        """``x_t`` for rows ``idx`` at timestep ``t``."""
        x0, noise = self.x0[idx], self.noise[idx]
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
        return model.scheduler.add_noise(x0, noise, tt)

    def subset(self, n: int) -> "CalibrationBatch":
        return CalibrationBatch(self.x0[:n], self.cond[:n], self.noise[:n], list(self.captions[:n]),
                                None if self.indices is None else list(self.indices[:n]))


@torch.no_grad()
def calibration_batch(model, images, n: int = 32, seed: int = 0) -> CalibrationBatch:
    """``n`` image–caption pairs of ``images`` (an ``ImageTextDataset``, usually the train split), drawn
    with ``seed``, encoded for ``model`` (a ``T2IModel``); noise drawn from a CPU generator seeded ``seed``."""
    if n < 2:
        raise ValueError(f"the calibration batch needs at least 2 images (CKA compares samples), got n={n}")
    if len(images) < 2:
        raise ValueError(f"dataset {getattr(images, 'name', '') or '(unnamed)'} has {len(images)} image(s); "
                         "profiling needs at least 2")
    g = torch.Generator("cpu").manual_seed(int(seed))
    idx = torch.randperm(len(images), generator=g)[: min(n, len(images))].tolist()
    sub = images.subset(idx)
    x0 = model.encode_images(sub.to_tensor(model.resolution))
    cond = model.encode_prompt(list(sub.captions))
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float32).to(x0.device, x0.dtype)
    return CalibrationBatch(x0, cond, noise, list(sub.captions), idx)


def quantizable_names(denoiser: nn.Module) -> list[str]:
    """Names of all ``nn.Linear`` / ``nn.Conv2d`` submodules, in registration order."""
    return [n for n, m in denoiser.named_modules() if n and isinstance(m, QUANTIZABLE)]


def _per_sample(out: torch.Tensor, b: int, name: str) -> torch.Tensor:
    if out.shape[0] == b:
        return out.reshape(b, -1)
    if out.numel() % b == 0:  # batch folded into dim 0 batch-major (e.g. [B·heads, ...])
        return out.reshape(b, -1)
    raise RuntimeError(f"layer {name!r} returned shape {tuple(out.shape)}, which cannot be split into "
                       f"{b} samples; the profiler needs per-sample outputs")


def _macs(module: nn.Module, out: torch.Tensor, b: int) -> int:
    per_sample_out = out.numel() // b
    if isinstance(module, nn.Linear):
        return per_sample_out * module.in_features
    kh, kw = module.kernel_size
    return per_sample_out * (module.in_channels // module.groups) * kh * kw


@torch.no_grad()
def probe_layers(model, batch: CalibrationBatch, t: int | None = None) -> list[LayerInfo]:
    """:class:`LayerInfo` of every quantizable layer the forward pass calls, in execution order.

    Runs one forward on the first sample at timestep ``t`` (default ``T/2``). Raises if the denoiser has
    no ``nn.Linear`` / ``nn.Conv2d`` layer (e.g. it is already quantized).
    """
    denoiser = model.denoiser
    modules = {n: m for n, m in denoiser.named_modules() if n and isinstance(m, QUANTIZABLE)}
    if not modules:
        raise ValueError(f"{type(denoiser).__name__} has no nn.Linear or nn.Conv2d layer to profile "
                         "(is it already quantized?)")
    t = model.num_train_timesteps // 2 if t is None else int(t)
    one = batch.subset(1)
    x_t = one.noised(model, t)
    order: list[str] = []
    stats: dict[str, dict] = {}
    input_layers: list[str] = []

    def hook(name):
        def fn(mod, inputs, out):
            s = stats.setdefault(name, {"macs": 0, "dim": 0, "calls": 0})
            if not s["calls"]:
                order.append(name)
            s["calls"] += 1
            s["macs"] += _macs(mod, out, 1)
            s["dim"] += out.numel()
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].data_ptr() == x_t.data_ptr():
                input_layers.append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        model.denoise(x_t, t, one.cond)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise RuntimeError(f"no quantizable layer of {type(denoiser).__name__} ran in the forward pass")
    first = input_layers[0] if input_layers else order[0]
    infos = []
    for name in order:
        m = modules[name]
        role = "input" if name == first else "output" if name == order[-1] else ""
        infos.append(LayerInfo(name=name, kind="linear" if isinstance(m, nn.Linear) else "conv2d",
                               weight_shape=tuple(m.weight.shape), out_channels=int(m.weight.shape[0]),
                               n_weights=int(m.weight.numel()), macs=int(stats[name]["macs"]),
                               feature_dim=int(stats[name]["dim"]), role=role, calls=stats[name]["calls"]))
    return infos


class _StopForward(Exception):
    """Raised by the last hooked layer of a group: the rest of the forward pass is not needed."""


def _groups(layers: list[LayerInfo], n: int, max_bytes: int) -> list[list[int]]:
    groups, cur, size = [], [], 0
    for i, info in enumerate(layers):
        b = n * info.feature_dim * 4
        if cur and size + b > max_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += b
    if cur:
        groups.append(cur)
    return groups


@dataclass
class LayerGrams:
    """What one timestep's capture returns, for ``L`` layers and ``N`` samples."""

    grams: torch.Tensor    # [L, N, N] float64 centred Gram matrices K̃_i
    energy: torch.Tensor   # [L] float64 uncentred tr K_i = ‖X_i‖² (degeneracy test)
    input_max: torch.Tensor  # [L] float32 max |input| of each layer (activation-quantization range)


@torch.no_grad()
def layer_grams(model, batch: CalibrationBatch, t: int, layers: list[LayerInfo], micro_batch: int | None = None,
                max_feature_bytes: int = DEFAULT_MAX_FEATURE_BYTES) -> LayerGrams:
    """Centred Grams of ``layers``' outputs at timestep ``t`` over ``batch``, plus their input ranges.

    ``micro_batch`` (default: all N at once) bounds the forward's activation memory; see module doc.
    """
    n = len(batch)
    mb = n if micro_batch is None else max(1, min(int(micro_batch), n))
    modules = dict(model.denoiser.named_modules())
    missing = [info.name for info in layers if info.name not in modules]
    if missing:
        raise ValueError(f"layers {missing[:5]} are not in {type(model.denoiser).__name__}")
    grams = torch.zeros(len(layers), n, n, dtype=torch.float64)
    energy = torch.zeros(len(layers), dtype=torch.float64)
    amax = torch.zeros(len(layers), dtype=torch.float32)
    chunks = [slice(s, min(s + mb, n)) for s in range(0, n, mb)]
    groups = [list(range(len(layers)))] if len(chunks) == 1 else _groups(layers, n, max_feature_bytes)
    one_forward = len(chunks) == 1
    for group in groups:
        feats: dict[int, list] = {i: [] for i in group}   # micro-batched: this group's features per chunk
        calls: dict[int, list] = {i: [] for i in group}   # one forward's outputs (a layer may run twice)
        seen = {i: 0 for i in group}
        last = group[-1]
        cur_b = [0]

        def hook(i, name):
            def fn(mod, inputs, out):
                x = _per_sample(out.detach(), cur_b[0], name)
                if one_forward:  # reduce now: the raw output dies with this hook
                    k, e = _centred(x)
                    grams[i] += k
                    energy[i] += e
                else:
                    calls[i].append(x)
                seen[i] += 1
                lo, hi = torch.aminmax(inputs[0].detach())
                amax[i] = max(float(amax[i]), -float(lo), float(hi))
                if i == last and seen[i] == layers[i].calls:
                    raise _StopForward  # the rest of the forward pass feeds no hooked layer
            return fn

        handles = [modules[layers[i].name].register_forward_hook(hook(i, layers[i].name)) for i in group]
        try:
            for sl in chunks:
                cur_b[0] = sl.stop - sl.start
                for i in group:
                    seen[i] = 0
                try:
                    model.denoise(batch.noised(model, t, sl), t, batch.cond[sl])
                except _StopForward:
                    pass
                for i in group:
                    if not seen[i]:
                        raise RuntimeError(f"layer {layers[i].name!r} did not run at t={t}")
                    if not one_forward:
                        feats[i].append(torch.cat(calls[i], 1) if len(calls[i]) > 1 else calls[i][0])
                        calls[i].clear()
        finally:
            for h in handles:
                h.remove()
        if not one_forward:
            for i in group:
                grams[i], energy[i] = _centred(torch.cat(feats[i], 0))
                feats[i].clear()
    return LayerGrams(grams, energy, amax)


@torch.no_grad()
def input_ranges(model, batch: CalibrationBatch, timesteps, layers: list[LayerInfo]) -> torch.Tensor:
    """``[L]`` float32 max ``|input|`` of each of ``layers`` over ``batch`` at every one of ``timesteps``.

    One forward pass per timestep, no Grams (what :func:`layer_grams` records as ``input_max``, without
    the features): the activation ranges of a plan must cover the whole schedule, since layer inputs change
    with ``t`` (on the zoo DiT most for the attention projections and the time MLP).
    """
    modules = dict(model.denoiser.named_modules())
    amax = torch.zeros(len(layers), dtype=torch.float32)

    def hook(i):
        def fn(mod, inputs):
            lo, hi = torch.aminmax(inputs[0].detach())
            amax[i] = max(float(amax[i]), -float(lo), float(hi))
        return fn

    handles = [modules[info.name].register_forward_pre_hook(hook(i)) for i, info in enumerate(layers)]
    try:
        for t in timesteps:
            model.denoise(batch.noised(model, int(t)), int(t), batch.cond)
    finally:
        for h in handles:
            h.remove()
    return amax


def _centred(x: torch.Tensor):
    k, e = centered_gram_from_features(x)
    return k.cpu(), e


def weight_bytes_fp(layers: list[LayerInfo], bytes_per_weight: int = 4) -> int:
    """Bytes the layers' full-precision weights take (float32 by default)."""
    return sum(info.n_weights for info in layers) * bytes_per_weight


def total_macs(layers: list[LayerInfo]) -> int:
    return sum(info.macs for info in layers)


def describe(layers: list[LayerInfo]) -> str:
    n = sum(i.n_weights for i in layers)
    return (f"{len(layers)} quantizable layers, {n:,} weights, {total_macs(layers):,} MACs/sample, "
            f"largest {max(i.n_weights for i in layers):,} weights; "
            f"~{math.ceil(weight_bytes_fp(layers) / 2**20)} MiB in float32")
