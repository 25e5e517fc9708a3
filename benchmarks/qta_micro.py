"""Benchmark: QTA LoRA against full-precision LoRA (peft) on a GEMM-dominated stack; prints JSON.

    python benchmarks/qta_micro.py --tokens 2048 --width 1024 --layers 4 --threads 1

1. Step time: forward + backward + AdamW step of ``layers`` × (Linear(width, width) + LoRA r) with GELUs,
   QTA (both weight-gradient modes) against fp32 ``nn.Linear`` + peft LoRA. Median of ``--repeats``.
2. Convergence: the same stacks learn a teacher = base stack + a rank-r delta per layer, from a noisy
   regression target; final losses (mean of the last 10 steps) are compared.
3. Peak memory of one training step (fresh process per kind; peak RSS over the step minus the RSS before
   it, glibc's mmap threshold pinned so RSS tracks live tensors).
4. The raw GEMMs: fp32, bf16 and ``torch._int_mm`` at ``tokens × width × width``.

Timings on a shared machine are rough; rerun on an idle one for final numbers.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from finetune.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from finetune.qta.apply import apply_qta_lora_, qta_lora_parameters


def _stack(width: int, layers: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    mods = []
    for k in range(layers):
        mods.append(nn.Linear(width, width))
        if k < layers - 1:
            mods.append(nn.GELU())
    return nn.Sequential(*mods)


def _targets(model: nn.Sequential) -> list:
    return [n for n, m in model.named_children() if isinstance(m, nn.Linear)]


def build(kind: str, base: nn.Sequential, r: int, alpha: float):
    """``(model, trainable params)`` for kind ``"fp32-lora"``, ``"qta-fp32grad"`` or ``"qta-int8grad"``."""
    model = copy.deepcopy(base).requires_grad_(False)
    if kind == "fp32-lora":
        from peft import LoraConfig, inject_adapter_in_model

        model = inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, target_modules=_targets(model),
                                                   lora_dropout=0.0), model)
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        return model, params
    apply_qta_lora_(model, r=r, alpha=alpha, target_modules=_targets(model),
                    weight_grad="int8" if kind == "qta-int8grad" else "fp32")
    return model, qta_lora_parameters(model)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def step_times(tokens, width, layers, r, repeats, seed=0) -> dict:
    base = _stack(width, layers, seed)
    x = torch.randn(tokens, width, generator=torch.Generator().manual_seed(seed))
    out = {}
    for kind in KINDS:
        model, params = build(kind, base, r, r)
        with torch.no_grad():  # a non-zero B, as after some training, so every path does real work
            for p in params:
                if p.shape[1] == r:
                    p.normal_(0, 0.02)
        opt = torch.optim.AdamW(params, lr=1e-4)
        xin = x.clone().requires_grad_(True)  # the stack sits inside a network: grad w.r.t. x is needed

        def step():
            loss = model(xin).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            xin.grad = None

        out[kind] = _time(step, repeats)
    ref = out["fp32-lora"]
    return {"seconds": out, "ratio_to_fp32_lora": {k: v / ref for k, v in out.items()}}


def convergence(tokens, width, layers, r, steps, lr, seed=0) -> dict:
    base = _stack(width, layers, seed)
    teacher = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in teacher:
            if isinstance(m, nn.Linear):
                delta = torch.randn(width, r, generator=g) @ torch.randn(r, width, generator=g)
                m.weight += delta * (0.2 / width**0.5)
    x = torch.randn(tokens, width, generator=g)
    with torch.no_grad():
        clean = teacher(x)
        noise_std = 0.1 * clean.std()
        y = clean + noise_std * torch.randn(clean.shape, generator=g)
    res = {"noise_floor_mse": float(noise_std**2)}
    for kind in ("fp32-lora", "qta-fp32grad", "qta-int8grad"):
        torch.manual_seed(seed + 2)  # same LoRA init draws for every kind
        model, params = build(kind, base, r, r)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        losses = []
        for _ in range(steps):
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        with torch.no_grad():
            res[kind] = {"first_loss": losses[0], "final_loss": statistics.fmean(losses[-10:]),
                         "final_clean_mse": float((model(x) - clean).pow(2).mean())}
    ref = res["fp32-lora"]["final_loss"]
    res["final_loss_ratio_to_fp32_lora"] = {k: res[k]["final_loss"] / ref
                                            for k in ("fp32-lora", "qta-fp32grad", "qta-int8grad")}
    return res


KINDS = ("fp32-lora", "qta-fp32grad", "qta-int8grad")


def step_peak_one(kind, tokens, width, layers, r) -> int:
    """Bytes a training step adds on top of the model (run in a fresh process, see ``step_peaks``)."""
    model, params = build(kind, _stack(width, layers, 0), r, r)
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(tokens, width).requires_grad_(True)
    base = current_rss_bytes()
    reset_peak_rss()
    model(x).pow(2).mean().backward()
    opt.step()
    return peak_rss_bytes() - base


def step_peaks(tokens, width, layers, r) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = {}
    for kind in KINDS:
        res = subprocess.run([sys.executable, __file__, "--peak-of", kind, "--tokens", str(tokens),
                              "--width", str(width), "--layers", str(layers), "--rank", str(r)],
                             check=True, capture_output=True, text=True, env=env)
        out[kind] = int(res.stdout.strip().splitlines()[-1])
    return {"MiB": {k: round(v / 2**20, 1) for k, v in out.items()},
            "ratio_to_fp32_lora": {k: v / out["fp32-lora"] for k, v in out.items()}}


def gemm_times(tokens, width, repeats) -> dict:
    a = torch.randn(tokens, width)
    b = torch.randn(width, width)
    ai = torch.randint(-127, 128, (tokens, width), dtype=torch.int8)
    bi = torch.randint(-127, 128, (width, width), dtype=torch.int8)
    ab, bb = a.bfloat16(), b.bfloat16()
    return {"fp32": _time(lambda: a @ b, repeats), "bf16": _time(lambda: ab @ bb, repeats),
            "int8_int_mm": _time(lambda: torch._int_mm(ai, bi), repeats)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--conv-tokens", type=int, default=1024)
    p.add_argument("--conv-width", type=int, default=256)
    p.add_argument("--conv-steps", type=int, default=600)
    p.add_argument("--conv-lr", type=float, default=3e-3)
    p.add_argument("--skip", nargs="*", default=[], choices=["time", "convergence", "gemm", "memory"])
    p.add_argument("--peak-of", choices=KINDS, help=argparse.SUPPRESS)  # child process mode
    a = p.parse_args(argv)
    if a.peak_of:
        torch.set_num_threads(1)
        print(step_peak_one(a.peak_of, a.tokens, a.width, a.layers, a.rank))
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "shape": {"tokens": a.tokens, "width": a.width, "layers": a.layers, "rank": a.rank}}
    if "gemm" not in a.skip:
        report["gemm_seconds"] = gemm_times(a.tokens, a.width, a.repeats)
    if "time" not in a.skip:
        report["step"] = step_times(a.tokens, a.width, a.layers, a.rank, a.repeats)
    if "memory" not in a.skip:
        report["step_peak_memory"] = step_peaks(a.tokens, a.width, a.layers, a.rank)
    if "convergence" not in a.skip:
        report["convergence"] = {"shape": {"tokens": a.conv_tokens, "width": a.conv_width, "layers": a.layers,
                                           "rank": a.rank, "steps": a.conv_steps, "lr": a.conv_lr},
                                 **convergence(a.conv_tokens, a.conv_width, a.layers, a.rank, a.conv_steps, a.conv_lr)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
