"""Where a ``qta-lora`` training step spends its CPU time, against ``lora``; prints JSON.

    python benchmarks/qta_profile.py [--dit 1152x2] [--threads 1]

One forward + backward of the memory benchmark's PixArt (``finetune_memory.build_model("dit-WxD")``,
batch 8 at 32×32, LoRA r=4 on the attention and feed-forward projections) under ``torch.profiler``, after
two warm-up steps; ``step_s`` is the median of three unprofiled steps before it. Self CPU time is grouped into the INT8 GEMM (``aten::_int_mm``), float GEMMs
(``aten::mm``/``addmm``/``bmm``), the element-wise passes that quantize operands and rescale results
(abs, amax, mul, div, round, copy/cast), attention, and the rest; shares are of the step's total.

The allocator matters to ``qta-lora``, which quantizes operands into fresh buffers: run it once more with
``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=65536`` in the environment (the memory benchmark's
setting for its memory sections) to see what page-faulting every temporary costs each method.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))       # finetune_memory
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the project

GROUPS = {
    "int8_gemm": ("aten::_int_mm",),
    "float_gemm": ("aten::mm", "aten::addmm", "aten::bmm", "aten::addmm_"),
    "quantize_rescale": ("aten::abs", "aten::amax", "aten::mul", "aten::mul_", "aten::div", "aten::div_",
                         "aten::round_", "aten::copy_", "aten::clamp_min_", "aten::cat"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
}


def profile_step(method: str, dit: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import finetune_memory as fm
    from finetune.methods import METHODS

    torch.manual_seed(0)
    model = fm.build_model(f"dit-{dit}")
    cls = METHODS[method]
    cls(model, cls.Config(target_modules=fm.DIT_TARGETS)).setup_()
    x0 = torch.randn(8, 3, 32, 32)
    noise, t = torch.randn_like(x0), torch.randint(0, 1000, (8,))
    cond = model.encode_prompt(["a photo"] * 8)

    def step():
        x_t = model.scheduler.add_noise(x0, noise, t)
        torch.nn.functional.mse_loss(model.denoise(x_t, t, cond), model.target(x0, noise, t)).backward()

    step(), step()
    times = []
    for _ in range(3):  # unprofiled: the step time to compare (the profiler adds overhead per op)
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    wall = time.perf_counter() - t0
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_us.values())
    shares = {g: sum(v for k, v in self_us.items() if k in names) / total for g, names in GROUPS.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return {"step_s": round(sorted(times)[1], 3), "step_s_profiled": round(wall, 3), "self_cpu_s": round(total / 1e6, 3),
            "shares": {k: round(v, 3) for k, v in shares.items()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit", default="1152x2", help="PixArt WIDTHxDEPTH (default 1152x2, the README's wide run)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = {"model": f"PixArt {args.dit}, batch 8, 256 tokens", "threads": args.threads,
           "methods": {m: profile_step(m, args.dit) for m in ("lora", "qta-lora")}}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
