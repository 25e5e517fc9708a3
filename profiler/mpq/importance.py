"""Layer importance from orthogonality, sampled timesteps and their exponential aggregation.

Per sampled timestep ``t`` (OMPQ's metric, MPQ-Diff's per-step use of it)::

    γ_i(t) = Σ_{j≠i} ORM_t(i, j),        θ_i(t) = exp(−β · γ_i(t))

A layer whose output is more orthogonal to the others' carries more unique information and gets a larger
``θ``. The ``K`` sampled steps are aggregated with exponential weights over their position in the schedule::

    θ_i = Σ_t w_t θ_i(t),     w_t ∝ exp(α · t / (T − 1))

``α = 0`` is the plain mean; ``α > 0`` weights the noisy steps (large ``t``, the start of sampling),
``α < 0`` the clean ones. Using ``t/(T−1)`` rather than the index among the ``K`` samples keeps the
weighting the same function of ``t`` whatever ``K`` is, so a K-step and an all-steps profile aggregate
alike.

**Scale.** Only ratios of ``θ`` matter to the allocator (its objective is linear in ``θ``), and
``exp(−β γ)`` spans many orders of magnitude for a network of ~100 layers, so the aggregation runs in
log space (``logsumexp``) and the result is divided by its maximum: the largest importance is 1.

**β's scale.** ``γ`` sums over the other ``L−1`` layers, so its spread grows with the network (about
15 for a 96-layer UNet, 5 for a 47-layer DiT in the zoo) and one absolute ``β`` means very different
things on different models. :func:`beta_for_contrast` sets ``β = c / std_i(γ̄_i)`` (``γ̄`` the mean over
timesteps): two layers one standard deviation apart differ in importance by ``e^c`` whatever the model.

**Timesteps.** ``sample_timesteps(T, K)`` takes the midpoints of ``K`` equal strata of ``{0, …, T−1}``
(uniform, deterministic: the same K gives the same steps on every run); ``K = T`` is every step.
"""
from __future__ import annotations

import numpy as np


def sample_timesteps(num_train_timesteps: int, k: int) -> list[int]:
    """``K`` timesteps uniformly spread over ``0 … T−1`` (midpoints of equal strata), ascending."""
    T = int(num_train_timesteps)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= T:
        raise ValueError(f"timesteps must be an integer K in 1..{T} (the scheduler's T), got {k!r}")
    return sorted({int((i + 0.5) * T / k) for i in range(int(k))})


def log_importance(gamma: np.ndarray, beta: float) -> np.ndarray:
    """``log θ = −β γ`` for ``γ`` of any shape (``[K, L]`` per timestep or ``[L]``)."""
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    return -float(beta) * np.asarray(gamma, dtype=np.float64)


def beta_for_contrast(gamma: np.ndarray, contrast: float) -> float:
    """``β = c / std over layers of the time-mean γ`` (0 when all layers have the same γ)."""
    if not np.isfinite(contrast) or contrast < 0:
        raise ValueError(f"contrast must be a finite number >= 0, got {contrast!r}")
    gamma = np.asarray(gamma, dtype=np.float64)
    spread = float((gamma.mean(0) if gamma.ndim == 2 else gamma).std())
    return float(contrast) / spread if spread > 0 else 0.0


def timestep_weights(timesteps, num_train_timesteps: int, alpha: float) -> np.ndarray:
    """``w_t ∝ exp(α · t/(T−1))`` ``[K]``, summing to 1."""
    if not np.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    pos = np.asarray(timesteps, dtype=np.float64) / max(int(num_train_timesteps) - 1, 1)
    logits = float(alpha) * pos
    w = np.exp(logits - logits.max())
    return w / w.sum()


def aggregate_importance(gamma: np.ndarray, timesteps, num_train_timesteps: int, beta: float,
                         alpha: float = 0.0) -> np.ndarray:
    """Aggregated importance ``θ`` ``[L]`` (max 1) from per-timestep ``γ`` ``[K, L]``; see module doc."""
    gamma = np.asarray(gamma, dtype=np.float64)
    if gamma.ndim != 2 or gamma.shape[0] != len(timesteps):
        raise ValueError(f"gamma must be [K, L] with one row per timestep ({len(timesteps)}), got {gamma.shape}")
    logw = np.log(timestep_weights(timesteps, num_train_timesteps, alpha))
    z = logw[:, None] + log_importance(gamma, beta)           # log(w_t θ_i(t))
    zmax = z.max(0)
    log_theta = zmax + np.log(np.exp(z - zmax).sum(0))        # logsumexp over t
    return np.exp(log_theta - log_theta.max())


def suffix_mean(theta: np.ndarray) -> np.ndarray:
    """``θ̄_i = mean(θ_i, θ_{i+1}, …, θ_L)`` over layers in execution order (OMPQ's objective weights:
    a layer's precision also affects every layer after it)."""
    theta = np.asarray(theta, dtype=np.float64)
    return np.cumsum(theta[::-1])[::-1] / np.arange(len(theta), 0, -1)
