"""``BitPlan``: per-layer weight/activation bits plus the budget, importances and settings behind them.

A plan is plain JSON::

    {"format": "mandc.bitplan", "version": 1,
     "layers":     {"conv_in": {"w_bits": 8, "a_bits": 8}, "time_embedding.linear_1": {...}, ...},
     "budget":     {"weight_bytes": 123456.0, "bops": 1.2e9, "storage": "nominal", "avg_bits": 4.0},
     "usage":      {"weight_bytes": ..., "packed_bytes": ..., "float_bytes": ..., "bops": ..., "avg_bits": ...},
     "importance": {"conv_in": 0.93, ...},
     "act_ranges": {"conv_in": 1.02, ...},     # max |input| over the calibration batch and timesteps
     "layer_info": {"conv_in": {"kind": "conv2d", "n_weights": 432, "macs": 442368, ...}, ...},
     "settings":   {"allocator": "mpq", "timesteps": [...], "beta": ..., "alpha": ..., ...},
     "timing":     {"profile_s": ..., "solve_s": ...}}

MPQ-Diff (``profiler.mpq``) writes it; it lives here, beside the quantizer, because a plan means one
quantized model (:data:`BITPLAN_RECIPE`: symmetric per-output-channel weight codes with the clipping
search, per-tensor activation scales ``act_ranges[layer] / (2**(a_bits−1) − 1)``) and every consumer —
``mandc quantize``, MPQ-Diff's validation, the quantized fine-tuning methods — builds that model with
``quantize_(denoiser, QuantConfig(plan=bitplan))`` (:mod:`finetune.quant.config`).
``layers`` is in the denoiser's execution order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "mandc.bitplan"
VERSION = 1
#: How a bit plan's layers are quantized: MPQ-Diff's quantizer (specs/mpq.md), which scored the plan.
BITPLAN_RECIPE = {"symmetric": True, "init": "clip", "act_scales": "calibrated"}
_KEYS = ("layers", "budget", "usage", "importance", "act_ranges", "layer_info", "settings", "timing")


class BitPlanError(ValueError):
    """A bit plan that cannot be read or does not fit the model; the message names the file and layer."""


@dataclass
class BitPlan:
    """Per-layer bits (``layers``: ``{name: {"w_bits", "a_bits"}}``, execution order) and their provenance."""

    layers: dict
    budget: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)
    importance: dict = field(default_factory=dict)
    act_ranges: dict = field(default_factory=dict)
    layer_info: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = _check_layers(self.layers, "bit plan")

    # -- views --------------------------------------------------------------------------------------
    def quant_plan(self) -> dict:
        """The bare ``{layer: {"w_bits", "a_bits"}}`` mapping (without the recipe or the activation ranges)."""
        return {k: dict(v) for k, v in self.layers.items()}

    @property
    def w_bits(self) -> list[int]:
        return [v["w_bits"] for v in self.layers.values()]

    @property
    def a_bits(self) -> list[int]:
        return [v["a_bits"] for v in self.layers.values()]

    def bits_histogram(self) -> dict:
        """``{"w": {bits: layers}, "a": {bits: layers}}``."""
        out = {"w": {}, "a": {}}
        for v in self.layers.values():
            out["w"][v["w_bits"]] = out["w"].get(v["w_bits"], 0) + 1
            out["a"][v["a_bits"]] = out["a"].get(v["a_bits"], 0) + 1
        return {k: dict(sorted(h.items())) for k, h in out.items()}

    def summary(self) -> str:
        u, b = self.usage, self.budget
        hist = self.bits_histogram()
        parts = [f"{len(self.layers)} layers ({self.settings.get('allocator', '?')})",
                 "W bits " + ", ".join(f"{k}:{v}" for k, v in hist["w"].items()),
                 "A bits " + ", ".join(f"{k}:{v}" for k, v in hist["a"].items())]
        if u.get("avg_bits") is not None:
            parts.append(f"avg {u['avg_bits']:.2f} weight bits")
        if u.get("weight_bytes") is not None and b.get("weight_bytes"):
            parts.append(f"{u['weight_bytes']:,.0f} / {b['weight_bytes']:,.0f} budget bytes ({b.get('storage')})")
        if u.get("bops") and b.get("bops"):
            parts.append(f"BOPs {u['bops']:.3g} / {b['bops']:.3g}")
        return "; ".join(parts)

    # -- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **{k: getattr(self, k) for k in _KEYS}}

    def to_json(self) -> dict:
        """:meth:`to_dict` in plain JSON types only (numpy scalars and arrays converted), as :meth:`save` writes it."""
        return json.loads(json.dumps(self.to_dict(), default=_jsonable))

    @classmethod
    def from_dict(cls, d: dict, source: str = "bit plan") -> "BitPlan":
        if not isinstance(d, dict):
            raise BitPlanError(f"{source} must be a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise BitPlanError(f"{source} is not a mandc bit plan (format is {d.get('format')!r}, expected {FORMAT!r})")
        if d.get("version") != VERSION:
            raise BitPlanError(f"{source} has bit-plan version {d.get('version')!r}; this code reads {VERSION}")
        for k in _KEYS[1:]:
            if k in d and not isinstance(d[k], dict):
                raise BitPlanError(f"{source}: {k!r} must be an object, got {type(d[k]).__name__}")
        return cls(layers=_check_layers(d.get("layers"), source), **{k: dict(d.get(k) or {}) for k in _KEYS[1:]})

    def save(self, path) -> Path:
        """Write the plan as JSON to ``path``, atomically (a temporary sibling renamed into place)."""
        from data.io import atomic_write

        return atomic_write(Path(path), json.dumps(self.to_dict(), indent=1, default=_jsonable) + "\n")

    @classmethod
    def load(cls, path) -> "BitPlan":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"bit plan {str(path)!r} does not exist")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e
            raise BitPlanError(f"bit plan {str(path)!r} is not valid JSON: {why}") from None
        return cls.from_dict(d, f"bit plan {str(path)!r}")


def plan_data(plan):
    """``plan`` as method configs hold it: a :class:`BitPlan` becomes its JSON dict (``asdict`` of a config
    would otherwise drop its ``format`` key, and with it the recipe); anything else is returned as is."""
    return plan.to_dict() if isinstance(plan, BitPlan) else plan


def _jsonable(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, set)):
        return list(x)
    raise TypeError(f"cannot write {type(x).__name__} to a bit plan")


def _check_layers(layers, source: str) -> dict:
    if not isinstance(layers, dict) or not layers:
        raise BitPlanError(f"{source}: 'layers' must be a non-empty object of layer name -> bits")
    out = {}
    for name, spec in layers.items():
        if not isinstance(name, str) or not name:
            raise BitPlanError(f"{source}: layer names must be non-empty strings, got {name!r}")
        if not isinstance(spec, dict) or set(spec) - {"w_bits", "a_bits"} or "w_bits" not in spec:
            raise BitPlanError(f"{source}: layer {name!r} must map to {{'w_bits': int, 'a_bits': int|null}}, got {spec!r}")
        w, a = spec["w_bits"], spec.get("a_bits")
        if isinstance(w, bool) or not isinstance(w, int) or not 2 <= w <= 8:
            raise BitPlanError(f"{source}: layer {name!r} has w_bits {w!r}; expected an integer in 2..8")
        if a is not None and (isinstance(a, bool) or not isinstance(a, int) or not 2 <= a <= 16):
            raise BitPlanError(f"{source}: layer {name!r} has a_bits {a!r}; expected null or an integer in 2..16")
        out[name] = {"w_bits": w, "a_bits": a}
    return out
