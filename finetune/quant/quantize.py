"""``quantize_``: swap a model's ``nn.Linear`` / ``nn.Conv2d`` layers for quantized ones, in place.

Config is data, the transform is a function (torchao style)::

    quantize_(unet, bits=4)                                        # every Linear/Conv2d at 4 bits
    quantize_(unet, bits=4, skip=["conv_in", "re:.*time_emb.*"])   # ... except these
    quantize_(unet, plan={"re:.*attn.*": 8, "conv_in": {"w_bits": 6, "a_bits": 8}})
    quantize_(unet, plan="bitplan.json")                           # mapping, or {"layers": mapping}

A plan maps a layer name, or ``"re:<regex>"`` (``re.fullmatch`` on the qualified name), to weight bits
(int) or to ``{"w_bits": int, "a_bits": int | None}``. Entries apply in order, a later entry overriding an
earlier one for the layers both match. Layers no entry names stay in full precision. Every entry must
match at least one quantizable layer.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from finetune.quant.act_quant import check_a_bits
from finetune.quant.layers import QuantConv2d, QuantLayer, QuantLinear
from finetune.quant.packing import check_bits
from finetune.quant.weight_init import DEFAULT_CLIP_RATIOS, INITS

log = logging.getLogger(__name__)

QUANTIZABLE = (nn.Linear, nn.Conv2d)


@dataclass
class QuantSummary:
    """What :func:`quantize_` did (or what a model holds now, from :func:`quant_summary`)."""

    n_layers: int = 0
    n_weights: int = 0
    bytes_before: int = 0  # the replaced full-precision weights
    bytes_after: int = 0   # codes + zero points + scales (see QuantLayer.weight_bytes)
    layers_by_bits: dict = field(default_factory=dict)  # {w_bits: count}

    @property
    def compression(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else float("nan")

    def __str__(self) -> str:
        return (f"{self.n_layers} quantized layers ({dict(sorted(self.layers_by_bits.items()))} by bits), "
                f"{self.n_weights} weights: {self.bytes_before} -> {self.bytes_after} bytes "
                f"({self.compression:.2f}x smaller)")


def quant_summary(model: nn.Module) -> QuantSummary:
    """Summary over the quantized layers currently in ``model``."""
    s = QuantSummary()
    bits = Counter()
    for m in model.modules():
        if isinstance(m, QuantLayer):
            s.n_layers += 1
            s.n_weights += m.layout.row_size * m.layout.out_channels
            s.bytes_before += m.float_weight_bytes()
            s.bytes_after += m.weight_bytes()
            bits[m.bits] += 1
    s.layers_by_bits = dict(bits)
    return s


def quantized_weight_bytes(model: nn.Module) -> int:
    """Real storage of all quantized weights in ``model`` (4-bit: half a byte per weight, plus scales)."""
    return sum(m.weight_bytes() for m in model.modules() if isinstance(m, QuantLayer))


# -- plans ----------------------------------------------------------------------------------------
def load_plan(plan) -> dict:
    """A plan as an ordered ``{key: {"w_bits": int, "a_bits": int | None}}``, validated.

    ``plan`` is a mapping or a path to a JSON file holding the mapping, or an object whose ``"layers"``
    key holds it (other top-level keys, e.g. a bit plan's budget, are ignored).
    """
    source = "plan"
    if isinstance(plan, (str, os.PathLike)):
        path = Path(plan)
        if not path.is_file():
            raise FileNotFoundError(f"plan file {str(path)!r} does not exist")
        try:
            plan = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"plan file {str(path)!r} is not valid JSON: {e}") from None
        source = f"plan file {str(path)!r}"
    if not isinstance(plan, dict):
        raise TypeError(f"{source} must be a mapping of layer name or 're:<regex>' to bits, got {type(plan).__name__}")
    if "layers" in plan and isinstance(plan["layers"], dict):
        plan = plan["layers"]
    if not plan:
        raise ValueError(f"{source} is empty: it names no layer")
    out = {}
    for key, value in plan.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{source}: keys must be non-empty layer names or 're:<regex>', got {key!r}")
        if key.startswith("re:"):
            try:
                re.compile(key[3:])
            except re.error as e:
                raise ValueError(f"{source}: pattern {key!r} is not a valid regex: {e}") from None
        if isinstance(value, dict):
            unknown = set(value) - {"w_bits", "a_bits"}
            if unknown or "w_bits" not in value:
                raise ValueError(f"{source}: entry {key!r} must be bits or {{'w_bits': int, 'a_bits': int}}; "
                                 f"got keys {sorted(value)}")
            w_bits, a_bits = value["w_bits"], value.get("a_bits")
        else:
            w_bits, a_bits = value, None
        out[key] = {"w_bits": check_bits(w_bits, f"{source}: w_bits of {key!r}"),
                    "a_bits": check_a_bits(a_bits, f"{source}: a_bits of {key!r}")}
    return out


def _matches(key: str, name: str) -> bool:
    return re.fullmatch(key[3:], name) is not None if key.startswith("re:") else key == name


def _examples(names, n: int = 6) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(repr(x) for x in names[:n]) + more


def resolve_plan(model: nn.Module, plan: dict, skip=()) -> dict:
    """``{layer name: {"w_bits", "a_bits"}}`` for the quantizable layers ``plan`` selects (see module doc)."""
    modules = dict(model.named_modules())
    quantizable = [n for n, m in modules.items() if n and isinstance(m, QUANTIZABLE)]
    chosen: dict = {}
    for key, spec in plan.items():
        hits = [n for n in modules if n and _matches(key, n)]
        if not hits:
            raise ValueError(f"plan entry {key!r} matches no layer of the model; quantizable layers are: "
                             f"{_examples(quantizable)}")
        good = [n for n in hits if isinstance(modules[n], QUANTIZABLE)]
        if not key.startswith("re:") and not good:
            m = modules[key]
            what = "already quantized" if isinstance(m, QuantLayer) else "not quantizable"
            raise ValueError(f"plan entry {key!r} names a {type(m).__name__}, which is {what}; only nn.Linear "
                             f"and nn.Conv2d layers can be quantized")
        if not good:
            raise ValueError(f"plan entry {key!r} matches only modules that cannot be quantized "
                             f"({_examples(f'{n} ({type(modules[n]).__name__})' for n in hits)}); only "
                             "nn.Linear and nn.Conv2d layers can be quantized")
        for n in good:
            chosen[n] = dict(spec)
    for s in skip:
        if not isinstance(s, str) or not any(_matches(s, n) for n in modules if n):
            raise ValueError(f"skip entry {s!r} matches no layer of the model; quantizable layers are: "
                             f"{_examples(quantizable)}")
    skipped = {n for n in chosen if any(_matches(s, n) for s in skip)}
    return {n: s for n, s in chosen.items() if n not in skipped}


# -- the transform --------------------------------------------------------------------------------
def quantize_(model: nn.Module, bits: int = 4, *, plan=None, init: str = "clip", separable: bool = False,
              n_timestep_sets: int = 1, skip=None, symmetric: bool = False, a_bits: int | None = None,
              train_bias: bool = False, clip_ratios=DEFAULT_CLIP_RATIOS) -> nn.Module:
    """Replace ``nn.Linear`` / ``nn.Conv2d`` submodules of ``model`` by :class:`QuantLinear` /
    :class:`QuantConv2d`, in place, and return ``model``.

    Args:
        bits: weight bits (2..8) for every layer when no ``plan`` is given.
        plan: per-layer bits (mapping or JSON path, see module doc); layers it does not name stay full precision.
        init: ``"minmax"`` or ``"clip"`` (per-channel clipping search) scale initialisation.
        separable: add TuneQDM's trainable per-input-channel scale ``s_in`` (``False``: PEQA).
        n_timestep_sets: number of timestep-interval scale sets (TuneQDM; 1 = one set).
        skip: layer names or ``"re:<regex>"`` patterns left in full precision.
        symmetric: symmetric codes (fixed zero point) instead of asymmetric.
        a_bits: activation fake-quantization bits for every layer when no ``plan`` is given (None: off).
        train_bias: leave the (full-precision) biases trainable.

    The summary (layers, bytes before/after) is logged; :func:`quant_summary` recomputes it at any time.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(model, QUANTIZABLE):
        raise ValueError("quantize_ swaps submodules in place; wrap a bare layer in a container (nn.Sequential)")
    skip = [skip] if isinstance(skip, str) else list(skip or ())
    if plan is None:
        check_bits(bits)
        plan = {"re:.*": {"w_bits": bits, "a_bits": check_a_bits(a_bits)}}
        if not any(isinstance(m, QUANTIZABLE) for n, m in model.named_modules() if n):
            raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d submodule to quantize")
    else:
        plan = load_plan(plan)
    resolved = resolve_plan(model, plan, skip)

    summary = QuantSummary()
    by_bits = Counter()
    for name, spec in resolved.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        fp = getattr(parent, child)
        cls = QuantLinear if isinstance(fp, nn.Linear) else QuantConv2d
        q = cls.from_float(fp, spec["w_bits"], init=init, clip_ratios=clip_ratios, train_bias=train_bias,
                           separable=separable, n_timestep_sets=n_timestep_sets, symmetric=symmetric,
                           a_bits=spec["a_bits"])
        q.fqn = name
        q.train(fp.training)
        setattr(parent, child, q)
        summary.n_layers += 1
        summary.n_weights += fp.weight.numel()
        summary.bytes_before += q.float_weight_bytes()
        summary.bytes_after += q.weight_bytes()
        by_bits[q.bits] += 1
    summary.layers_by_bits = dict(by_bits)
    log.info("quantize_: %s", summary)
    return model


# -- trainable scales -----------------------------------------------------------------------------
def scale_parameters(model: nn.Module) -> list:
    """The trainable quantization scales (``delta_s_out``, ``s_in``) of all quantized layers."""
    out = []
    for m in model.modules():
        if isinstance(m, QuantLayer):
            out.append(m.delta_s_out)
            if m.s_in is not None:
                out.append(m.s_in)
    return out


def mark_only_scales_trainable_(model: nn.Module, bias: bool = False) -> nn.Module:
    """Freeze everything but the quantization scales (and the quantized layers' biases if ``bias``)."""
    model.requires_grad_(False)
    for p in scale_parameters(model):
        p.requires_grad_(True)
    if bias:
        for m in model.modules():
            if isinstance(m, QuantLayer) and m.bias is not None:
                m.bias.requires_grad_(True)
    return model
