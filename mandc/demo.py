"""``make demo``: the main job on the embedded defaults.

Builds (or reuses) the smallest reference-zoo model, fine-tunes it briefly on a built-in dataset, and
writes a PNG with samples before (top rows) and after (bottom rows) fine-tuning for the dataset's
held-out captions. Prints where the PNG is and the held-out denoising loss before and after. Ends with
``mandc recommend`` on a built-in dataset the reference never profiled: the leaderboard of zoo models.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (created)")
    ap.add_argument("--model", default=None, help="zoo model name (default: the smallest in the zoo)")
    ap.add_argument("--data", default="builtin:shapes_circles", help="dataset reference to fine-tune on")
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    ap.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (AdamW)")
    ap.add_argument("--recommend", default="builtin:shapes_small_mixed",
                    help="dataset to rank the zoo models for at the end (one the reference never profiled)")
    args = ap.parse_args(argv)

    import torch

    from data import load_dataset
    from finetune import zoo
    from finetune.images import save_grid
    from finetune.metrics import heldout_loss
    from finetune.load import load_model
    from finetune.train import EncodedData, TrainConfig, train_denoiser

    torch.manual_seed(0)
    t0 = time.perf_counter()
    name = args.model or min(zoo.list_zoo(), key=zoo.spec_parameters).name
    if not zoo.is_built(name):
        with _bar() as bar:
            task = bar.add_task(f"pretrain zoo:{name}", total=None)
            zoo.build(name, progress=lambda d, n: bar.update(task, completed=d, total=n))
    model = load_model(f"zoo:{name}")
    ds = load_dataset(args.data)
    console.print(f"model zoo:{name} ({model.num_parameters():,} denoiser params), data {args.data} "
                  f"({len(ds.train)} train / {len(ds.heldout)} held-out)")

    prompts = list(ds.heldout.captions[:8])
    before_loss = heldout_loss(model, ds.heldout).mean
    before = model.sample(prompts, steps=25, seed=0, guidance_scale=2.0)

    data = EncodedData.encode(model, ds.train.to_tensor(model.resolution), list(ds.train.captions))
    with _bar() as bar:
        task = bar.add_task("fine-tune (full)", total=args.steps)
        train_denoiser(model, data, TrainConfig(steps=args.steps, batch_size=16, lr=args.lr, warmup_steps=10, seed=0),
                       progress=lambda d, n: bar.update(task, completed=d))
    after_loss = heldout_loss(model, ds.heldout).mean
    after = model.sample(prompts, steps=25, seed=0, guidance_scale=2.0)

    args.out.mkdir(parents=True, exist_ok=True)
    png = save_grid(before + after, args.out / "samples.png", nrow=len(prompts))
    summary = {"model": f"zoo:{name}", "data": args.data, "steps": args.steps,
               "heldout_loss_before": before_loss, "heldout_loss_after": after_loss,
               "png": str(Path(png).resolve()), "seconds": round(time.perf_counter() - t0, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"held-out denoising loss {before_loss:.4f} → {after_loss:.4f}")
    console.print(f"samples (top: before, bottom: after fine-tuning): [bold]{summary['png']}[/]")

    # Which model should one fine-tune on a dataset the reference never profiled? The M&C planner
    # answers from the shipped matching graph (seeded into $MANDC_HOME/graph.sqlite on first use).
    from mandc.planner import Planner, recommendation_table

    t1 = time.perf_counter()
    rec = Planner().recommend(args.recommend, top_k=5)
    console.print(recommendation_table(rec))
    for note in rec.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"recommendation in {time.perf_counter() - t1:.1f}s (selector {'from cache' if rec.cached else 'fitted'})")
    summary["recommend"] = {"dataset": rec.dataset, "leaderboard": rec.leaderboard().to_dict(orient="records")}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
