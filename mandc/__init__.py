"""mandc package."""
import importlib as _importlib

# Lazy exports (PEP 562): ``import mandc`` stays cheap; the module is imported on first attribute use.
_EXPORTS = {
    # planner and store
    "Planner": "mandc.planner",
    "Recommendation": "mandc.planner",
    "Store": "mandc.store",
    # the plan
    "Plan": "mandc.plan",
    "PlanError": "mandc.plan",
    "NothingFitsError": "mandc.plan",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mandc' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
