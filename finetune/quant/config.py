"""``QuantConfig``: what :func:`~finetune.quant.quantize_` does to a model, as data (torchao style).

One config describes one quantized model; :func:`~finetune.quant.quantize.quantize_` is the transform
registered for it. The fields and how they combine:

* which layers, at which bits: ``plan`` — ``None`` (every ``nn.Linear`` / ``nn.Conv2d`` at ``bits`` weight
  bits and ``a_bits`` activation bits), a mapping ``{name | "re:<regex>": bits | {"w_bits", "a_bits"}}``
  (a JSON file holding one, or ``{"layers": mapping}``), or a :class:`~finetune.quant.bitplan.BitPlan`
  (the object, its ``to_dict()``, or its JSON file from ``mandc quantize``); minus ``skip``.
* the weight quantizer: ``symmetric`` codes or asymmetric (zero point per channel), ``init`` ``"minmax"``
  or ``"clip"`` (per-channel clipping search over ``clip_ratios``), see :mod:`finetune.quant.weight_init`.
* the activation scales of layers with ``a_bits``: ``act_scales="dynamic"`` (``max|x|`` of each call's
  input) or ``"calibrated"`` (fixed, ``a = act_ranges[layer] / (2**(a_bits−1) − 1)`` from ranges measured
  on a calibration batch; a layer without a range stays dynamic).
* the trainable scale structure (PEQA / TuneQDM): ``separable`` (``s_in``), ``n_timestep_sets``,
  ``train_bias``. These start as the identity (``Δs_out = 0``, ``s_in = 1``): they change what trains,
  not the initial model.

``symmetric``, ``init``, ``act_scales`` and ``act_ranges`` default to ``None``: the plan's own recipe
for a BitPlan (:data:`~finetune.quant.bitplan.BITPLAN_RECIPE`: symmetric, clip, calibrated with the
plan's ``act_ranges`` — the model MPQ-Diff scored), else asymmetric, clip, dynamic. Giving a BitPlan a
value that contradicts its recipe is an error: pass ``plan=bitplan.quant_plan()`` (bits only) to
quantize its bits another way.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from finetune.quant.act_quant import check_a_bits
from finetune.quant.packing import check_bits
from finetune.quant.weight_init import DEFAULT_CLIP_RATIOS, INITS

ACT_SCALES = ("dynamic", "calibrated")


@dataclass(frozen=True)
class QuantConfig:
    """Config of :func:`~finetune.quant.quantize_` for ``QuantLinear`` / ``QuantConv2d`` (see module doc)."""

    bits: int = field(default=4, metadata={"help": "weight bits (2..8) of every layer when no plan is given"})
    a_bits: int | None = field(default=None, metadata={
        "help": "activation bits (2..16) of every layer when no plan is given; None: activations stay float"})
    plan: object = field(default=None, metadata={
        "help": "per-layer bits: a mapping, a JSON path, or a BitPlan (object, dict or mandc quantize's JSON)"})
    skip: tuple = field(default=(), metadata={"help": "layer names or 're:<regex>' left in full precision"})
    symmetric: bool | None = field(default=None, metadata={
        "help": "symmetric weight codes (fixed zero point); None: the BitPlan's (True), else False"})
    init: str | None = field(default=None, metadata={
        "help": "weight scale init 'minmax' or 'clip' (clipping search); None: 'clip'"})
    clip_ratios: tuple = field(default=DEFAULT_CLIP_RATIOS, metadata={"help": "range shrink ratios of 'clip'"})
    act_scales: str | None = field(default=None, metadata={
        "help": "'dynamic' (per call) or 'calibrated' (from act_ranges); None: 'calibrated' for a BitPlan with "
                "activation ranges, else 'dynamic'"})
    act_ranges: dict | None = field(default=None, metadata={
        "help": "{layer: max|input|} behind calibrated scales; None: the BitPlan's act_ranges"})
    separable: bool = field(default=False, metadata={"help": "TuneQDM's trainable per-input-channel scale s_in"})
    n_timestep_sets: int = field(default=1, metadata={"help": "TuneQDM's timestep-interval scale sets N"})
    train_bias: bool = field(default=False, metadata={"help": "leave the quantized layers' biases trainable"})

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_a_bits(self.a_bits)
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.act_scales is not None and self.act_scales not in ACT_SCALES:
            raise ValueError(f"act_scales must be one of {ACT_SCALES}, got {self.act_scales!r}")
        n = self.n_timestep_sets
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_timestep_sets must be a positive integer, got {n!r}")
        skip = (self.skip,) if isinstance(self.skip, str) else tuple(self.skip or ())
        object.__setattr__(self, "skip", skip)

    def replace(self, **changes) -> "QuantConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class ResolvedQuant:
    """A :class:`QuantConfig` with its plan read and every ``None`` decided (what the transform uses).

    ``layers``: the plan's ordered ``{key: {"w_bits", "a_bits"}}``; ``bitplan``: the BitPlan when the plan
    was one (else ``None``); ``act_ranges``: ``{layer: max|x|}`` used when ``act_scales == "calibrated"``.
    """

    layers: dict
    bitplan: object
    symmetric: bool
    init: str
    act_scales: str
    act_ranges: dict
