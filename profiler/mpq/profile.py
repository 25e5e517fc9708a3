"""MPQ-Diff end to end: profile layer orthogonality over sampled timesteps, then allocate bits.

``profile_bits(model, dataset, avg_bits=4)`` → :class:`~profiler.mpq.bitplan.BitPlan`:

1. a calibration batch of ``N`` training images with their captions (:mod:`profiler.mpq.capture`);
2. at each of ``K`` uniformly sampled timesteps: centred Grams of every quantizable layer's output, the
   all-pairs ORM (linear CKA, :mod:`profiler.mpq.orthogonality`) and ``γ_i(t) = Σ_{j≠i} ORM_t(i, j)``;
3. importance ``θ_i = Σ_t w_t exp(−β γ_i(t))``, ``w_t ∝ exp(α t/(T−1))`` (:mod:`profiler.mpq.importance`);
4. the integer program of :mod:`profiler.mpq.allocate` over (weight, activation) bit pairs, maximising
   importance-weighted precision (:func:`mpq_values`) under the memory and bit-operations budgets.

Which values fill the program is the allocator (``config.allocator``, :mod:`profiler.mpq.allocators`):
the default ``"grad-sensitivity"`` minimises a per-layer sensitivity profile (:func:`measure_sensitivity`,
measured after step 2), ``"combined"`` weighs it by ``θ``; ``"mpq"`` is MPQ-Diff as published (steps 1–4
exactly), and what this docstring's measurements below are about.

Choices where the paper is silent, measured on ``zoo:unet-xs-gradients`` (96 layers) and
``zoo:dit-s-gradients`` (47 layers) with ``builtin:gradients_linear``: held-out denoising-loss increase
over full precision at 3 / 4 / 5 average weight bits, equal memory and BOPs, K = 10, N = 32, contrast 1,
α = 0 unless said; ``python benchmarks/mpq.py --ablations`` prints these numbers (the comparison with the
other allocators is ``benchmarks/mpq.py`` itself). Uniform W3A8 / W4A8 / W5A8 lose 0.0386 / 0.0153 / 0.0074
(UNet) and 0.0385 / 0.0082 / 0.0030 (DiT).

* **Value of a choice** (``objective``). OMPQ's literal objective, importance-weighted bits
  ``θ_i·(w/8 + a/16)``, is linear in the bits, so the program sends every layer to an extreme (2 or 8
  bits) and the big layers to 2: 0.124 / 0.108 / 0.076 (UNet) and 0.037 / 0.055 / 0.037 (DiT), *worse*
  than uniform. The default ``"noise"`` weighs the relative noise power of a ``b``-bit quantizer instead,
  ``v = −θ_i·(D(w) + D(a))``, ``D(b) = 1/(2^(b−1)−1)²`` — a rate–distortion reading of "importance-weighted
  bits" that spreads the bits: 0.0206 / 0.0048 / 0.0036 (UNet) and 0.0119 / 0.0050 / 0.0027 (DiT).
* **Propagation** (``propagate``: OMPQ's ``θ̄_i``, the mean of ``θ`` over layer ``i`` and the layers after
  it, as the weight instead of ``θ_i``): off by default. With it: 0.0236 / 0.0050 / 0.0080 (UNet) and
  0.0191 / 0.0053 / 0.0033 (DiT), worse at every budget; with (contrast, α) chosen by validation, worse in
  5 of 6 cases and tied in one (UNet 0.0236 / 0.0050 / 0.0032 against 0.0145 / 0.0046 / 0.0032; DiT
  0.0177 / 0.0052 / 0.0033 against 0.0115 / 0.0050 / 0.0028). In a UNet "the layers after" a layer in
  execution order are not what it feeds (skip connections), and the suffix mean flattens θ towards the
  network mean.
* **β** is set by a scale-free contrast ``c`` (``β = c / std_i γ̄_i``, see
  :func:`~profiler.mpq.importance.beta_for_contrast`; an absolute ``beta`` overrides it): one absolute β
  means different things for 47 and 96 layers. ``c = 0`` (no orthogonality signal, only the size- and
  MAC-aware noise objective) gave 0.0238 / 0.0046 / 0.0046 (UNet) and 0.0273 / 0.0070 / 0.0032 (DiT):
  the signal matters most on the DiT and at 3 bits (on the UNet at 4 bits it is no better than none).
* **β and α by validation** (``validate=True``): each (contrast, α) of a 4×3 grid becomes a plan, which
  is applied and scored by the denoising loss on training images outside the calibration batch (never
  the dataset's held-out split); the best is kept (α = −3, 0 and 3 were each chosen somewhere). It gave
  0.0145 / 0.0046 / 0.0032 (UNet) and 0.0115 / 0.0050 / 0.0028 (DiT) and costs up to 12 quantized
  evaluations (~20–35 s of one core on these models). Off by default: ``contrast=1, α=0``.
* ``N = 32`` calibration images (OMPQ's batch size). ``K = 10`` timesteps: against a dense profile of
  every 4th step (250 of T = 1000), the importance ranking has Spearman 1.000 (UNet) and 0.997 (DiT)
  (K = 3: 0.999 / 0.993; K = 1: 0.98 / 0.92); ``benchmarks/mpq.py`` measures it (``cost`` in its JSON).
  The profile's cost is one forward pass of the batch and ``L`` Grams per timestep (~0.2 s for the UNet,
  ~0.4 s for the DiT on one core), so K = 10 costs 4% of the 250-step profile and 1% of all 1000 steps.
* **Pinned layers**: the first layer (it reads ``x_t``) and the last (it writes the prediction) stay at
  W8A8, as is common (Q-Diffusion, PTQ4DM): they are tiny, and their error reaches the output
  unfiltered. They count in the budget like any layer.
* **Layers constant over the batch** (the time-embedding MLP and every resnet's time projection see one
  ``t``): CKA cannot rank them, so they get the ``γ`` of the most orthogonal real layer at that step.
"""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np

