"""MPQ-Diff end to end: profile layer orthogonality over sampled timesteps, then allocate bits.

``profile_bits(model, dataset, avg_bits=4)`` → :class:`~profiler.mpq.bitplan.BitPlan`:

1. a calibration batch of ``N`` training images with their captions (:mod:`profiler.mpq.capture`);
2. at each of ``K`` uniformly sampled timesteps: centred Grams of every quantizable layer's output, the
   all-pairs ORM (linear CKA, :mod:`profiler.mpq.orthogonality`) and ``γ_i(t) = Σ_{j≠i} ORM_t(i, j)``;
3. importance ``θ_i = Σ_t w_t exp(−β γ_i(t))``, ``w_t ∝ exp(α t/(T−1))`` (:mod:`profiler.mpq.importance`),
   and OMPQ's propagated weight ``θ̄_i`` = mean of ``θ`` over layer ``i`` and the layers after it;
4. the integer program of :mod:`profiler.mpq.allocate` with values (see :func:`mpq_values`)::

       v_i(w, a) = θ̄_i · (w/8 + a/16)

   — OMPQ's "importance-weighted bits" with bits normalised by their maximum (``x = bits/8`` in OMPQ),
   the activation term added the same way (MPQ-Diff allocates both).

Defaults and why (measured by ``benchmarks/mpq.py`` on the zoo; see the report in the README):

* ``N = 32`` calibration images (OMPQ's batch; CKA over 32 samples ranks layers stably).
* ``K = 10`` timesteps.
* ``β`` and ``α``: see :data:`DEFAULT_BETA`, :data:`DEFAULT_ALPHA` (chosen by validation on training
  images, never on the held-out split; :func:`select_alpha_beta` reruns the selection for a model).
* The first layer (the one reading ``x_t``) and the last (writing the prediction) are pinned to W8A8, as
  is common (Q-Diffusion, PTQ4DM): they are tiny, and their error reaches the output unfiltered. They
  count in the budget like any layer.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from profiler.mpq.allocate import (A_CHOICES, W_CHOICES, Allocation, Budget, allocate, average_bits, check_budget,
                                   layer_weight_bytes, plan_bops)
from profiler.mpq.bitplan import BitPlan
from profiler.mpq.capture import (DEFAULT_MAX_FEATURE_BYTES, CalibrationBatch, LayerInfo, calibration_batch,
                                  layer_grams, probe_layers)
from profiler.mpq.importance import aggregate_importance, sample_timesteps, suffix_mean
from profiler.mpq.orthogonality import cka_matrix, degenerate_mask, orthogonality_sums

DEFAULT_BETA = 1.0
DEFAULT_ALPHA = 0.0

#: ``progress(stage, done, total)``: called as profiling advances (stage: "profile", "calibrate", ...).
Progress = Callable[[str, int, int], None]


@dataclass
class MPQConfig:
    """Settings of an MPQ-Diff profile and allocation (the defaults are the documented choices)."""

    timesteps: int = 10                 # K sampled timesteps (uniform strata of 0..T-1); T = every step
    n_calib: int = 32                   # calibration batch size N
    beta: float = DEFAULT_BETA          # θ = exp(-β γ)
    alpha: float = DEFAULT_ALPHA        # timestep weights ∝ exp(α t/(T-1)); 0 = plain mean
    propagate: bool = True              # OMPQ's θ̄ (mean over the layer and those after it) instead of θ
    objective: str = "noise"            # value of a choice: "noise" or OMPQ's literal "bits" (see mpq_values)
    seed: int = 0                       # calibration images and noise
    w_choices: tuple = W_CHOICES
    a_choices: tuple = A_CHOICES
    pin_first_last: bool = True         # first (reads x_t) and last layer at pin_bits
    pin_bits: tuple = (8, 8)
    a_bits_reference: int | None = 8    # BOPs budget = BOPs of the average weight bits with these activation bits
    micro_batch: int | None = None      # split the calibration forward (memory); None = all N at once
    max_feature_bytes: int = DEFAULT_MAX_FEATURE_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.n_calib, bool) or not isinstance(self.n_calib, int) or self.n_calib < 2:
            raise ValueError(f"n_calib must be an integer >= 2, got {self.n_calib!r}")
        if not np.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if not np.isfinite(self.alpha):
            raise ValueError(f"alpha must be finite, got {self.alpha!r}")


@dataclass
class ImportanceProfile:
    """Orthogonality sums ``γ`` ``[K, L]`` of ``layers`` at ``timesteps``; importance for any ``β, α``."""

    layers: list[LayerInfo]
    timesteps: list[int]
    num_train_timesteps: int
    gamma: np.ndarray
    n_calib: int
    seconds: float = 0.0
    degenerate: np.ndarray | None = None   # [K, L] layers constant over the batch at that step
    orm: np.ndarray | None = None          # [K, L, L] when kept (keep_orm=True)

    def importance(self, beta: float = DEFAULT_BETA, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
        """Aggregated ``θ`` ``[L]`` in execution order, max 1."""
        return aggregate_importance(self.gamma, self.timesteps, self.num_train_timesteps, beta, alpha)

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.layers]


def profile_importance(model, batch: CalibrationBatch, timesteps: int | list[int] = 10,
                       layers: list[LayerInfo] | None = None, micro_batch: int | None = None,
                       max_feature_bytes: int = DEFAULT_MAX_FEATURE_BYTES, keep_orm: bool = False,
                       progress: Progress | None = None) -> ImportanceProfile:
    """Per-timestep orthogonality of every quantizable layer of ``model`` on ``batch``.

    ``timesteps``: ``K`` (sampled with :func:`~profiler.mpq.importance.sample_timesteps`) or explicit steps.
    """
    T = model.num_train_timesteps
    ts = sample_timesteps(T, timesteps) if isinstance(timesteps, (int, np.integer)) else [int(t) for t in timesteps]
    bad = [t for t in ts if not 0 <= t < T]
    if not ts or bad:
        raise ValueError(f"timesteps must lie in 0..{T - 1}, got {bad or ts}")
    layers = layers if layers is not None else probe_layers(model, batch)
    t0 = time.perf_counter()
    gamma = np.zeros((len(ts), len(layers)))
    dead = np.zeros((len(ts), len(layers)), dtype=bool)
    orms = [] if keep_orm else None
    for k, t in enumerate(ts):
        grams, energy = layer_grams(model, batch, t, layers, micro_batch, max_feature_bytes)
        orm = cka_matrix(grams, energy, centered=True)
        gamma[k] = orthogonality_sums(orm).numpy()
        dead[k] = degenerate_mask(grams, energy).numpy()
        if dead[k].any() and not dead[k].all():
            # Constant over the batch at this t (time-embedding layers): CKA cannot rank them, and their
            # formal γ = 0 would outrank every real layer by exp(β·γ). Rank them with the most orthogonal
            # real layer instead (see the module doc).
            gamma[k, dead[k]] = gamma[k, ~dead[k]].min()
        if keep_orm:
            orms.append(orm.numpy())
        if progress is not None:
            progress("profile", k + 1, len(ts))
    return ImportanceProfile(layers, ts, T, gamma, len(batch), time.perf_counter() - t0, dead,
                             None if orms is None else np.stack(orms))


OBJECTIVES = ("noise", "bits")


def quant_noise(bits) -> np.ndarray:
    """Relative noise power of a symmetric ``b``-bit quantizer: ``(step / range)² = 1/(2^(b−1) − 1)²``."""
    b = np.asarray(bits, dtype=np.float64)
    return 1.0 / (2.0 ** (b - 1) - 1.0) ** 2


def mpq_values(theta_bar: np.ndarray, w_choices=W_CHOICES, a_choices=A_CHOICES, objective: str = "noise") -> np.ndarray:
    """Values ``v_i(w, a)`` ``[L, |W|, |A|]`` (choices sorted ascending) for importance ``θ̄`` ``[L]``.

    * ``"noise"`` (default): ``v = −θ̄_i · (D(w) + D(a))``, ``D(b) = 1/(2^(b−1)−1)²`` — importance-weighted
      quantization noise of the layer's weights and input (each relative to its range), to be minimised.
    * ``"bits"``: ``v = θ̄_i · (w/max W + a/max A)`` — OMPQ's importance-weighted bits, literally.
    """
    ws = np.array(sorted(set(w_choices)), dtype=np.float64)
    as_ = np.array(sorted(set(a_choices)), dtype=np.float64)
    if objective == "noise":
        unit = -(quant_noise(ws)[:, None] + quant_noise(as_)[None, :])
    elif objective == "bits":
        unit = ws[:, None] / ws.max() + as_[None, :] / as_.max()
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return np.asarray(theta_bar, dtype=np.float64)[:, None, None] * unit[None]


def pinned_layers(layers: list[LayerInfo], config: MPQConfig) -> dict:
    """``{index: (w, a)}`` of the layers fixed by ``config`` (first and last, when ``pin_first_last``)."""
    if not config.pin_first_last:
        return {}
    return {i: tuple(config.pin_bits) for i, info in enumerate(layers) if info.role in ("input", "output")}


def resolve_budget(layers: list[LayerInfo], budget=None, avg_bits: float | None = None,
                   a_bits_reference: int | None = 8) -> Budget:
    """A :class:`Budget` from ``budget`` (a Budget, a dict of its fields, or a number of bytes in the
    stored ``"packed"`` layout) or from ``avg_bits`` (nominal); exactly one of the two."""
    if (budget is None) == (avg_bits is None):
        raise ValueError("give exactly one budget: budget=<bytes or Budget> or avg_bits=<average weight bits>")
    if avg_bits is not None:
        return Budget.from_avg_bits(layers, float(avg_bits), a_bits_reference)
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, dict):
        return Budget(**budget)
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return Budget.from_bytes(layers, float(budget), a_bits_reference)
    raise TypeError(f"budget must be a Budget, a dict or a number of bytes, got {type(budget).__name__}")


def plan_from_allocation(layers: list[LayerInfo], alloc: Allocation, budget: Budget, importance=None,
                         settings: dict | None = None, timing: dict | None = None) -> BitPlan:
    """Wrap an :class:`Allocation` as a :class:`BitPlan` with usage in both storage models."""
    usage = {
        "weight_bytes": alloc.weight_bytes,
        "nominal_bytes": sum(layer_weight_bytes(i, w, "nominal") for i, w in zip(layers, alloc.w_bits)),
        "packed_bytes": sum(layer_weight_bytes(i, w, "packed") for i, w in zip(layers, alloc.w_bits)),
        "float_bytes": 4 * sum(i.n_weights for i in layers),
        "bops": plan_bops(layers, alloc.w_bits, alloc.a_bits),
        "avg_bits": average_bits(layers, alloc.w_bits),
    }
    return BitPlan(
        layers={i.name: {"w_bits": int(w), "a_bits": int(a)} for i, w, a in zip(layers, alloc.w_bits, alloc.a_bits)},
        budget=budget.to_dict(), usage=usage,
        importance={} if importance is None else {i.name: float(v) for i, v in zip(layers, importance)},
        layer_info={i.name: {k: v for k, v in i.to_dict().items() if k != "name"} for i in layers},
        settings=dict(settings or {}), timing={"solve_s": alloc.solve_s, **(timing or {})})


def plan_from_profile(profile: ImportanceProfile, budget: Budget, config: MPQConfig | None = None,
                      extra_settings: dict | None = None) -> BitPlan:
    """MPQ-Diff's allocation for an existing profile (cheap: reuse one profile for many budgets)."""
    config = config or MPQConfig()
    layers = profile.layers
    theta = profile.importance(config.beta, config.alpha)
    weight = suffix_mean(theta) if config.propagate else theta
    values = mpq_values(weight, config.w_choices, config.a_choices, config.objective)
    alloc = allocate(layers, values, budget, config.w_choices, config.a_choices, pinned_layers(layers, config))
    settings = {"allocator": "mpq", **_settings(config), "timesteps": list(profile.timesteps),
                "num_train_timesteps": profile.num_train_timesteps, "n_calib": profile.n_calib,
                "pinned": [layers[i].name for i in pinned_layers(layers, config)], **(extra_settings or {})}
    return plan_from_allocation(layers, alloc, budget, theta, settings, {"profile_s": profile.seconds})


