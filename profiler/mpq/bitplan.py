"""``BitPlan`` (defined in :mod:`finetune.quant.bitplan`, beside the quantizer that gives it its meaning)
and :func:`apply_bitplan`, MPQ-Diff's way of building the model a plan describes.

``apply_bitplan(model, plan)`` is ``finetune.quant.quantize_(denoiser, QuantConfig(plan=plan))`` — the
plan's recipe: symmetric per-output-channel weights with the clipping search, per-tensor activation scales
from the plan's ``act_ranges`` (calibrated on MPQ-Diff's calibration batch) — plus, optionally, a
recalibration of those scales on the *quantized* model. ``mandc quantize`` and MPQ-Diff's validation use
it, and the quantized fine-tuning methods given ``plan=`` build the same model with the same call.
"""
from __future__ import annotations

from finetune.quant.bitplan import BITPLAN_RECIPE, FORMAT, VERSION, BitPlan, BitPlanError

__all__ = ["BitPlan", "BitPlanError", "BITPLAN_RECIPE", "FORMAT", "VERSION", "apply_bitplan"]


def apply_bitplan(model, plan: BitPlan, calibration=None, timesteps=None):
    """Quantize ``model``'s denoiser in place with ``plan`` and set its activation scales.

    Args:
        model: a ``T2IModel`` (its ``denoiser`` is quantized) or a bare ``nn.Module``.
        plan: the bit plan (every layer it names must be an ``nn.Linear`` / ``nn.Conv2d`` of the model).
        calibration: optional :class:`~profiler.mpq.capture.CalibrationBatch` to recalibrate activation
            scales on the *quantized* model (``max|input|`` over the batch at ``timesteps``, default the
            plan's timesteps, at most 10). Without it the scales come from the plan's ``act_ranges`` (the
            full-precision model's ranges on the profiling batch); layers with neither are quantized with
            per-call (dynamic) scales.

    Returns the ``finetune.quant.QuantSummary`` of the quantized layers (bytes before/after).
    """
    import torch

    from finetune.quant import QuantConfig, calibrate_activations, quant_summary, quantize_

    denoiser = getattr(model, "denoiser", model)
    quantize_(denoiser, QuantConfig(plan=plan))
    if calibration is not None and any(a is not None for a in plan.a_bits):
        if not hasattr(model, "denoise"):
            raise TypeError("calibrating activations needs a T2IModel (to run the denoiser on the calibration batch)")
        ts = list(timesteps if timesteps is not None else plan.settings.get("timesteps") or [])
        if not ts:
            ts = [model.num_train_timesteps // 2]
        if len(ts) > 10:  # evenly thinned: the activation range is stable across neighbouring steps
            ts = [ts[round(i * (len(ts) - 1) / 9)] for i in range(10)]
        with torch.no_grad(), calibrate_activations(denoiser):
            for t in ts:
                model.denoise(calibration.noised(model, t), t, calibration.cond)
    return quant_summary(denoiser)
