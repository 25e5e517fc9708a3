"""``quantize_(model, config)``: swap a model's ``nn.Linear`` / ``nn.Conv2d`` layers for quantized ones, in place.

Config is data, the transform is a registered function (torchao style): :func:`quantize_` looks up the
handler registered for the config's type (:func:`register_quantize_handler`). :class:`QuantConfig` (this
module's handler) makes ``QuantLinear`` / ``QuantConv2d`` layers with trainable scales;
``finetune.qta.QTALoRAQuantConfig`` makes QTA LoRA layers with the same weight quantizer. Keyword fields are a
shorthand for a :class:`QuantConfig`::

    quantize_(unet, QuantConfig(bits=4))                           # every Linear/Conv2d at 4 bits
    quantize_(unet, bits=4, skip=["conv_in", "re:.*time_emb.*"])   # the same shorthand, minus these
    quantize_(unet, plan={"re:.*attn.*": 8, "conv_in": {"w_bits": 6, "a_bits": 8}})
    quantize_(unet, QuantConfig(plan="bitplan.json"))              # a BitPlan: the model MPQ-Diff scored

A plan maps a layer name, or ``"re:<regex>"`` (``re.fullmatch`` on the qualified name), to weight bits
(int) or to ``{"w_bits": int, "a_bits": int | None}``. Entries apply in order, a later entry overriding an
earlier one for the layers both match. Layers no entry names stay in full precision. Every entry must
match at least one quantizable layer. A BitPlan also fixes the quantizer and the activation scales
(:mod:`finetune.quant.config`).
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from finetune.quant.act_quant import check_a_bits
from finetune.quant.bitplan import BITPLAN_RECIPE, BitPlan, BitPlanError
from finetune.quant.config import QuantConfig, ResolvedQuant
from finetune.quant.layers import QuantConv2d, QuantLayer, QuantLinear
from finetune.quant.packing import check_bits

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
def read_plan(plan) -> tuple[dict, BitPlan | None]:
    """``(layers, bitplan)``: the plan's validated ordered ``{key: {"w_bits", "a_bits"}}`` and, when it is
    a :class:`BitPlan` (the object, its dict, or its JSON file), that plan (else ``None``)."""
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
    if isinstance(plan, dict) and "format" in plan:
        plan = BitPlan.from_dict(plan, source if source != "plan" else "bit plan")
    if isinstance(plan, BitPlan):
        return load_plan(plan.quant_plan()), plan
    return load_plan(plan, source), None


def load_plan(plan, source: str = "plan") -> dict:
    """A plan as an ordered ``{key: {"w_bits": int, "a_bits": int | None}}``, validated.

    ``plan`` is a mapping, or an object whose ``"layers"`` key holds it (other top-level keys, e.g. a bit
    plan's budget, are ignored); a path to a JSON file of either is read by :func:`read_plan`.
    """
    if isinstance(plan, (str, os.PathLike)):
        return read_plan(plan)[0]
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
_HANDLERS: dict = {}


def register_quantize_handler(config_cls):
    """Decorator: ``fn(model, config) -> model`` becomes the transform :func:`quantize_` runs for ``config_cls``."""
    def deco(fn):
        _HANDLERS[config_cls] = fn
        return fn
    return deco


def quantize_(model: nn.Module, config=None, /, **fields) -> nn.Module:
    """Quantize ``model`` in place with ``config`` and return it.

    ``config`` is a :class:`QuantConfig` (default) or any config type with a registered handler (e.g.
    ``finetune.qta.QTALoRAQuantConfig``); keyword ``fields`` instead build a :class:`QuantConfig`
    (``quantize_(m, bits=4)`` is ``quantize_(m, QuantConfig(bits=4))``).
    """
    if config is None:
        config = QuantConfig(**fields)
    elif fields:
        raise TypeError("quantize_ takes a config or keyword fields of a QuantConfig, not both")
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(f"quantize_ has no transform for {type(config).__name__}; registered: "
                        f"{', '.join(c.__name__ for c in _HANDLERS)}")
    if isinstance(model, QUANTIZABLE):
        raise ValueError("quantize_ swaps submodules in place; wrap a bare layer in a container (nn.Sequential)")
    return handler(model, config)


def resolve_quant_config(config: QuantConfig) -> ResolvedQuant:
    """Read ``config.plan`` and decide every ``None`` field (see :mod:`finetune.quant.config`)."""
    if config.plan is None:
        layers, bitplan = {"re:.*": {"w_bits": config.bits, "a_bits": config.a_bits}}, None
    else:
        layers, bitplan = read_plan(config.plan)
    recipe = {"symmetric": False, "init": "clip", "act_scales": None}
    if bitplan is not None:
        recipe = dict(BITPLAN_RECIPE)
        if not bitplan.act_ranges:  # e.g. a baseline allocator's plan: nothing to calibrate from
            recipe["act_scales"] = "dynamic"
        wrong = {k: getattr(config, k) for k in recipe if getattr(config, k) not in (None, recipe[k])}
        if wrong:
            raise ValueError(f"the bit plan was scored with {recipe}; {wrong} would quantize another model. Pass "
                             "plan=bitplan.quant_plan() (its bits only) to quantize its bits differently")
    act_ranges = config.act_ranges if config.act_ranges is not None else (bitplan.act_ranges if bitplan else {})
    act_scales = config.act_scales or recipe["act_scales"] or ("calibrated" if config.act_ranges else "dynamic")
    return ResolvedQuant(layers=layers, bitplan=bitplan,
                         symmetric=config.symmetric if config.symmetric is not None else recipe["symmetric"],
                         init=config.init or recipe["init"], act_scales=act_scales, act_ranges=dict(act_ranges))


@register_quantize_handler(QuantConfig)
def _quantize_scales_(model: nn.Module, config: QuantConfig) -> nn.Module:
    """The :class:`QuantConfig` transform: ``QuantLinear`` / ``QuantConv2d`` with frozen codes and trainable
    scales (``Δs_out = 0``, ``s_in = 1``), activation scales set when calibrated. Logs the summary."""
    r = resolve_quant_config(config)
    if r.bitplan is not None:
        modules = dict(model.named_modules())
        missing = [n for n in r.layers if not n.startswith("re:") and n not in modules]
        if missing:
            raise BitPlanError(f"bit plan names {len(missing)} layer(s) that {type(model).__name__} lacks, e.g. "
                               f"{missing[:3]}: was it made for another model?")
    if config.plan is None and not any(isinstance(m, QUANTIZABLE) for n, m in model.named_modules() if n):
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d submodule to quantize")
    resolved = resolve_plan(model, r.layers, config.skip)

    summary = QuantSummary()
    by_bits = Counter()
    for name, spec in resolved.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        fp = getattr(parent, child)
        cls = QuantLinear if isinstance(fp, nn.Linear) else QuantConv2d
        q = cls.from_float(fp, spec["w_bits"], init=r.init, clip_ratios=config.clip_ratios,
                           train_bias=config.train_bias, separable=config.separable,
                           n_timestep_sets=config.n_timestep_sets, symmetric=r.symmetric, a_bits=spec["a_bits"])
        q.fqn = name
        q.train(fp.training)
        setattr(parent, child, q)
        summary.n_layers += 1
        summary.n_weights += fp.weight.numel()
        summary.bytes_before += q.float_weight_bytes()
        summary.bytes_after += q.weight_bytes()
        by_bits[q.bits] += 1
    summary.layers_by_bits = dict(by_bits)
    if r.act_scales == "calibrated":
        set_activation_ranges_(model, r.act_ranges)
    log.info("quantize_: %s", summary)
    return model


# -- activation scales ----------------------------------------------------------------------------
def set_activation_ranges_(model: nn.Module, ranges: dict) -> nn.Module:
    """Fix ``a_scale = max(ranges[name], tiny) / (2**(a_bits−1) − 1)`` of each quantized layer with
    ``a_bits`` that ``ranges`` (``{layer name: max|input|}``) names; the others keep theirs."""
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, QuantLayer) and m.a_bits is not None and name in ranges:
                m.a_scale.fill_(max(float(ranges[name]), tiny) / (2 ** (m.a_bits - 1) - 1))
    return model


@contextmanager
def calibrate_activations(model: nn.Module):
    """Within the block, quantized layers with ``a_bits`` record max|input| instead of quantizing.

    On exit each observed layer's ``a_scale`` becomes ``max|x| / (2**(a_bits−1) − 1)``. Layers that saw
    no input keep their previous scale.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer) and m.a_bits is not None}
    for m in layers.values():
        m._calibrating, m._a_observed_max = True, None
    try:
        yield model
    finally:
        seen = {n: m._a_observed_max for n, m in layers.items() if m._a_observed_max is not None}
        for m in layers.values():
            m._calibrating, m._a_observed_max = False, None
        set_activation_ranges_(model, seen)


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
