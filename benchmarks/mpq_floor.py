"""Benchmark: where a model's quantization floor comes from — weight-only uniform plans and one layer at a time.

    MANDC_HOME=... python benchmarks/mpq_floor.py [--model unet-l-shapes] [--top 8] [--json FILE]

On the held-out split of ``builtin:gradients_linear`` (``benchmarks/mpq.py``'s evaluation: 16 images,
7 timesteps, 2 noise draws), the loss increase over full precision of

* uniform plans ``W{w}A{a}`` (every layer, no pins; activation scales from the default allocator's
  profile: K = 3 steps on the calibration batch plus the range pass), weight-only (A16) and at A8/A6;
* each layer alone with its weights at ``--layer-bits`` (the same quantizer: symmetric, clip search),
  everything else in full precision: the ``--top`` largest, and their sum.

A loss increase has a first-order term of either sign, so neither table need be monotone or additive.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

PLANS = ((8, 16), (6, 16), (5, 16), (4, 16), (8, 8), (5, 8), (4, 8), (8, 6))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="unet-l-shapes")
    ap.add_argument("--layer-bits", type=int, default=8)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    from mpq import load_setup
    from zo_ablation import write_json

    from finetune.metrics import heldout_loss
    from finetune.quant import quantize_weight
    from finetune.quant.weight_init import dequantize_codes
    from profiler.mpq.allocate import Budget
    from profiler.mpq.baselines import baseline_plan
    from profiler.mpq.profile import MPQConfig, profile_importance, quantized_copy

    t0 = time.perf_counter()
    setup = types.SimpleNamespace(threads=1, data="builtin:gradients_linear", timesteps=10, n_calib=32,
                                  time_limit=60, n_validation=16)
    model, ds, _, batch, _, layers = load_setup(args.model, setup)
    c = MPQConfig()
    prof = profile_importance(model, batch, c.k, layers, range_timesteps=c.range_timesteps,
                              range_samples=c.range_samples)
    base = heldout_loss(model, ds.heldout).mean
    budget = Budget.from_avg_bits(layers, 8)  # unused by a uniform plan beyond its record
    uniform = {}
    for w, a in PLANS:
        plan = baseline_plan(layers, "uniform", budget, uniform_bits=(w, a), act_ranges=prof.input_max)
        uniform[f"W{w}A{a}"] = heldout_loss(quantized_copy(model, plan), ds.heldout).mean - base

    modules = dict(model.denoiser.named_modules())
    alone = []
    for info in layers:
        mod = modules[info.name]
        weight = mod.weight.data
        codes, zero, scale = quantize_weight(weight, args.layer_bits, "clip", symmetric=True)
        mod.weight.data = dequantize_codes(codes, zero, scale).reshape(weight.shape).to(weight.dtype)
        try:
            alone.append({"layer": info.name, "weights": int(weight.numel()), "role": info.role,
                          "loss_increase": heldout_loss(model, ds.heldout).mean - base})
        finally:
            mod.weight.data = weight
    alone.sort(key=lambda r: -r["loss_increase"])
    out = {"model": args.model, "base_heldout_loss": base, "uniform": uniform, "layer_bits": args.layer_bits,
           "one_layer_sum": sum(r["loss_increase"] for r in alone), "one_layer_top": alone[: args.top],
           "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=2))
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