from profiler.mpq.allocate import (A_CHOICES, W_CHOICES, Allocation, Budget, allocate, average_bits, check_budget,
                                   layer_weight_bytes, plan_bops)
from profiler.mpq.allocators import DEFAULT_ALLOCATOR, allocator_values, get_allocator, mpq_values, quant_noise  # noqa: F401
from profiler.mpq.bitplan import BitPlan, apply_bitplan
from profiler.mpq.capture import (DEFAULT_MAX_FEATURE_BYTES, CalibrationBatch, LayerInfo, calibration_batch,
                                  input_ranges, layer_grams, probe_layers)
from profiler.mpq.importance import aggregate_importance, beta_for_contrast, sample_timesteps, suffix_mean  # noqa: F401
from profiler.mpq.orthogonality import cka_matrix, degenerate_mask, orthogonality_sums

OBJECTIVES = ("noise", "bits")
CONTRAST_GRID = (0.25, 0.5, 1.0, 2.0)
ALPHA_GRID = (-3.0, 0.0, 3.0)
#: Validation scores each candidate at these timesteps (of T=1000) with one noise draw: 5 forward passes.
VALIDATION_TIMESTEPS = (100, 300, 500, 700, 900)

#: ``progress(stage, done, total)``: called as the work advances (stages: "profile", "validate").
Progress = Callable[[str, int, int], None]


