"""Why ZOODiP's subspace projection costs quality on the zoo: how much of the true gradient it projects out.

    python benchmarks/zo_subspace.py [--model zoo:unet-xs-gradients] [--steps 384] [--seeds 3] [--set nu=1e-5]
                                     [--json FILE]

Runs ``zo-ti`` with the paper's subspace gradient on (``subspace=True``, otherwise its defaults; subject,
prompt and initializer as ``benchmarks/zo_ablation.py``) and, at every subspace refresh (every ``tau`` steps), compares the projector's directions with the backprop gradient
``g = ∇_θ L`` of the denoising loss at the current token embedding θ ``[d]``: the subject's training images,
each at ``--probe-timesteps`` timesteps evenly spread over the run's window, one fixed noise draw (the quantized
model, as the run sees it). With ``P`` ``[k, d]`` the projected-out directions and ``K`` ``[i*+1, d]`` the kept
principal directions (both orthonormal rows of the same PCA), it reports

    projected_share = k / d                      what a direction independent of P would lose
    true_in_projected = ‖P g‖² / ‖g‖²            what the projection removes of the true gradient
    true_in_kept = ‖K g‖² / ‖g‖²,   true_outside = 1 − both   (outside the τ-sample history's span)

Why these numbers decide it: a ZO estimate ``ĝ`` has mean ``g`` and a noise that is isotropic and far larger
than ``g`` (``E‖ĝ‖² ≈ (d+1)/n·‖g‖²``), so the projection ``Q = I − PᵀP`` keeps ``1 − true_in_projected`` of the
signal and ``1 − projected_share`` of the noise. In that noise-dominated regime a step's expected descent
at its best step size is ∝ ``‖Qg‖⁴ / E‖Qĝ‖²``, so the projection changes the progress per step by

    progress_ratio = (1 − true_in_projected)² / (1 − projected_share)

and helps only when ``true_in_projected < break_even = 1 − √(1 − projected_share)`` (about half the share):
it must remove clearly less of the true gradient than of a random direction. Prints one JSON object;
``--json`` also writes it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def true_gradient(method, data, timesteps: list[int], seed: int = 0):
    """``∇_θ`` of the mean denoising loss over every training image × ``timesteps``, one noise draw ``[d]``."""
    import torch

    model = method.model
    table = model.text_encoder.get_input_embeddings().weight
    n = len(data)
    g = torch.Generator("cpu").manual_seed(seed)
    x0 = data.x0.to(model.device, model.dtype)
    ids = model.tokenize(list(data.prompts))
    grad = torch.zeros(table.shape[1], dtype=torch.float64)
    saved = table.requires_grad
    try:
        table.requires_grad_(True)
        for t in timesteps:
            tt = torch.full((n,), int(t), dtype=torch.long)
            noise = torch.randn(x0.shape, generator=g).to(x0)
            with torch.enable_grad():
                cond = model.encode_tokens(**ids)
                pred = model.denoise(model.scheduler.add_noise(x0, noise, tt), tt, cond)
                loss = torch.nn.functional.mse_loss(pred.float(), model.target(x0, noise, tt).float())
                (gt,) = torch.autograd.grad(loss, table)
            grad += gt[method.token_id].double()
    finally:
        table.requires_grad_(saved)
    return grad / len(timesteps)


def one_run(model_ref: str, subject, seed: int, steps: int, probe_timesteps: int, options: dict | None = None) -> dict:
    import numpy as np

    from finetune.load import load_model
    from finetune.methods.zo_ti import ZeroOrderTI
    from finetune.runner import run

    sys.path.insert(0, str(Path(__file__).parent))
    from zo_ablation import PROMPT

    rows: list[dict] = []
    orig = ZeroOrderTI.step

    def step(self, data, g):
        loss = orig(self, data, g)
        p = self.projector
        if p is not None and p.P is not None and self.t % self.config.tau == 0:  # just refreshed
            lo, hi = self.window
            ts = np.linspace(lo, hi - 1, probe_timesteps).round().astype(int).tolist()
            grad = true_gradient(self, data, ts).float()
            P = p.P
            Vh, i_star = p.components()                 # the same PCA the refresh just made
            keep = Vh[: i_star + 1].float()
            gg = float(grad @ grad)
            rows.append({"step": self.t, "d": int(grad.numel()), "projected": int(P.shape[0]),
                         "kept": int(keep.shape[0]), "projected_share": P.shape[0] / grad.numel(),
                         "true_in_projected": float((P @ grad).pow(2).sum()) / gg,
                         "true_in_kept": float((keep @ grad).pow(2).sum()) / gg,
                         "true_grad_norm": gg ** 0.5})
            r = rows[-1]
            r["true_outside"] = 1 - r["true_in_projected"] - r["true_in_kept"]
            r["break_even"] = 1 - (1 - r["projected_share"]) ** 0.5
            r["progress_ratio"] = (1 - r["true_in_projected"]) ** 2 / (1 - r["projected_share"])
        return loss

    ZeroOrderTI.step = step
    try:
        with tempfile.TemporaryDirectory() as d:
            res = run(load_model(model_ref), subject, "zo-ti",
                      {"steps": steps, "checkpoint_every": 0, "template": PROMPT, "initializer": "object", "subspace": True,
                       **(options or {}), "seed": seed}, d, force=True, evaluate_loss=False)
    finally:
        ZeroOrderTI.step = orig
    return {"seed": seed, "refreshes": rows, "train_s": round(res.train_s, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:unet-xs-gradients")
    ap.add_argument("--subject", default="builtin:photos_cat")
    ap.add_argument("--subject-images", type=int, default=5)
    ap.add_argument("--steps", type=int, default=384)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--probe-timesteps", type=int, default=8, help="timesteps of the true gradient, over the window")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="zo-ti option (e.g. nu=1e-5)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from finetune_quality import subject_dataset
    from zo_ablation import parse_set, write_json

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    subject = subject_dataset(args.subject, args.subject_images)
    runs = []
    for s in range(args.seeds):
        runs.append(one_run(args.model, subject, s, args.steps, args.probe_timesteps, parse_set(args.set)))
        print(f"  seed {s}: " + ", ".join(f"step {r['step']}: {r['true_in_projected']:.3f} of g in P "
                                          f"(share {r['projected_share']:.3f})" for r in runs[-1]["refreshes"]),
              file=sys.stderr, flush=True)
    flat = [r for run_ in runs for r in run_["refreshes"]]
    summary = {k: float(np.mean([r[k] for r in flat])) for k in
               ("projected_share", "true_in_projected", "true_in_kept", "true_outside", "break_even",
                                                 "progress_ratio")} if flat else {}
    out = {"model": args.model, "subject": subject.ref, "steps": args.steps, "seeds": args.seeds, "set": args.set,
           "probe_timesteps": args.probe_timesteps, "mean": summary, "runs": runs,
           "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=2))
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
