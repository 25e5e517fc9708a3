"""profiler: measuring models — MPQ-Diff layer profiling and bit allocation (:mod:`profiler.mpq`), and
profiling jobs for model selection (:mod:`profiler.jobs`, :mod:`profiler.campaign`, :mod:`profiler.executors`,
:mod:`profiler.modelinfo`, the reference campaign :mod:`profiler.reference`).

Importing ``profiler`` is cheap: the public names below load their modules (torch, scipy) on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "profile_bits": "profiler.mpq.profile",
    "MPQConfig": "profiler.mpq.profile",
    "BitPlan": "profiler.mpq.bitplan",
    "BitPlanError": "profiler.mpq.bitplan",
    "apply_bitplan": "profiler.mpq.bitplan",
    "Budget": "profiler.mpq.allocate",
    "InfeasibleBudgetError": "profiler.mpq.allocate",
    "run_quantize": "profiler.mpq.run",
    "QuantizeResult": "profiler.mpq.run",
    "plot_bitplan": "profiler.mpq.plot",
    # profiling jobs and campaigns (model selection's measurements)
    "ProfileJob": "profiler.schema",
    "ProfileRecord": "profiler.schema",
    "run_job": "profiler.jobs",
    "Campaign": "profiler.campaign",
    "EXECUTORS": "profiler.executors",
    "get_executor": "profiler.executors",
    "model_features": "profiler.modelinfo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'profiler' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