@dataclass
class MPQConfig:
    """Settings of an MPQ-Diff profile and allocation (defaults: the documented choices, module doc)."""

    timesteps: int | None = None        # K sampled timesteps (uniform strata of 0..T-1); None: the allocator's
    n_calib: int = 32                   # calibration batch size N
    contrast: float = 1.0               # β = contrast / std_i(γ̄_i) (scale-free), unless beta is set
    beta: float | None = None           # absolute β of θ = exp(-β γ); overrides contrast
    alpha: float = 0.0                  # timestep weights ∝ exp(α t/(T-1)); 0 = plain mean
    validate: bool = False              # pick (contrast, alpha) on the grids below by validation loss
    contrast_grid: tuple = CONTRAST_GRID
    alpha_grid: tuple = ALPHA_GRID
    n_validation: int = 32              # training images (outside the calibration batch) for validation
    propagate: bool = False             # OMPQ's θ̄ (mean of θ over the layer and those after it) instead of θ
    objective: str = "noise"            # "noise" or OMPQ's literal "bits" (see mpq_values)
    seed: int = 0                       # calibration images and noise
    w_choices: tuple = W_CHOICES
    a_choices: tuple = A_CHOICES
    pin_first_last: bool = True         # first (reads x_t) and last layer at pin_bits
    pin_bits: tuple = (8, 8)
    a_bits_reference: int | None = 8    # BOPs budget = BOPs of the average weight bits at these activation bits
    micro_batch: int | None = None      # split the calibration forward (memory); None = all N at once
    max_feature_bytes: int = DEFAULT_MAX_FEATURE_BYTES
    time_limit: float = 60.0            # seconds for the integer program: a safety net (see allocate())
    allocator: str = DEFAULT_ALLOCATOR  # "grad-sensitivity", "combined", "mpq" (MPQ-Diff), "sensitivity" (allocators)
    sens_timesteps: int = 2             # timesteps of the sensitivity profile (evenly spaced interior ones)
    sens_samples: int = 8               # calibration images the sensitivity profile uses
    sens_probes: int = 8                # random gradient probes per timestep (the gradient estimate)
    range_timesteps: int = 10           # activation ranges also over this many sampled steps (profile_importance)
    range_samples: int = 4              # images of that range pass (the spread over images: the K-step profile)
    pick_samples: int = 16              # validation images scoring the candidates of a picking allocator ("validated")

    def __post_init__(self) -> None:
        get_allocator(self.allocator)  # an unknown name fails here, with the choices
        for name in ("sens_timesteps", "sens_samples", "sens_probes", "range_timesteps", "range_samples",
                     "pick_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.n_calib, bool) or not isinstance(self.n_calib, int) or self.n_calib < 2:
            raise ValueError(f"n_calib must be an integer >= 2, got {self.n_calib!r}")
        if self.beta is not None and (not np.isfinite(self.beta) or self.beta < 0):
            raise ValueError(f"beta must be None or a finite number >= 0, got {self.beta!r}")
        for name in ("contrast", "alpha"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.contrast < 0:
            raise ValueError(f"contrast must be >= 0, got {self.contrast!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if len(self.pin_bits) != 2:
            raise ValueError(f"pin_bits must be (w_bits, a_bits), got {self.pin_bits!r}")

    @property
    def k(self):
        """The sampled timesteps: ``timesteps``, or the allocator's default K (``"mpq"`` 10, ``"combined"`` 3)."""
        return self.timesteps if self.timesteps is not None else get_allocator(self.allocator).timesteps

    def replace(self, **changes) -> "MPQConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown MPQConfig field(s): {', '.join(sorted(unknown))}")
        return MPQConfig(**{**asdict(self), **changes})


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
    input_max: np.ndarray | None = None    # [L] max |input| over the batch and timesteps (activation ranges)
    orm: np.ndarray | None = None          # [K, L, L] when kept (keep_orm=True)
    sensitivity: object | None = None      # baselines.Sensitivity, for allocators that read one (measure_sensitivity)
    range_timesteps: list[int] | None = None  # extra timesteps input_max covers (the range pass), if any

    def beta(self, config: "MPQConfig") -> float:
        return float(config.beta) if config.beta is not None else beta_for_contrast(self.gamma, config.contrast)

    def importance(self, beta: float, alpha: float = 0.0) -> np.ndarray:
        """Aggregated ``θ`` ``[L]`` in execution order, max 1."""
        return aggregate_importance(self.gamma, self.timesteps, self.num_train_timesteps, beta, alpha)

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.layers]


def profile_importance(model, batch: CalibrationBatch, timesteps: int | list[int] = 10,
                       layers: list[LayerInfo] | None = None, micro_batch: int | None = None,
                       max_feature_bytes: int = DEFAULT_MAX_FEATURE_BYTES, keep_orm: bool = False,
                       progress: Progress | None = None, range_timesteps: int | None = None,
                       range_samples: int = 4) -> ImportanceProfile:
    """Per-timestep orthogonality of every quantizable layer of ``model`` (a ``T2IModel``) on ``batch``.

    ``timesteps``: ``K`` (sampled with :func:`~profiler.mpq.importance.sample_timesteps`) or explicit steps.
    ``range_timesteps``: the activation ranges (``input_max``) also cover that many sampled timesteps,
    from a forward-only pass (:func:`~profiler.mpq.capture.input_ranges`) over the first ``range_samples``
    images at the ones the profile does not already hold: the K steps give the ranges' spread over the
    images, the pass their spread over the schedule (on the zoo DiT, ranges from K = 3 steps are up to 1.7×
    too narrow for attention projections and the time MLP at the other steps, and the plans they clip lose
    up to twice as much). ``None``: the K steps only.
    ``seconds`` is the wall time of the per-timestep captures, CKA and the range pass (not the probe or data
    loading).
    """
    T = model.num_train_timesteps
    if isinstance(timesteps, (int, np.integer)) and not isinstance(timesteps, bool):
        ts = sample_timesteps(T, int(timesteps))
    else:
        ts = [int(t) for t in timesteps]
    bad = [t for t in ts if not 0 <= t < T]
    if not ts or bad:
        raise ValueError(f"timesteps must lie in 0..{T - 1}, got {bad or ts}")
    layers = layers if layers is not None else probe_layers(model, batch)
    t0 = time.perf_counter()
    gamma = np.zeros((len(ts), len(layers)))
    dead = np.zeros((len(ts), len(layers)), dtype=bool)
    input_max = np.zeros(len(layers))
    orms = [] if keep_orm else None
    for k, t in enumerate(ts):
        cap = layer_grams(model, batch, t, layers, micro_batch, max_feature_bytes)
        orm = cka_matrix(cap.grams, cap.energy, centered=True)
        gamma[k] = orthogonality_sums(orm).numpy()
        dead[k] = degenerate_mask(cap.grams, cap.energy).numpy()
        if dead[k].any() and not dead[k].all():
            # Constant over the batch at this t: CKA cannot rank them, and their formal γ = 0 would outrank
            # every real layer by a factor exp(β·γ). Rank them with the most orthogonal real layer instead.
            gamma[k, dead[k]] = gamma[k, ~dead[k]].min()
        input_max = np.maximum(input_max, cap.input_max.numpy())
        if keep_orm:
            orms.append(orm.numpy())
        if progress is not None:
            progress("profile", k + 1, len(ts))
    extra = [t for t in sample_timesteps(T, int(range_timesteps)) if t not in ts] if range_timesteps else []
    if extra:
        sub = batch.subset(max(1, min(int(range_samples), len(batch))))
        input_max = np.maximum(input_max, input_ranges(model, sub, extra, layers).numpy())
    return ImportanceProfile(layers, ts, T, gamma, len(batch), time.perf_counter() - t0, dead, input_max,
                             None if orms is None else np.stack(orms), range_timesteps=extra or None)


def pinned_layers(layers: list[LayerInfo], config: MPQConfig) -> dict:
    """``{index: (w, a)}`` of the layers fixed by ``config`` (first and last, when ``pin_first_last``)."""
    if not config.pin_first_last:
        return {}
    return {i: tuple(int(b) for b in config.pin_bits) for i, info in enumerate(layers)
            if info.role in ("input", "output")}


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
                         settings: dict | None = None, timing: dict | None = None, act_ranges=None) -> BitPlan:
    """Wrap an :class:`Allocation` as a :class:`BitPlan`, with its usage under both storage models."""
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
        act_ranges={} if act_ranges is None else {i.name: float(v) for i, v in zip(layers, act_ranges)},
        layer_info={i.name: {k: v for k, v in i.to_dict().items() if k != "name"} for i in layers},
        settings=dict(settings or {}), timing={"solve_s": alloc.solve_s, **(timing or {})})


