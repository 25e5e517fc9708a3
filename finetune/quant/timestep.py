"""Choosing TuneQDM's timestep-specific scale set.

With ``N`` sets and ``T`` training timesteps, timestep ``t`` uses set ``k = ⌊t·N/T⌋`` (clamped to
``N − 1`` so ``t = T`` is allowed). The same call is used in training and in sampling::

    with timestep_scales(unet, timesteps):          # training: timesteps is [B]
        loss = mse(unet(noisy, timesteps, cond).sample, noise)

    for t in scheduler.timesteps:                    # sampling: one t for the whole (CFG-doubled) batch
        set_timestep_(unet, t)
        eps = unet(latents_in, t, cond).sample

A scalar (Python number, 0-d or one-element tensor) selects one set for the whole batch. A 1-D tensor of
``B`` timesteps selects a set per sample; every quantized layer with ``N > 1`` then requires its input's
leading dimension to be ``B`` (true for the UNet's Linear/Conv layers, whose inputs are ``[B, ...]``).
Layers with a single set ignore all of this.

:func:`follow_timesteps_` makes a denoiser do this itself: a forward pre-hook reads the ``timestep``
argument of every call (positional after the sample, as a UNet takes it, or the ``timestep=`` keyword, as
a PixArt transformer does) and selects the sets before the layers run. TuneQDM installs it in its
``setup_`` (and ``load_quantized_`` on a reloaded denoiser with several sets), so the generic model
adapter never needs to know about scale sets.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from finetune.quant.layers import QuantLayer


def timestep_set_index(t, n_sets: int, num_train_timesteps: int = 1000):
    """``⌊t·N/T⌋`` clamped to ``[0, N−1]``: an ``int`` for a scalar ``t``, a LongTensor ``[B]`` for a 1-D ``t``."""
    if num_train_timesteps <= 0:
        raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps!r}")
    tt = torch.as_tensor(t).detach()
    if tt.dim() > 1:
        raise ValueError(f"timesteps must be a scalar or a 1-D tensor, got shape {tuple(tt.shape)}")
    if tt.numel() == 0:
        raise ValueError("timesteps is empty")
    tf = tt.to(torch.float64)
    lo, hi = float(tf.min()), float(tf.max())
    if lo < 0 or hi > num_train_timesteps:
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps}], got values in [{lo}, {hi}]")
    k = torch.floor(tf * n_sets / num_train_timesteps).long().clamp_(0, n_sets - 1)
    return int(k.reshape(-1)[0]) if k.numel() == 1 else k


def _layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, QuantLayer) and m.n_timestep_sets > 1]


def set_timestep_(model: nn.Module, t, num_train_timesteps: int = 1000) -> nn.Module:
    """Make every quantized layer of ``model`` use the scale set of timestep(s) ``t``; returns ``model``."""
    for m in _layers(model):
        m._timestep_sets = timestep_set_index(t, m.n_timestep_sets, num_train_timesteps)
    return model


def clear_timestep_(model: nn.Module) -> nn.Module:
    """Forget the selected timestep (layers with several sets then refuse to run until one is set)."""
    for m in _layers(model):
        m._timestep_sets = None
    return model


@contextmanager
def timestep_scales(model: nn.Module, t, num_train_timesteps: int = 1000):
    """Context manager form of :func:`set_timestep_`; restores the previous selection on exit."""
    layers = _layers(model)
    previous = [m._timestep_sets for m in layers]
    set_timestep_(model, t, num_train_timesteps)
    try:
        yield model
    finally:
        for m, p in zip(layers, previous):
            m._timestep_sets = p


def _select_sets_hook(module: nn.Module, args, kwargs):
    """Forward pre-hook of :func:`follow_timesteps_`: select the sets of the call's timestep(s), if given."""
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if t is None:
        return None
    t = torch.as_tensor(t).detach()
    if t.dim() == 1 and t.numel() > 1 and bool((t == t[0]).all()):
        t = t[0]  # one interval for the whole batch: one scale set, no per-sample split
    set_timestep_(module, t, module._timestep_T)
    return None


def follow_timesteps_(denoiser: nn.Module, num_train_timesteps: int = 1000) -> nn.Module:
    """Make ``denoiser`` select its quantized layers' timestep scale sets from each forward call's
    ``timestep`` argument (a forward pre-hook; calling it again only updates ``num_train_timesteps``)."""
    if num_train_timesteps <= 0:
        raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps!r}")
    denoiser._timestep_T = int(num_train_timesteps)
    if not getattr(denoiser, "_follows_timesteps", False):
        denoiser.register_forward_pre_hook(_select_sets_hook, with_kwargs=True)
        denoiser._follows_timesteps = True
    return denoiser
