"""``make demo``: the whole chain on the embedded defaults, as a user runs it.

1. ``mandc plan builtin:shapes_small_mixed --memory M --device cpu`` — a dataset the shipped reference never
   profiled; the candidates are the zoo's three smallest models, so a fresh clone builds only the one chosen
   (about a minute). ``M`` is set between the memory that the best quantized method needs and what full
   fine-tuning needs on the chosen model (both from the plan's own estimate), so the plan must pick a
   memory-efficient method;
2. ``mandc run out/demo/plan.json`` — quantize as planned, fine-tune, evaluate, write the report and feed the
   measured record into the matching graph;
3. ``mandc recommend builtin:shapes_small_mixed`` — the ranking now carries the measured edge.

Each step is the real CLI in its own process, printed before it runs; every stage prints a line, so the
output reads the same in a terminal and in a log file.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DATASET = "builtin:shapes_small_mixed"
CANDIDATES = "zoo:unet-xs-gradients,zoo:unet-xs-faces,zoo:unet-xs-broad"


def _mandc(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mandc.cli", *args]
    print("$ mandc " + " ".join(args), flush=True)
    res = subprocess.run(cmd, text=True, stdout=subprocess.PIPE)
    if res.stdout:
        print(res.stdout, end="", flush=True)
    if res.returncode:
        raise SystemExit(f"demo: `mandc {args[0]}` failed (exit {res.returncode})")
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (created)")
    ap.add_argument("--data", default=DATASET, help="dataset reference to plan for")
    ap.add_argument("--candidates", default=CANDIDATES, help="comma-separated model refs to choose from")
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps")
    ap.add_argument("--lr", type=float, default=1e-4,
                    help="learning rate (the recipes' paper rates are for SD-sized models; 1e-3 diverges here)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--device", "cpu", "--candidates", args.candidates, "--steps", str(args.steps), "--set", f"lr={args.lr}"]

    print("== 1/3 plan: which model, which bits, which method fits the memory", flush=True)
    probe = args.out / "estimate"
    _mandc("plan", args.data, "--memory", "64GiB", "--out", str(probe), *common)
    mem = json.loads((probe / "plan.json").read_text())["memory"]
    quant = min(mem[m]["high_bytes"] for m in ("tuneqdm", "peqa"))
    full = mem["full"]["high_bytes"]
    if quant >= full:
        raise SystemExit(f"demo: the estimate puts quantized fine-tuning ({quant} B) at or above full ({full} B); "
                         "no budget separates them")
    budget = (quant + full) // 2
    print(f"budget {budget / 2**20:.1f} MiB: between the best quantized method's high estimate "
          f"({quant / 2**20:.1f} MiB) and full fine-tuning's ({full / 2**20:.1f} MiB)", flush=True)
    _mandc("plan", args.data, "--memory", str(budget), "--out", str(args.out), *common)

    print("== 2/3 run: quantize, fine-tune, evaluate, feed the graph", flush=True)
    _mandc("run", str(args.out / "plan.json"))

    print("== 3/3 recommend: the measured edge is in the graph now", flush=True)
    _mandc("recommend", args.data, "--top-k", "11")  # every model, so the measured one is in the table
    plan = json.loads((args.out / "plan.json").read_text())
    summary = {"dataset": args.data, "model": plan["model"], "method": plan["method"], "budget_bytes": budget,
               "result": {k: plan["result"][k] for k in ("heldout_loss_before", "heldout_loss_after",
                                                          "measured_peak_bytes", "estimate_high_bytes", "within_high")},
               "report": str((args.out / "report.html").resolve()), "seconds": round(time.perf_counter() - t0, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"report: {summary['report']}", flush=True)
    print(f"demo done in {summary['seconds']:.0f}s", flush=True)
    return summary


if __name__ == "__main__":
    main()
