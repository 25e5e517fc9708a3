"""Peak memory, step time and held-out loss of every fine-tuning method on one model, side by side.

    python benchmarks/finetune_memory.py [--json FILE]            # ~60M-param pixel UNet + MiniLM, 32×32
    python benchmarks/finetune_memory.py --sd15 [--json FILE]     # SD 1.5 scale (random weights), 512×512
    python benchmarks/finetune_memory.py --sd15 --methods zo-ti --plan-bits 4   # its denoiser from a W4 bit plan

Each measurement runs in a fresh Python process (``--worker``), so no run inherits another's allocator
state. Memory is the peak over ``finetune.run``'s training window (from the moment the model is prepared —
quantized / adapters added — to the last step; on CUDA the allocator's peak, on CPU the peak RSS,
``VmHWM``) above the worker's footprint *before the model was built*: the same base as the inference
row, so a quantizing method is credited with the full-precision weights it frees (``run``'s own
``peak_mem_bytes``, kept as ``run_peak_bytes``, is above its entry, where the built model is resident); glibc's mmap threshold is pinned
(``MALLOC_MMAP_THRESHOLD_``) so freed tensors return to the OS and RSS tracks live memory.

Sections of the JSON:

- ``methods``: every registered method with its paper's recipe except the learning rate (one per
  method, below) and ``steps``/``batch_size`` (the same for all);
- ``inference_peak_mem_bytes``: forward passes only (ZOODiP's n+1 = 3 per step, no autograd, the
  methods' batch size) on the model quantized as ``zo-ti`` quantizes it (INT8 denoiser, text encoder, VAE);
- ``optimizer``: ``full`` with standard bf16 mixed precision (fp32 master, ``fp32_master``) against
  bf16 + remainder bits with the step inside backward (``remainder_in_backward``), and remainders alone;
- ``qta``: ``lora`` against ``qta-lora`` on a transformer denoiser (PixArt at PixArt-α's width 1152, 2
  blocks, ~54M params, 256 tokens per image) where GEMMs dominate, same LoRA targets (attention and
  feed-forward projections), same steps. Its target is step time, so its workers run with glibc's default
  allocator: the pinned mmap threshold above would tax every temporary buffer with page faults (it made
  ``qta-lora``, which quantizes operands into fresh buffers, look 0.87× ``lora`` instead of ~0.6×).

The models have random weights (seeded): memory and speed do not depend on trained values; held-out
losses here compare methods at equal steps on one model, nothing more (quality over seeds and zoo
models is ``benchmarks/finetune_quality.py``). With ``--sd15`` the UNet, text encoder and VAE are built
from the published SD 1.5 configs in ``benchmarks/configs/sd15`` (a copy of ``shared/configs/sd15``);
workers run under an address-space data limit (``--mem-limit-gb``, default 22) so a method that cannot
fit this machine fails cleanly and is reported as not fitting, with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SD15 = HERE / "configs" / "sd15"

# learning rates for a few-step comparison on a small randomly initialised model (the recipes' SD-scale
# rates, e.g. 3e-6 for scales or 5e-6 for full fine-tuning, would leave every loss unchanged in 30 steps)
LR = {"full": 1e-4, "lora": 1e-3, "ti": 5e-3, "peqa": 1e-4, "tuneqdm": 1e-4, "zo-ti": 5e-3, "qta-lora": 1e-3}
DIT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


# ------------------------------------------------------------------------------------------- models
def build_model(kind: str, seed: int = 0):
    """A seeded random ``T2IModel``: ``unet`` (~60M pixel UNet), ``dit`` (~28M PixArt: width 512, 6 blocks),
    ``dit-WxD`` (PixArt of width W and D blocks, 64-wide heads), or ``sd15``."""
    import torch
    from diffusers import DDPMScheduler, PixArtTransformer2DModel, UNet2DConditionModel
    from transformers import AutoTokenizer, BertModel

    from data.text import minilm_path
    from finetune.memory import materialize_
    from finetune.model import T2IModel
    from finetune.pipeline import MandcPixelPipeline
    from finetune.zoo.specs import PROMPT_TOKENS, SCHEDULER_CONFIG, dit, unet

    torch.manual_seed(seed)
    if kind == "sd15":
        return build_sd15()
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.model_max_length = PROMPT_TOKENS
    te = materialize_(BertModel.from_pretrained(minilm_path()))  # see finetune.memory.materialize_
    if kind == "unet":
        den = {"unet": UNet2DConditionModel(**unet((192, 384, 384), attention=(False, True, True), layers=1,
                                                   head_dim=32, groups=32))}
    else:
        width, depth = (512, 6) if kind == "dit" else map(int, kind.removeprefix("dit-").split("x"))
        den = {"transformer": PixArtTransformer2DModel(**dit(width, depth, heads=width // 64, patch=2))}
    return T2IModel(MandcPixelPipeline(scheduler=DDPMScheduler(**SCHEDULER_CONFIG), text_encoder=te, tokenizer=tok, **den))


def offline_clip_tokenizer(folder: Path):
    """A byte-level CLIP tokenizer with no merges (every character a token): enough to drive a memory run
    with real token ids (the embedding table keeps SD's 49,408 rows)."""
    from transformers import CLIPTokenizer

    # GPT-2/CLIP's byte → printable-character table (transformers no longer exports bytes_to_unicode)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)  # the n-th byte outside the printable ranges maps to 256 + n
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    # merges that make a few whole words single tokens (the TI methods need a one-token initializer word)
    merges = []
    for word in ("object", "photo"):
        left = word[0]
        for i, c in enumerate(word[1:], 1):
            right = c + "</w>" if i == len(word) - 1 else c
            merges.append(f"{left} {right}")
            left = left + right
            vocab.setdefault(left, len(vocab))
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def build_sd15():
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from finetune.model import T2IModel

    cfg = lambda n: {k: v for k, v in json.loads((SD15 / n).read_text()).items() if not k.startswith("_")}  # noqa: E731
    unet = UNet2DConditionModel(**cfg("unet.json"))
    vae = AutoencoderKL(**cfg("vae.json"))
    te_cfg = cfg("text_encoder.json")
    te_cfg.pop("architectures", None)
    te = CLIPTextModel(CLIPTextConfig(**te_cfg))
    sched = DDPMScheduler.from_config(cfg("scheduler.json"))  # SD ships a PNDM config: extra keys are ignored
    tok = offline_clip_tokenizer(Path(tempfile.mkdtemp(prefix="clip-tok-")))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return T2IModel(pipe)


def uniform_bitplan(kind: str, w_bits: int, path: Path) -> Path:
    """Write a :class:`~finetune.quant.bitplan.BitPlan` with every ``nn.Linear`` / ``nn.Conv2d`` of ``kind``'s
    denoiser at ``w_bits`` weight bits and float activations (allocator "uniform": a plan, not MPQ-Diff's:
    profiling SD 1.5 for one is a GPU job), so a method quantizes through the plan path as from ``mandc quantize``.
    The denoiser is built on the meta device: only its layer names are read."""
    import torch

    from finetune.quant.bitplan import BitPlan

    with torch.device("meta"):
        model = build_model(kind)
    layers = {name: {"w_bits": int(w_bits), "a_bits": None} for name, mod in model.denoiser.named_modules()
              if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))}
    return BitPlan(layers=layers, settings={"allocator": "uniform", "w_bits": int(w_bits)}).save(path)