def plan_from_profile(profile: ImportanceProfile, budget: Budget, config: MPQConfig | None = None,
                      extra_settings: dict | None = None) -> BitPlan:
    """MPQ-Diff's allocation for an existing profile (cheap: one profile serves many budgets)."""
    config = config or MPQConfig()
    layers = profile.layers
    beta = profile.beta(config)
    values, theta = allocator_values(profile, config)
    pinned = pinned_layers(layers, config)
    alloc = allocate(layers, values, budget, config.w_choices, config.a_choices, pinned, config.time_limit)
    settings = {"allocator": config.allocator, **_settings(config), "beta_used": beta,
                "timesteps": list(profile.timesteps), "num_train_timesteps": profile.num_train_timesteps,
                "n_calib": profile.n_calib, "pinned": [layers[i].name for i in pinned], **(extra_settings or {})}
    timing = {"profile_s": profile.seconds, "solver_optimal": alloc.optimal}
    sens = profile.sensitivity if get_allocator(config.allocator).sensitivity else None
    if sens is not None:
        settings.update(sensitivity_timesteps=list(sens.timesteps), sensitivity_samples=sens.n_samples)
        timing["sensitivity_s"] = sens.seconds
    return plan_from_allocation(layers, alloc, budget, theta, settings, timing, profile.input_max)


