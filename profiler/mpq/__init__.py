"""MPQ-Diff: per-layer weight/activation bit allocation from timestep-aware network orthogonality.

Modules: :mod:`~profiler.mpq.capture` (calibration batch, layer probe, memory-bounded Gram capture),
:mod:`~profiler.mpq.orthogonality` (linear CKA), :mod:`~profiler.mpq.importance` (θ, timesteps, α/β),
:mod:`~profiler.mpq.allocate` (the integer program and budgets), :mod:`~profiler.mpq.bitplan` (the JSON
plan and applying it), :mod:`~profiler.mpq.profile` (``profile_bits``), :mod:`~profiler.mpq.baselines`
(uniform, random, sensitivity), :mod:`~profiler.mpq.plot`, :mod:`~profiler.mpq.run` (``mandc quantize``).
"""
from profiler.mpq.allocate import (A_CHOICES, W_CHOICES, Allocation, Budget, InfeasibleBudgetError, allocate,
                                   check_budget)
from profiler.mpq.bitplan import BitPlan, BitPlanError, apply_bitplan
from profiler.mpq.capture import CalibrationBatch, LayerInfo, calibration_batch, layer_grams, probe_layers
from profiler.mpq.orthogonality import cka_matrix, linear_cka
from profiler.mpq.plot import plot_bitplan
from profiler.mpq.profile import (ImportanceProfile, MPQConfig, plan_from_profile, profile_bits, profile_bits_at, profile_importance,
                                  quantized_copy)
from profiler.mpq.run import QuantizeResult, run_quantize

__all__ = ["A_CHOICES", "W_CHOICES", "Allocation", "Budget", "InfeasibleBudgetError", "allocate", "check_budget",
           "BitPlan", "BitPlanError", "apply_bitplan", "CalibrationBatch", "LayerInfo", "calibration_batch",
           "layer_grams", "probe_layers", "cka_matrix", "linear_cka", "plot_bitplan", "ImportanceProfile",
           "MPQConfig", "plan_from_profile", "profile_bits", "profile_bits_at", "profile_importance", "quantized_copy",
           "QuantizeResult", "run_quantize"]
