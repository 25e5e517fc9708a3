"""The bit allocators: what each (layer, weight bits, activation bits) choice is worth to the integer program.

Every allocator fills the same program (:func:`~profiler.mpq.allocate.allocate`: one choice per layer,
weight memory and bit operations under the budget, first and last layer pinned) and differs only in the
value table ``v_i(w, a)`` ``[L, |W|, |A|]`` it gives it. Registered (``mandc quantize --allocator NAME``):

* ``"grad-sensitivity"`` (:data:`DEFAULT_ALLOCATOR`) — the per-layer quantization error alone, estimated
  from gradient probes: ``v_i(w, a) = −(e_i^W(w) + e_i^A(a))``; ``"combined"`` at ``contrast = 0``.
* ``"combined"`` — orthogonality as the layer's **importance**, the measured per-layer quantization error
  as the **cost** of each choice::

      v_i(w, a) = −θ_i · (e_i^W(w) + e_i^A(a))

  ``θ`` is MPQ-Diff's aggregated importance (``exp(−β γ)``, max 1; ``contrast`` and ``alpha`` as for
  ``"mpq"``), ``e`` the output error when layer ``i`` alone is quantized at that choice, estimated from a
  few random gradient probes (:mod:`profiler.mpq.gradient_sensitivity`: ``R·T'`` backward passes instead
  of ``L·(|W|+|A|−1)·T'`` forwards). ``contrast = 0`` is the sensitivity allocation alone. Its θ comes
  from K = 3 sampled timesteps (Spearman 0.999 / 0.993 to a dense profile on the zoo UNet / DiT), so the
  two profiles together cost about what MPQ-Diff's K = 10 profile does (the K = 3 profile also gives every
  allocator its activation ranges, widened over 10 sampled timesteps by a forward-only pass on a few images:
  ``MPQConfig.range_timesteps``; K = 3 steps alone clip the inputs that change most with ``t``).
* ``"validated"`` — both plans above from the same profile and estimate, each applied and scored by the
  denoising loss on ``pick_samples`` training images outside the calibration batch
  (:func:`~profiler.mpq.profile.pick_by_validation`); the lower one is kept (ties: ``grad-sensitivity``).
  Two quantized evaluations per budget on top of ``"grad-sensitivity"``'s profile; without validation
  images it is ``"grad-sensitivity"``.
* ``"mpq"`` — MPQ-Diff as published (with the documented choices of :mod:`profiler.mpq.profile`):
  ``v = −θ_i · (D(w) + D(a))`` (:func:`mpq_values`), no sensitivity profile.
* ``"sensitivity"`` — the measured error alone, each layer quantized in turn at each choice
  (:func:`~profiler.mpq.baselines.sensitivity_profile`, ``L·(|W|+|A|−1)`` forwards per timestep): the
  baseline ``"combined"`` was measured against, selectable but slow.

An allocator is data (:class:`Allocator`: its name, what it measures, a values function); adding one is
:func:`register_allocator`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from profiler.mpq.allocate import A_CHOICES, W_CHOICES
from profiler.mpq.importance import suffix_mean

#: The allocator ``profile_bits``, ``mandc quantize`` and ``mandc plan`` use unless told otherwise: the best
#: measured one (``benchmarks/mpq.py``; README "Bits per layer").
DEFAULT_ALLOCATOR = "grad-sensitivity"
#: What an allocator may need besides the orthogonality profile (which every allocator gets: it also
#: supplies the activation ranges): ``None``, the gradient estimate of the sensitivity, or the exact one.
SENSITIVITY_KINDS = (None, "gradient", "exact")


@dataclass(frozen=True)
class Allocator:
    """One allocator: ``values(profile, sensitivity, config) -> (values [L, |W|, |A|], importance [L] or None)``.

    ``sensitivity`` says which sensitivity profile the values function reads (``None``: none); the caller
    measures it (:func:`profiler.mpq.profile.measure_sensitivity`) and passes it on the profile.
    """

    name: str
    help: str
    sensitivity: str | None
    values: Callable
    timesteps: int = 10    # K sampled timesteps of its orthogonality profile unless the config sets them
    candidates: tuple = ()  # allocators whose plans it scores on validation images, keeping the best one

    def __post_init__(self) -> None:
        if self.sensitivity not in SENSITIVITY_KINDS:
            raise ValueError(f"allocator {self.name!r}: sensitivity must be one of {SENSITIVITY_KINDS}, "
                             f"got {self.sensitivity!r}")


ALLOCATORS: dict[str, Allocator] = {}


def register_allocator(allocator: Allocator) -> Allocator:
    """Add ``allocator`` to :data:`ALLOCATORS` (a name may be registered once)."""
    if allocator.name in ALLOCATORS:
        raise ValueError(f"allocator {allocator.name!r} is already registered")
    ALLOCATORS[allocator.name] = allocator
    return allocator


def get_allocator(name: str) -> Allocator:
    """The registered allocator ``name``; a clear error naming the choices otherwise."""
    try:
        return ALLOCATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown bit allocator {name!r}; choose one of {', '.join(sorted(ALLOCATORS))}") from None


def quant_noise(bits) -> np.ndarray:
    """Relative noise power of a symmetric ``b``-bit quantizer: ``(step / range)² = 1/(2^(b−1) − 1)²``."""
    b = np.asarray(bits, dtype=np.float64)
    return 1.0 / (2.0 ** (b - 1) - 1.0) ** 2


def mpq_values(theta: np.ndarray, w_choices=W_CHOICES, a_choices=A_CHOICES, objective: str = "noise") -> np.ndarray:
    """Values ``v_i(w, a)`` ``[L, |W|, |A|]`` (choices sorted ascending) for importances ``θ`` ``[L]``.

    * ``"noise"`` (default): ``v = −θ_i · (D(w) + D(a))``, ``D(b) = 1/(2^(b−1)−1)²`` — importance-weighted
      quantization noise of the layer's weights and of its input, each relative to its range.
    * ``"bits"``: ``v = θ_i · (w/max W + a/max A)`` — OMPQ's importance-weighted bits, literally.
    """
    ws = np.array(sorted(set(w_choices)), dtype=np.float64)
    as_ = np.array(sorted(set(a_choices)), dtype=np.float64)
    if objective == "noise":
        unit = -(quant_noise(ws)[:, None] + quant_noise(as_)[None, :])
    elif objective == "bits":
        unit = ws[:, None] / ws.max() + as_[None, :] / as_.max()
    else:
        raise ValueError(f"objective must be one of ('noise', 'bits'), got {objective!r}")
    return np.asarray(theta, dtype=np.float64)[:, None, None] * unit[None]


def combined_values(theta: np.ndarray, sensitivity) -> np.ndarray:
    """``v_i(w, a) = −θ_i · (e_i^W(w) + e_i^A(a))`` ``[L, |W|, |A|]`` for importances ``θ`` ``[L]`` and a
    :class:`~profiler.mpq.baselines.Sensitivity` over the same layers."""
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (len(sensitivity.layers),):
        raise ValueError(f"importance has shape {theta.shape}, the sensitivity profile {len(sensitivity.layers)} layers")
    return theta[:, None, None] * sensitivity.values()


def _theta(profile, config) -> np.ndarray:
    return profile.importance(profile.beta(config), config.alpha)


def _needs(profile, name: str):
    s = getattr(profile, "sensitivity", None)
    if s is None:
        raise ValueError(f"the {name!r} allocator needs a sensitivity profile on the importance profile "
                         "(profiler.mpq.profile.measure_sensitivity)")
    return s


def _mpq(profile, sensitivity, config):
    theta = _theta(profile, config)
    return mpq_values(suffix_mean(theta) if config.propagate else theta, config.w_choices, config.a_choices,
                      config.objective), theta


def _combined(profile, sensitivity, config):
    theta = _theta(profile, config)
    return combined_values(theta, sensitivity), theta


def _sensitivity(profile, sensitivity, config):
    return sensitivity.values(), None


register_allocator(Allocator(
    "grad-sensitivity", "per-layer quantization error estimated by gradient probes; the default", "gradient",
    _sensitivity, timesteps=3))
register_allocator(Allocator(
    "combined", "orthogonality importance × per-layer quantization error (gradient-estimated)", "gradient",
    _combined, timesteps=3))
register_allocator(Allocator(
    "validated", "the plan of grad-sensitivity or combined (same profile and estimate) with the lower loss on "
    "validation images", "gradient", _sensitivity, timesteps=3, candidates=("grad-sensitivity", "combined")))
register_allocator(Allocator(
    "mpq", "MPQ-Diff as published: orthogonality importance × quantizer noise power", None, _mpq))
register_allocator(Allocator(
    "sensitivity", "per-layer quantization error alone, each layer quantized in turn (slow: L·8 forwards per "
    "timestep)", "exact", _sensitivity))


def allocator_values(profile, config) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values, importance)`` of ``config.allocator`` on ``profile`` (its ``sensitivity`` when needed)."""
    a = get_allocator(config.allocator)
    sens = _needs(profile, a.name) if a.sensitivity else None
    if sens is not None and (list(sens.w_choices) != sorted(set(config.w_choices))
                             or list(sens.a_choices) != sorted(set(config.a_choices))):
        raise ValueError(f"the sensitivity profile covers W{sens.w_choices} A{sens.a_choices}, the config "
                         f"W{sorted(set(config.w_choices))} A{sorted(set(config.a_choices))}")
    return a.values(profile, sens, config)