def _settings(config: MPQConfig) -> dict:
    d = asdict(config)
    d["w_choices"], d["a_choices"], d["pin_bits"] = list(config.w_choices), list(config.a_choices), list(config.pin_bits)
    d["k"] = d.pop("timesteps")
    return d


def _load(model, dataset):
    from data import SplitDataset, load_dataset
    from finetune.model import T2IModel

    if not hasattr(model, "denoiser"):
        model = T2IModel.from_pretrained(model)
    ds = dataset if isinstance(dataset, SplitDataset) else load_dataset(dataset)
    return model, ds


def profile_bits(model, dataset, budget=None, *, avg_bits: float | None = None, timesteps: int | list[int] = 10,
                 config: MPQConfig | None = None, progress: Progress | None = None, **overrides) -> BitPlan:
    """Profile ``model`` on ``dataset`` and allocate per-layer bits: the MPQ-Diff entry point.

    Args:
        model: a ``T2IModel`` or a model reference (``zoo:NAME``, a diffusers folder, a Hub id).
        dataset: a ``SplitDataset`` or a dataset reference; calibration images come from its train split.
        budget: weight memory in bytes as ``finetune.quant`` stores it (or a :class:`Budget`); the BOPs
            budget is then that of a uniform plan of the same average bits with 8-bit activations.
        avg_bits: instead of ``budget``: average weight bits (nominal bytes, BOPs of ``W{avg}A8``).
        timesteps: ``K`` sampled timesteps (or explicit steps).
        config: an :class:`MPQConfig`; ``overrides`` set its fields (``beta=…``, ``n_calib=…``).
        progress: ``progress(stage, done, total)``.

    Raises:
        InfeasibleBudgetError: the budget is below the smallest feasible one (stated in the message).
    """
    config = MPQConfig(**{**asdict(config or MPQConfig()), "timesteps": timesteps, **overrides})
    model, ds = _load(model, dataset)
    batch = calibration_batch(model, ds.train, config.n_calib, config.seed)
    layers = probe_layers(model, batch)
    bud = resolve_budget(layers, budget, avg_bits, config.a_bits_reference)
    # Infeasible budgets fail before the (long) profile.
    check_budget(layers, bud, config.w_choices, config.a_choices, pinned_layers(layers, config))
    prof = profile_importance(model, batch, config.timesteps, layers, config.micro_batch, config.max_feature_bytes,
                              progress=progress)
    return plan_from_profile(prof, bud, config, {"model": _ref(model), "dataset": getattr(ds, "ref", None) or ds.name})


def _ref(model) -> str | None:
    path = getattr(getattr(model, "pipeline", None), "name_or_path", None) or \
        getattr(getattr(model, "pipeline", None), "_name_or_path", None)
    return str(path) if path else None
