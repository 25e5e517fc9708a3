"""Benchmark: the weight quantizer's clipping search against scoring one clip ratio at a time; prints JSON.

    MANDC_HOME=... python benchmarks/quant_clip_search.py [--model unet-l-shapes] [--repeats 2]

Every Linear/Conv2d weight of a zoo model is quantized at each width the bit allocators use (2, 3, 4, 6, 8;
``finetune.quant.weight_init.quantize_weight``, ``init="clip"``, symmetric and asymmetric codes), once with
the product's blocked search and once with :func:`one_ratio_at_a_time` (the search as it was written before:
each of the 21 ratios scored over the whole weight, best kept with ``torch.where``). Reports the CPU seconds
of each (the best of ``--repeats``, one torch thread), their ratio, and whether codes, zero points and
scales are identical.
"""
from __future__ import annotations

import argparse
import json
import time

WIDTHS = (2, 3, 4, 6, 8)


def one_ratio_at_a_time(weight, bits: int, symmetric: bool):
    """``(codes, zero, scale)`` of ``quantize_weight(weight, bits, "clip", symmetric)``, scored ratio by ratio."""
    import torch

    from finetune.quant.weight_init import DEFAULT_CLIP_RATIOS, _affine_params, _codes

    w = weight.detach().reshape(weight.shape[0], -1).float()
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    best = torch.full_like(lo, float("inf"))
    scale, zero = torch.ones_like(lo), torch.zeros_like(lo)
    for r in DEFAULT_CLIP_RATIOS:
        s, z = _affine_params(lo * r, hi * r, bits, symmetric)
        err = ((_codes(w, s, z, bits) - z[:, None]) * s[:, None] - w).pow_(2).mean(1)
        better = err < best
        best, scale, zero = torch.where(better, err, best), torch.where(better, s, scale), torch.where(better, z, zero)
    return _codes(w, scale, zero, bits).to(torch.uint8), zero.to(torch.uint8), scale.float()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="unet-l-shapes", help="zoo model (built first if missing)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from finetune import zoo
    from finetune.load import load_model
    from finetune.quant.weight_init import quantize_weight

    torch.set_num_threads(1)
    if not zoo.is_built(args.model):
        zoo.build(args.model)
    den = load_model(f"zoo:{args.model}").denoiser
    weights = [m.weight.detach() for m in den.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    out = {"model": args.model, "layers": len(weights), "weights": sum(w.numel() for w in weights),
           "widths": list(WIDTHS), "quantizations": len(weights) * len(WIDTHS)}
    for symmetric in (True, False):
        results, seconds = {}, {}
        for name, fn in (("blocked", lambda w, b: quantize_weight(w, b, "clip", symmetric=symmetric)),
                         ("one_ratio_at_a_time", lambda w, b: one_ratio_at_a_time(w, b, symmetric))):
            best = float("inf")
            for _ in range(max(1, args.repeats)):
                c0 = time.process_time()
                results[name] = [fn(w, b) for w in weights for b in WIDTHS]
                best = min(best, time.process_time() - c0)
            seconds[name] = round(best, 3)
        same = all(torch.equal(x, y) for a, b in zip(results["blocked"], results["one_ratio_at_a_time"])
                   for x, y in zip(a, b))
        out["symmetric" if symmetric else "asymmetric"] = {
            "cpu_s": seconds, "speedup": round(seconds["one_ratio_at_a_time"] / seconds["blocked"], 2),
            "identical": same}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
