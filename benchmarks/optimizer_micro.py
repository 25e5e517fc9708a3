"""Benchmark: peak memory and step time of fp32-master AdamW vs RemainderAdamW (± step in backward).

    python benchmarks/optimizer_micro.py --width 2048 --layers 8 --tokens 64

Each variant runs in a fresh Python process. On CPU the peak is the peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` once the optimizer is built) minus the RSS before the model existed; on CUDA it is
the allocator's peak. glibc's dynamic mmap threshold is pinned so freed tensors return to the OS and RSS
tracks live tensors (to within ~2 bytes/param here). The model is ``layers`` × Linear(width, width) in
bfloat16 with few tokens, so parameters, gradients and optimizer state dominate the peak. Prints JSON with
the measured peaks, the exact bytes held between steps (parameters + optimizer tensors) and the
bytes/param arithmetic (16 / 14 / 12 + one gradient, counting the 2-byte gradient). Timings on a shared
machine are rough.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("fp32-master", "remainder", "remainder-in-backward")


def run_one(variant: str, width: int, layers: int, tokens: int, steps: int, device: str) -> dict:
    import torch
    from torch import nn

    from finetune.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
    from finetune.optim import Fp32MasterAdamW, RemainderAdamW

    torch.set_num_threads(1)
    cuda = device == "cuda"
    base = 0 if cuda else current_rss_bytes()  # the interpreter and torch, before any tensor of the model
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]).to(device)  # fp32: converted below
    n_params = sum(p.numel() for p in model.parameters())
    if variant == "fp32-master":
        opt = Fp32MasterAdamW(model.parameters(), lr=1e-4)
    else:
        opt = RemainderAdamW(model.parameters(), lr=1e-4, step_in_backward=variant == "remainder-in-backward")
    # Training peak only: construction (the transient fp32 model) is not part of the comparison.
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()  # VmHWM := the current RSS
    x = torch.randn(tokens, width, device=device).bfloat16()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes() - base
    return {"variant": variant, "params": n_params, "peak_bytes": peak, "peak_bytes_per_param": peak / n_params,
            "state_bytes_per_param": _state_bytes(model, opt) / n_params,
            "step_seconds_median": sorted(times)[len(times) // 2]}


def _state_bytes(model, opt) -> int:
    """Exact bytes held between steps: parameters + optimizer tensors (fp32 masters, remainders, moments)."""
    import torch

    tensors = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.parameters()}
    states = [opt.state] if hasattr(opt, "state") else [o.state for o in opt.inner]
    for state in states:
        for st in state.values():
            for t in st.values():
                if torch.is_tensor(t):
                    tensors[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    for m in getattr(opt, "masters", []):
        tensors[m.untyped_storage().data_ptr()] = m.untyped_storage().nbytes()
    return sum(tensors.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process mode
    a = p.parse_args(argv)
    if a.variant:
        print(json.dumps(run_one(a.variant, a.width, a.layers, a.tokens, a.steps, a.device)))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    results = []
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--variant", v, "--width", str(a.width),
                              "--layers", str(a.layers), "--tokens", str(a.tokens), "--steps", str(a.steps),
                              "--device", a.device], check=True, capture_output=True, text=True, env=env)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = results[0]["peak_bytes"]
    for r in results:
        r["peak_ratio_to_fp32_master"] = r["peak_bytes"] / ref
    print(json.dumps({"arithmetic_bytes_per_param": {"fp32-master": 16, "remainder": 14,
                                                     "remainder-in-backward": "12 + one parameter's gradient"},
                      "shape": {"width": a.width, "layers": a.layers, "tokens": a.tokens}, "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
