"""Memory estimate against the measured peak, for every registered method at both benchmark sizes.

    python benchmarks/memory_estimate.py [--json FILE]                 # ~60M pixel UNet + MiniLM, 32x32, batch 4
    python benchmarks/memory_estimate.py --sd15 [--json FILE]          # SD 1.5 configs, 512x512, batch 1
    python benchmarks/memory_estimate.py --sd15 --measured F.json      # measured peaks from a finetune_memory.py run

The estimate (``finetune.estimate.estimate_from_description``) sees only a description built from the
configs (the bench UNet's config, MiniLM's config.json and safetensors header; for ``--sd15`` the
published configs in ``benchmarks/configs/sd15``): no weights. The measured peak comes from
``benchmarks/finetune_memory.py``'s own fresh-process worker and meter (``spawn``: peak RSS above the
footprint before the model is built, glibc's mmap threshold pinned), with its configs (same steps, batch
size, learning rates, training images); ``--measured`` reads them from that script's ``--json`` output
instead of rerunning the workers (the SD-1.5 runs take ~20 minutes on 2 cores). Besides the methods,
``full`` runs with each bf16 optimizer (``full[OPT]`` rows; the 60M size only unless ``--optimizers``).

Prints a table (estimate low / expected / high, measured, expected / measured) and JSON;
``--json FILE`` writes ``{"rows": [{"size", "method", "low_bytes", "expected_bytes", "high_bytes",
"measured_bytes", ...}]}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import finetune_memory as fm  # noqa: E402  (its worker and meter; no second meter here)

BF16_OPTIMIZERS = ("fp32-master", "remainder", "remainder-in-backward")
MiB = 2**20


def bench_description(kind: str) -> dict:
    """The description ``finetune.estimate`` reads, for ``finetune_memory.build_model(kind)``'s model, from
    configs and safetensors headers only."""
    from finetune.estimate import describe_components  # noqa: F401  (the format)
    from finetune.estimate.describe import read_safetensors_header

    cfg = lambda n: {k: v for k, v in json.loads((fm.SD15 / n).read_text()).items() if not k.startswith("_")}  # noqa: E731
    if kind == "sd15":
        return {"source": "benchmarks/configs/sd15", "pipeline": "StableDiffusionPipeline", "components": {
            "unet": {"library": "diffusers", "class": "UNet2DConditionModel", "config": cfg("unet.json"), "tensors": {}},
            "vae": {"library": "diffusers", "class": "AutoencoderKL", "config": cfg("vae.json"), "tensors": {}},
            "text_encoder": {"library": "transformers", "class": "CLIPTextModel", "config": cfg("text_encoder.json"),
                             "tensors": {}},
            "tokenizer": {"library": "transformers", "class": "CLIPTokenizer", "model_max_length": 77}}}
    from data.text import minilm_path
    from finetune.zoo.specs import PROMPT_TOKENS, unet

    te = minilm_path()
    unet_cfg = dict(unet((192, 384, 384), attention=(False, True, True), layers=1, head_dim=32, groups=32))
    return {"source": "benchmarks/finetune_memory.py unet", "pipeline": "MandcPixelPipeline", "components": {
        "unet": {"library": "diffusers", "class": "UNet2DConditionModel", "config": unet_cfg, "tensors": {}},
        "text_encoder": {"library": "transformers", "class": "BertModel",
                         "config": json.loads((te / "config.json").read_text()),
                         "tensors": read_safetensors_header(te / "model.safetensors")},
        "tokenizer": {"library": "transformers", "class": "BertTokenizer", "model_max_length": PROMPT_TOKENS}}}


def run_configs(kind: str, steps: int, optimizers: bool) -> dict[str, tuple[str, dict]]:
    """``{row name: (method, config)}`` exactly as ``finetune_memory.py`` runs them."""
    from finetune.methods import METHODS

    bs = 1 if kind == "sd15" else 4
    common = {"steps": steps, "batch_size": bs, "checkpoint_every": 0, "seed": 0, "gradient_checkpointing": False}
    rows = {name: (name, dict(common, lr=fm.LR.get(name, 1e-4))) for name in METHODS}
    if optimizers:
        for opt in BF16_OPTIMIZERS:
            rows[f"full[{opt}]"] = ("full", dict(common, lr=fm.LR["full"], optimizer=opt))
    return rows


def measured_from(path: Path) -> dict[str, int]:
    """Peaks from a ``finetune_memory.py --json`` file: methods and the optimizer section."""
    out = json.loads(path.read_text())
    peaks = {k: v["peak_mem_bytes"] for k, v in out.get("methods", {}).items() if "peak_mem_bytes" in v}
    key = {"fp32_master": "fp32-master", "remainder": "remainder", "remainder_in_backward": "remainder-in-backward"}
    peaks.update({f"full[{key[k]}]": v["peak_mem_bytes"] for k, v in out.get("optimizer", {}).items()
                  if "peak_mem_bytes" in v and k in key})
    return peaks


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd15", action="store_true", help="SD 1.5 scale (configs in benchmarks/configs/sd15)")
    ap.add_argument("--steps", type=int, default=None, help="steps per measured run (default 3; 2 with --sd15): "
                                                            "the peak is reached in step 2")
    ap.add_argument("--methods", nargs="*", default=None, help="subset of rows")
    ap.add_argument("--optimizers", action="store_true", default=None,
                    help="add full[OPT] rows for the bf16 optimizers (default: on at the 60M size, off with --sd15)")
    ap.add_argument("--measured", type=Path, default=None, help="take measured peaks from this finetune_memory.py JSON")
    ap.add_argument("--estimate-only", action="store_true", help="do not measure")
    ap.add_argument("--mem-limit-gb", type=float, default=22.0, help="data limit of --sd15 workers")
    ap.add_argument("--no-eval", action="store_true", help="measured runs skip the held-out loss before and after "
                                                          "(it is a no-grad forward at the training batch size)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here (rewritten after every row)")
    args = ap.parse_args(argv)

    from finetune.estimate import estimate_from_description

    kind = "sd15" if args.sd15 else "unet"
    size = "sd15" if args.sd15 else "unet-60m"
    steps = args.steps or (2 if args.sd15 else 3)
    optimizers = (not args.sd15) if args.optimizers is None else args.optimizers
    n_train = 2 if args.sd15 else 16  # finetune_memory.py's training images per size
    desc = bench_description(kind)
    configs = run_configs(kind, steps, optimizers)
    if args.methods:
        configs = {k: v for k, v in configs.items() if k in args.methods}
    measured = measured_from(args.measured) if args.measured else {}
    wargs = argparse.Namespace(n_train=n_train, steps=steps, no_eval=args.no_eval, mem_limit_gb=args.mem_limit_gb)

    rows, t0 = [], time.perf_counter()
    for row, (method, cfg) in configs.items():
        t1 = time.perf_counter()
        est = estimate_from_description(desc, method, cfg, device="cpu", n_images=n_train)
        est_s = time.perf_counter() - t1
        meas, source = measured.get(row), "file" if row in measured else None
        if meas is None and not args.estimate_only and not args.measured:
            r = fm.spawn(method, kind, cfg, wargs)
            meas, source = r.get("peak_mem_bytes"), "worker"
        ratio = est.expected_bytes / meas if meas else None
        rows.append({"size": size, "method": row, "low_bytes": est.low_bytes, "expected_bytes": est.expected_bytes,
                     "high_bytes": est.high_bytes, "measured_bytes": meas, "ratio": None if ratio is None else round(ratio, 3),
                     "within_15pct": None if ratio is None else abs(ratio - 1) <= 0.15,
                     "high_covers": None if meas is None else est.high_bytes >= meas,
                     "measured_from": source, "estimate_s": round(est_s, 1), "terms": est.terms, "notes": est.notes})
        print(f"  {row:28s} est {est.expected_bytes / MiB:9.1f} MiB  measured "
              f"{'—' if meas is None else f'{meas / MiB:9.1f}'} MiB  ratio {'—' if ratio is None else f'{ratio:.3f}'}"
              f"  ({est_s:.0f}s to estimate)", file=sys.stderr, flush=True)
        if args.json:  # a long run keeps what it measured so far
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"size": size, "partial": True, "rows": rows}, indent=2))
    out = {"size": size, "device": "cpu", "steps": steps, "n_images": n_train,
           "measured_with": str(args.measured) if args.measured else "finetune_memory.py workers",
           "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"\n## {size}: estimate vs measured (CPU peak RSS)\n")
    print("| method | low MiB | expected MiB | high MiB | measured MiB | expected / measured | high ≥ measured |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        m = r["measured_bytes"]
        print(f"| `{r['method']}` | {r['low_bytes'] / MiB:.0f} | {r['expected_bytes'] / MiB:.0f} | {r['high_bytes'] / MiB:.0f} | "
              f"{'—' if m is None else format(m / MiB, '.0f')} | {'—' if r['ratio'] is None else format(r['ratio'], '.3f')} | "
              f"{'—' if r['high_covers'] is None else ('yes' if r['high_covers'] else 'NO')} |")
    print(json.dumps({"rows": [{k: r[k] for k in ("size", "method", "low_bytes", "expected_bytes", "high_bytes",
                                                   "measured_bytes", "ratio")} for r in rows]}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