def sensitivity_timesteps(num_train_timesteps: int, n: int) -> list[int]:
    """``n`` evenly spaced interior timesteps of ``0 … T−1``, ``round(j·T/(n+1))`` for ``j = 1 … n``
    (``n = 2``: 333 and 667 of T = 1000): the ends, pure noise and clean images, left out."""
    T = int(num_train_timesteps)
    return sorted({min(T - 1, max(1, round(j * T / (n + 1)))) for j in range(1, int(n) + 1)})


def measure_sensitivity(model, batch: CalibrationBatch, profile: ImportanceProfile, config: MPQConfig,
                        progress: Progress | None = None) -> ImportanceProfile:
    """Measure the sensitivity profile ``config.allocator`` reads (none, the gradient estimate or the exact
    one) at ``config.sens_timesteps`` :func:`sensitivity_timesteps`, and set it as ``profile.sensitivity``."""
    kind = get_allocator(config.allocator).sensitivity
    if kind is None:
        return profile
    ts = sensitivity_timesteps(profile.num_train_timesteps, config.sens_timesteps)
    if kind == "gradient":
        from profiler.mpq.gradient_sensitivity import gradient_sensitivity

        profile.sensitivity = gradient_sensitivity(model, batch, profile.layers, ts, profile.input_max,
                                                   config.sens_samples, config.sens_probes, config.w_choices,
                                                   config.a_choices, config.seed, progress)
    else:
        from profiler.mpq.sensitivity import sensitivity_profile

        profile.sensitivity = sensitivity_profile(model, batch, profile.layers, ts, config.sens_samples,
                                                  config.w_choices, config.a_choices, progress)
    return profile


def _settings(config: MPQConfig) -> dict:
    d = asdict(config)
    for k in ("w_choices", "a_choices", "pin_bits", "contrast_grid", "alpha_grid"):
        d[k] = list(d[k])
    d.pop("timesteps")
    d["k"] = config.k
    return d


# ------------------------------------------------------------------------------------------ validation
def with_denoiser(model, denoiser):
    """A shallow copy of ``model`` (a ``T2IModel``) that runs ``denoiser`` instead of its own."""
    other = copy.copy(model)
    other.denoiser = denoiser
    return other


def quantized_copy(model, plan: BitPlan, calibration: CalibrationBatch | None = None):
    """A copy of ``model`` whose denoiser (deep-copied) is quantized with ``plan``; ``model`` is untouched."""
    q = with_denoiser(model, copy.deepcopy(model.denoiser))
    apply_bitplan(q, plan, calibration)
    return q


def select_by_validation(model, profile: ImportanceProfile, budget: Budget, validation, config: MPQConfig,
                         progress: Progress | None = None) -> tuple[MPQConfig, list[dict]]:
    """The ``config`` with the (contrast, α) of its grids whose plan has the lowest validation loss.

    ``validation`` is an ``ImageTextDataset`` of training images outside the calibration batch; the score
    is ``finetune.metrics.heldout_loss`` of the quantized model on it at :data:`VALIDATION_TIMESTEPS` with
    one fixed noise draw (the full-precision loss is a constant, so the lowest loss is the lowest increase).
    Plans that come out identical are scored once. Returns the chosen config and every candidate's score.
    """
    from finetune.metrics import heldout_loss

    grid = [(c, a) for c in config.contrast_grid for a in config.alpha_grid]
    scores, seen, table = {}, {}, []
    for n, (c, a) in enumerate(grid):
        cand = config.replace(contrast=float(c), alpha=float(a), beta=None, validate=False)
        plan = plan_from_profile(profile, budget, cand)
        key = tuple(plan.w_bits) + tuple(plan.a_bits)
        if key not in seen:
            seen[key] = heldout_loss(quantized_copy(model, plan), validation, timesteps=VALIDATION_TIMESTEPS,
                                     noise_seeds=(0,)).mean
        scores[(c, a)] = seen[key]
        table.append({"contrast": float(c), "alpha": float(a), "validation_loss": seen[key]})
        if progress is not None:
            progress("validate", n + 1, len(grid))
    c, a = min(grid, key=lambda ca: (scores[ca], abs(ca[1]), abs(np.log(ca[0]))))  # ties: plainest settings
    return config.replace(contrast=float(c), alpha=float(a), beta=None), table