def bench_data(kind: str, n_train: int):
    from data import SplitDataset, load_dataset

    ds = load_dataset("builtin:shapes_circles")
    n_held = 2 if kind == "sd15" else 8
    return SplitDataset(name=ds.name, train=ds.train.subset(range(n_train)), heldout=ds.heldout.subset(range(n_held)),
                        ref=f"builtin:shapes_circles[:{n_train}]")


# ------------------------------------------------------------------------------------------- workers
def import_model_libraries() -> None:
    """Import what ``build_model`` uses before a worker takes its footprint: libraries are not the model."""
    from diffusers import AutoencoderKL, PixArtTransformer2DModel, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import AutoTokenizer, BertModel, CLIPTextModel  # noqa: F401

    from finetune.pipeline import MandcPixelPipeline  # noqa: F401
    from finetune.quant import quantize_  # noqa: F401


def worker_train(args) -> dict:
    import torch

    from finetune.memory import PeakMemory, current_rss_bytes
    from finetune.runner import run

    torch.manual_seed(0)
    cfg = json.loads(args.config)
    cuda = torch.cuda.is_available()
    footprint = (lambda: torch.cuda.memory_allocated()) if cuda else current_rss_bytes  # noqa: E731
    ds = bench_data(args.model, args.n_train)
    import_model_libraries()

    # run() meters from its own entry, where the full-precision model is already resident, and clamps at
    # that base; a quantizing method frees most of it. So this outer meter, entered before the model is
    # built, is read after every training step (run() resets the peak once the model is prepared, so
    # these readings cover exactly run()'s training window): the peak above the pre-build footprint.
    with PeakMemory("cuda" if cuda else "cpu") as outer:
        pre = footprint()
        model = build_model(args.model)
        model_bytes = footprint() - pre
        readings = []
        with tempfile.TemporaryDirectory() as d:
            res = run(model, ds, args.method, cfg, d, evaluate_loss=not args.no_eval, force=True,
                      progress=lambda done, total: readings.append(outer.sample()))
    return {"peak_mem_bytes": readings[-1], "model_bytes": model_bytes, "run_peak_bytes": res.peak_mem_bytes, "load_peak_bytes": res.load_peak_bytes, "step_s": res.step_s,
            "trainable_params": res.trainable_params, "final_heldout_loss": res.heldout_loss_after,
            "heldout_loss_before": res.heldout_loss_before, "final_train_loss": sum(res.losses[-5:]) / min(5, len(res.losses)),
            "losses": res.losses, "mem_method": res.mem_method, "device": res.device,
            "denoiser_params": model.num_parameters()}


