"""Timesteps of one noise schedule matched to another's by signal-to-noise ratio.

A timestep names a noise level only through its schedule: x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, so
SNR(t) = ᾱ_t / (1 − ᾱ_t), monotone in ᾱ_t. A window of timesteps tuned on one schedule (a paper's, on
SD 1.5's scaled-linear betas) is the same noise levels on another schedule (the zoo's cosine ᾱ_t) only
after mapping it by ᾱ_t; the step indices themselves do not carry over.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

#: Stable Diffusion 1.5's training schedule (its ``scheduler_config.json``): the schedule the published
#: timestep windows (ZOODiP's 500–899) were chosen on.
SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear"}


def alphas_cumprod(scheduler) -> torch.Tensor:
    """ᾱ_t ``[T]`` (float64) of a diffusers scheduler (anything with ``alphas_cumprod``), or of a scheduler
    config mapping, built as diffusers' ``DDPMScheduler`` (which ignores keys it does not know)."""
    if isinstance(scheduler, Mapping):
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(dict(scheduler))
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod: not a DDPM-style noise schedule")
    return torch.as_tensor(ac).double()


def snr_matched_window(scheduler, window: tuple[int, int], reference=SD15_SCHEDULER) -> tuple[int, int]:
    """The half-open window ``[lo, hi)`` of ``scheduler``'s timesteps that spans the same ᾱ (SNR) range as
    ``window`` = ``[w_lo, w_hi)`` does on ``reference`` (default: SD 1.5).

    With ᾱ decreasing in t on both schedules,

    .. math::
        lo = \\#\\{t : ᾱ(t) > ᾱ_{ref}(w_{lo})\\}, \\qquad hi = \\#\\{t : ᾱ(t) ≥ ᾱ_{ref}(w_{hi} − 1)\\},

    so ``{lo, …, hi − 1}`` = ``{t : ᾱ_ref(w_hi − 1) ≤ ᾱ(t) ≤ ᾱ_ref(w_lo)}``: the identity when the two
    schedules are the same. A window beyond ``scheduler``'s ᾱ range is clamped to keep ≥ 1 timestep.
    ``scheduler`` and ``reference``: a scheduler or a scheduler config (see :func:`alphas_cumprod`).
    """
    ref, ac = alphas_cumprod(reference), alphas_cumprod(scheduler)
    w_lo, w_hi = int(window[0]), int(window[1])
    if not 0 <= w_lo < w_hi <= len(ref):
        raise ValueError(f"window {window} is not a non-empty range of the reference's {len(ref)} timesteps")
    lo = int((ac > ref[w_lo]).sum())
    hi = int((ac >= ref[w_hi - 1]).sum())
    lo = min(lo, len(ac) - 1)
    return lo, max(hi, lo + 1)