def pick_by_validation(model, profile: ImportanceProfile, budget: Budget, validation, config: MPQConfig,
                       extra_settings: dict | None = None, progress: Progress | None = None) -> BitPlan:
    """The plan of ``config.allocator``'s candidates (``Allocator.candidates``) with the lowest validation loss.

    Each candidate allocator fills the program from the same ``profile`` (and its sensitivity); each distinct
    plan is applied and scored like :func:`select_by_validation` (``heldout_loss`` at
    :data:`VALIDATION_TIMESTEPS`, one noise draw) on the first ``config.pick_samples`` images of
    ``validation``; the lowest wins, ties to the earlier candidate. The plan's ``settings`` name
    ``config.allocator``, the ``candidate`` chosen and every candidate's score (``candidates``).
    """
    from finetune.metrics import heldout_loss

    names = get_allocator(config.allocator).candidates
    if not names:
        raise ValueError(f"allocator {config.allocator!r} has no candidates to pick from")
    t0 = time.perf_counter()
    val = validation.subset(list(range(min(config.pick_samples, len(validation)))))
    plans, seen, table = {}, {}, []
    for n, name in enumerate(names):
        plan = plans[name] = plan_from_profile(profile, budget, config.replace(allocator=name), extra_settings)
        key = tuple(plan.w_bits) + tuple(plan.a_bits)
        if key not in seen:
            seen[key] = heldout_loss(quantized_copy(model, plan), val, timesteps=VALIDATION_TIMESTEPS,
                                     noise_seeds=(0,)).mean
        table.append({"allocator": name, "validation_loss": seen[key]})
        if progress is not None:
            progress("validate", n + 1, len(names))
    best = min(range(len(names)), key=lambda i: (table[i]["validation_loss"], i))
    plan = plans[names[best]]
    seconds = time.perf_counter() - t0
    plan.settings.update(allocator=config.allocator, candidate=names[best], candidates=table, n_validation=len(val))
    plan.timing["validation_s"] = seconds
    return plan


def validation_images(train, batch: CalibrationBatch, n: int):
    """Up to ``n`` training images not in the calibration batch (None if there are none)."""
    used = set(batch.indices or [])
    rest = [i for i in range(len(train)) if i not in used][:n]
    return train.subset(rest) if rest else None


# ------------------------------------------------------------------------------------------ entry point
def load_model_and_data(model, dataset):
    """``(T2IModel, SplitDataset)`` from objects or references (``zoo:NAME`` / folder, ``builtin:NAME`` / folder)."""
    from data import SplitDataset, load_dataset
    from finetune.load import load_model

    if not hasattr(model, "denoiser"):
        model = load_model(model)
    ds = dataset if isinstance(dataset, SplitDataset) else load_dataset(dataset)
    return model, ds