def worker_inference(args) -> dict:
    """Peak of ZOODiP-style forward passes (3 per step, no autograd) on the INT8-quantized model."""
    import torch

    from finetune.memory import PeakMemory
    from finetune.quant import quantize_
    from finetune.methods.base import Method, MethodConfig
    from finetune.methods.zo_ti import ZOTIConfig
    from finetune.runner import encode_train_data

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    import_model_libraries()
    with PeakMemory(dev) as meter:
        model = build_model(args.model)
        for part, cfg in ZOTIConfig().quant_configs().items():  # zo-ti's own quantization
            module = getattr(model, part)
            if module is not None:
                module.requires_grad_(False)
                quantize_(module, cfg)
        model.pipeline.to(dev)
        meter.restart_peak()
        ds = bench_data(args.model, args.n_train)
        data = encode_train_data(model, ds, Method(model, MethodConfig()))  # captions as prompts
        g = torch.Generator().manual_seed(0)
        bs = int(json.loads(args.config).get("batch_size", 1))
        times = []
        with torch.no_grad():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                i = torch.randint(len(data), (bs,), generator=g)  # the training batch size: same activations
                x0 = data.x0[i].to(dev)
                noise = torch.randn(x0.shape, generator=g).to(dev)
                t = torch.randint(500, 900, (bs,), generator=g).to(dev)
                x_t = model.scheduler.add_noise(x0, noise, t)
                for _ in range(3):
                    model.denoise(x_t, t, model.encode_prompt([data.prompts[j] for j in i.tolist()]))
                times.append(time.perf_counter() - t0)
        meter.sample()
    return {"peak_mem_bytes": meter.peak_bytes, "step_s": sum(times[1:]) / max(1, len(times) - 1),
            "mem_method": meter.method}


