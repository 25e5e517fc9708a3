"""The one training loop: a prepared :class:`~finetune.methods.Method` steps over encoded training data.

``finetune.run`` (fine-tuning with a method, metered, evaluated, resumable) and the zoo's pretraining
(``finetune.zoo.builder``: the ``full`` method on a weighted mixture) both train through :func:`train_`,
so the batch draw, caption dropout, timesteps, noise, Min-SNR weighting, warm-up and clipping are the
same code everywhere; they are set by the method's config (:class:`~finetune.methods.MethodConfig`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def warmup_lr_(optimizer, base_lrs: list[float], step: int, warmup_steps: int) -> None:
    """Linear warm-up: step ``k`` (from 0) trains with ``base·min(1, (k+1)/warmup_steps)`` in every param
    group of ``optimizer`` (none: a gradient-free method keeps its own lr)."""
    factor = min(1.0, (step + 1) / warmup_steps)
    for group, base in zip(getattr(optimizer, "param_groups", ()), base_lrs):
        group["lr"] = base * factor


def train_(method, data, g: torch.Generator, *, base_lrs: list[float] | None = None, start: int = 0,
           losses: list[float] | None = None, progress: Callable[[int, int], None] | None = None,
           after_step: Callable[[int, list[float]], None] | None = None) -> tuple[list[float], list[float]]:
    """Step ``method`` (set up, with its optimizer made) from step ``start`` to ``config.steps``.

    ``g`` seeds every draw (:meth:`Method.step`); ``base_lrs`` are the optimizer's param-group lrs before
    any warm-up (default: as they are now, which is right when ``start`` is 0). ``losses`` are those of
    the steps before ``start`` (resuming); ``progress(done, total)`` and ``after_step(done, losses)``
    (e.g. a checkpoint) are called after every step. Returns ``(losses, seconds per step)``; raises
    ``FloatingPointError`` at the first non-finite loss (the run diverged: nothing would be worth saving).
    """
    cfg = method.config
    if base_lrs is None:
        base_lrs = [group["lr"] for group in getattr(method.optimizer, "param_groups", ())]
    losses = list(losses or [])
    times: list[float] = []
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        if cfg.warmup_steps > 1:
            warmup_lr_(method.optimizer, base_lrs, step, cfg.warmup_steps)
        loss = method.step(data, g)
        if not math.isfinite(loss):
            raise FloatingPointError(f"{method.name}: the training loss is {loss} at step {step}; "
                                     f"lower the lr (now {cfg.lr})")
        losses.append(loss)
        times.append(time.perf_counter() - t0)
        if after_step is not None:
            after_step(step + 1, losses)
        if progress is not None:
            progress(step + 1, cfg.steps)
    return losses, times