def profile_bits(model, dataset, budget=None, *, avg_bits: float | None = None,
                 timesteps: int | list[int] | None = None, config: MPQConfig | None = None,
                 progress: Progress | None = None, **overrides) -> BitPlan:
    """Profile ``model`` on ``dataset`` and allocate per-layer bits: the MPQ-Diff entry point.

    Args:
        model: a ``T2IModel`` or a model reference (``zoo:NAME``, a diffusers folder, a Hub id).
        dataset: a ``SplitDataset`` or a dataset reference; calibration images come from its train split.
        budget: weight memory in bytes as ``finetune.quant`` stores it (or a :class:`Budget`); the BOPs
            budget is then that of a uniform plan with the same average bits and 8-bit activations.
        avg_bits: instead of ``budget``: average weight bits (nominal bytes, BOPs of ``W{avg}A8``).
        timesteps: ``K`` sampled timesteps (or explicit steps); default ``config.k`` (the allocator's K:
            10 for ``"mpq"``, 3 for ``"combined"``).
        config: an :class:`MPQConfig`; ``overrides`` set its fields (``contrast=…``, ``validate=True``, …).
        progress: ``progress(stage, done, total)``.

    Raises:
        InfeasibleBudgetError: the budget is below the smallest feasible one (stated in the message).
    """
    config = config or MPQConfig()
    config = config.replace(**({} if timesteps is None else {"timesteps": timesteps}), **overrides)
    given_ref = str(model) if isinstance(model, (str, os.PathLike)) else None
    model, ds = load_model_and_data(model, dataset)
    batch = calibration_batch(model, ds.train, config.n_calib, config.seed)
    layers = probe_layers(model, batch)
    bud = resolve_budget(layers, budget, avg_bits, config.a_bits_reference)
    # Infeasible budgets fail before the (long) profile.
    check_budget(layers, bud, config.w_choices, config.a_choices, pinned_layers(layers, config))
    prof = profile_importance(model, batch, config.k, layers, config.micro_batch, config.max_feature_bytes,
                              progress=progress, range_timesteps=config.range_timesteps,
                              range_samples=config.range_samples)
    measure_sensitivity(model, batch, prof, config, progress)
    extra = {"model": given_ref or model_ref(model), "dataset": getattr(ds, "ref", None) or ds.name}
    if get_allocator(config.allocator).candidates:
        val = validation_images(ds.train, batch, config.n_validation)
        if val is not None:
            return pick_by_validation(model, prof, bud, val, config, extra, progress)
        extra["candidate"] = "none: no training images outside the calibration batch"  # its own values decide
    if config.validate:
        val = validation_images(ds.train, batch, config.n_validation)
        if val is None:
            raise ValueError(f"validate=True needs training images outside the calibration batch, but all "
                             f"{len(ds.train)} are in it; lower n_calib or turn validation off")
        t0 = time.perf_counter()
        config, table = select_by_validation(model, prof, bud, val, config, progress)
        extra.update(validation=table, n_validation=len(val), validation_s=time.perf_counter() - t0)
    return plan_from_profile(prof, bud, config, extra)


def profile_bits_at(model, dataset, avg_bits, *, config: MPQConfig | None = None,
                    progress: Progress | None = None) -> dict[float, BitPlan]:
    """MPQ-Diff plans at several average weight bits from **one** profile: ``{avg_bits: BitPlan}``.

    The profile (the calibration forward passes and Grams at ``K`` timesteps) is the expensive part; each
    allocation is one small integer program, so a planner that tries 8, 6, 4, 3 bits pays one profile.
    Averages below the smallest feasible budget are left out (``{}`` when none is feasible). β and α come
    from ``config`` (validation, which would pick them per budget, is not supported here)."""
    from profiler.mpq.allocate import InfeasibleBudgetError

    config = config or MPQConfig()
    if config.validate:
        raise ValueError("profile_bits_at does not validate β and α per budget; call profile_bits for each budget")
    given_ref = str(model) if isinstance(model, (str, os.PathLike)) else None
    model, ds = load_model_and_data(model, dataset)
    batch = calibration_batch(model, ds.train, config.n_calib, config.seed)
    layers = probe_layers(model, batch)
    pinned = pinned_layers(layers, config)
    budgets = {}
    for b in avg_bits:
        bud = resolve_budget(layers, None, b, config.a_bits_reference)
        try:
            check_budget(layers, bud, config.w_choices, config.a_choices, pinned)
        except InfeasibleBudgetError:
            continue
        budgets[b] = bud
    if not budgets:
        return {}
    prof = profile_importance(model, batch, config.k, layers, config.micro_batch, config.max_feature_bytes,
                              progress=progress, range_timesteps=config.range_timesteps,
                              range_samples=config.range_samples)
    measure_sensitivity(model, batch, prof, config, progress)
    extra = {"model": given_ref or model_ref(model), "dataset": getattr(ds, "ref", None) or ds.name}
    picks = bool(get_allocator(config.allocator).candidates)
    val = validation_images(ds.train, batch, config.n_validation) if picks else None
    if val is not None:
        return {b: pick_by_validation(model, prof, bud, val, config, extra, progress) for b, bud in budgets.items()}
    return {b: plan_from_profile(prof, bud, config, extra) for b, bud in budgets.items()}


def model_ref(model) -> str | None:
    """Where ``model`` was loaded from, when known."""
    pipe = getattr(model, "pipeline", None)
    path = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return str(path) if path else None