# -------------------------------------------------------------------------------------------- parent
def spawn(method: str, model: str, config: dict, args, inference: bool = False, pin_malloc: bool = True) -> dict:
    """Run one measurement in a fresh worker. ``pin_malloc`` pins glibc's mmap threshold so RSS tracks live
    tensors (the memory sections); it makes every freed buffer over 64 KiB go back to the OS and every new
    one page-fault in again, which taxes a method by how many temporaries it allocates — the QTA section,
    whose target is step time, runs with the default allocator (``pin_malloc=False``)."""
    cmd = [sys.executable, __file__, "--worker", "inference" if inference else "train", "--method", method,
           "--model", model, "--config", json.dumps(config), "--n-train", str(args.n_train),
           "--steps", str(config.get("steps", args.steps))]
    if args.no_eval or model == "sd15":
        cmd.append("--no-eval")
    env = dict(os.environ, **({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"} if pin_malloc else {}))
    if model == "sd15" and args.mem_limit_gb:
        cmd += ["--mem-limit-gb", str(args.mem_limit_gb)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        reason = " | ".join(tail)
        if p.returncode < 0 or "MemoryError" in reason or "DefaultCPUAllocator" in reason or "out of memory" in reason:
            reason = f"does not fit in {args.mem_limit_gb} GB: {reason}"
        print(f"  {method}: FAILED ({reason[:300]})", file=sys.stderr)
        return {"error": reason, "wall_s": wall}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    print(f"  {method:24s} peak {res['peak_mem_bytes'] / 2**20:9.1f} MiB  step {res['step_s'] * 1e3:8.1f} ms  "
          f"({wall:.0f}s)", file=sys.stderr)
    return res


def table(results: dict) -> str:
    rows = ["| run | peak MiB | step ms | trainable params | final held-out loss |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | — | — | — | {r['error'][:80]} |")
            continue
        loss = r.get("final_heldout_loss")
        rows.append(f"| {name} | {r['peak_mem_bytes'] / 2**20:.1f} | {r['step_s'] * 1e3:.1f} | "
                    f"{r.get('trainable_params', '—')} | {'—' if loss is None else f'{loss:.4f}'} |")
    return "\n".join(rows)


def ratios(out: dict) -> dict:
    m, opt, inf = out["methods"], out["optimizer"], out["inference_peak_mem_bytes"]
    peak = lambda d, k: d.get(k, {}).get("peak_mem_bytes")  # noqa: E731
    div = lambda a, b: (a / b) if a and b else None  # noqa: E731
    r = {"zo-ti / inference": div(peak(m, "zo-ti"), inf), "zo-ti / ti": div(peak(m, "zo-ti"), peak(m, "ti")),
         "full / zo-ti": div(peak(m, "full"), peak(m, "zo-ti")), "peqa / lora": div(peak(m, "peqa"), peak(m, "lora")),
         "tuneqdm / lora": div(peak(m, "tuneqdm"), peak(m, "lora")), "tuneqdm / peqa": div(peak(m, "tuneqdm"), peak(m, "peqa")),
         "optimizer peak: remainder_in_backward / fp32_master":
             div(peak(opt, "remainder_in_backward"), peak(opt, "fp32_master")),
         "optimizer step: remainder_in_backward / fp32_master":
             div(opt.get("remainder_in_backward", {}).get("step_s"), opt.get("fp32_master", {}).get("step_s"))}
    q = out.get("qta", {})
    if "lora" in q and "qta-lora" in q and "error" not in q["lora"] and "error" not in q["qta-lora"]:
        r["qta step: qta-lora / lora"] = div(q["qta-lora"]["step_s"], q["lora"]["step_s"])
        r["qta final train loss: qta-lora / lora"] = div(q["qta-lora"]["final_train_loss"], q["lora"]["final_train_loss"])
    return {k: (round(v, 3) if v is not None else None) for k, v in r.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd15", action="store_true", help="SD 1.5 scale (UNet/CLIP/VAE from the published configs)")
    ap.add_argument("--steps", type=int, default=None, help="steps per method (default 30; 3 with --sd15)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 4; 1 with --sd15")
    ap.add_argument("--qta-steps", type=int, default=30, help="steps of the lora vs qta-lora comparison (default 30)")
    ap.add_argument("--qta-dit", default="1152x2", help="WIDTHxDEPTH of the PixArt of the qta section (default 1152x2: "
                                                        "PixArt-α's width, where GEMMs dominate; 512x6 is ~28M params)")
    ap.add_argument("--methods", nargs="*", default=None, help="subset of methods")
    ap.add_argument("--skip", nargs="*", default=[], help="sections to skip: methods inference optimizer qta")
    ap.add_argument("--no-eval", action="store_true", help="skip held-out losses")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="train every method with the denoiser's activations recomputed in backward")
    ap.add_argument("--mem-limit-gb", type=float, default=22.0, help="data limit for --sd15 workers")
    ap.add_argument("--plan", type=Path, default=None, help="bit plan JSON (mandc quantize's) given as 'plan' to "
                                                            "the methods that take one (peqa, tuneqdm, qta-lora, zo-ti)")
    ap.add_argument("--plan-bits", type=int, default=None, help="write a uniform bit plan (every Linear/Conv2d of the "
                    "denoiser at this many weight bits, float activations) beside --json and use it as --plan")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    # worker mode
    ap.add_argument("--worker", choices=["train", "inference"], help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--n-train", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        if args.mem_limit_gb and args.model == "sd15":
            lim = int(args.mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_DATA, (lim, lim))
        res = worker_train(args) if args.worker == "train" else worker_inference(args)
        print(json.dumps(res))
        return res

    from finetune.methods import METHODS

    kind = "sd15" if args.sd15 else "unet"
    args.steps = args.steps or (3 if args.sd15 else 30)
    bs = args.batch_size or (1 if args.sd15 else 4)
    args.n_train = 2 if args.sd15 else 16
    methods = args.methods or list(METHODS)
    common = {"steps": args.steps, "batch_size": bs, "checkpoint_every": 0, "seed": 0,
              "gradient_checkpointing": args.gradient_checkpointing}
    if args.plan_bits is not None:
        args.plan = uniform_bitplan(kind, args.plan_bits, (args.json or Path("finetune_memory")).with_suffix(
            f".plan-w{args.plan_bits}.json"))
        print(f"uniform W{args.plan_bits} bit plan: {args.plan}", file=sys.stderr)
    with_plan = {name for name in methods if "plan" in METHODS[name].Config.help()} if args.plan else set()
    import torch

    out = {"device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu:{platform.processor() or platform.machine()}:{os.cpu_count()} cores",
           "model": "sd15 (UNet 860M, CLIP-L text, VAE; random weights; 512x512, batch 1)" if args.sd15 else
                    "pixel UNet ~60M + MiniLM text encoder, 32x32, random weights",
           "steps": args.steps, "batch_size": bs, "gradient_checkpointing": args.gradient_checkpointing,
           "plan": str(args.plan) if args.plan else None, "plan_methods": sorted(with_plan),
           "methods": {}, "optimizer": {}, "qta": {},
           "inference_peak_mem_bytes": None}
    t0 = time.perf_counter()
    if "inference" not in args.skip:
        print("inference (INT8, forward passes only):", file=sys.stderr)
        r = spawn("inference", kind, dict(common, steps=max(3, args.steps // 3)), args, inference=True)
        out["inference"] = r
        out["inference_peak_mem_bytes"] = r.get("peak_mem_bytes")
    if "methods" not in args.skip:
        print("methods:", file=sys.stderr)
        for name in methods:
            plan = {"plan": str(args.plan)} if name in with_plan else {}
            out["methods"][name] = spawn(name, kind, dict(common, lr=LR.get(name, 1e-4), **plan), args)
    if "optimizer" not in args.skip:
        print("optimizer (full fine-tuning):", file=sys.stderr)
        for key, opt in [("fp32_master", "fp32-master"), ("remainder", "remainder"),
                         ("remainder_in_backward", "remainder-in-backward")]:
            print(f"  [{opt}]", file=sys.stderr, end="")
            out["optimizer"][key] = spawn("full", kind, dict(common, lr=LR["full"], optimizer=opt), args)
    if "qta" not in args.skip and not args.sd15:
        print("qta (transformer denoiser):", file=sys.stderr)
        out["qta_model"] = f"PixArt width x depth {args.qta_dit}, random weights, 32x32 pixels (256 tokens), batch 8"
        for name in ("lora", "qta-lora"):
            cfg = dict(common, steps=args.qta_steps, batch_size=8, lr=LR[name], target_modules=DIT_TARGETS)
            out["qta"][name] = spawn(name, f"dit-{args.qta_dit}", cfg, args, pin_malloc=False)
    out["ratios"] = ratios(out)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"\n## {out['model']} — {out['device']}\n")
    print(table({**({"inference (INT8)": out["inference"]} if "inference" in out else {}), **out["methods"]}))
    if out["optimizer"]:
        print("\n### optimizer (full fine-tuning)\n")
        print(table(out["optimizer"]))
    if out["qta"]:
        print("\n### lora vs qta-lora on a transformer denoiser\n")
        print(table(out["qta"]))
    print("\nratios: " + json.dumps(out["ratios"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
