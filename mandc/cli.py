"""The ``mandc`` command line.

Every command has ``--help``; list commands take ``--json`` (a JSON array of objects with ``name``).
Heavy imports (torch, diffusers) happen inside the commands so ``--help`` stays fast.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="mandc: pick, quantize and fine-tune text-to-image diffusion models on your own images.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Datasets: the built-in offline catalog and imagefolder export.", no_args_is_help=True)
zoo_app = typer.Typer(help="The reference model zoo: small T2I models pretrained here, offline.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(zoo_app, name="zoo")

console = Console(stderr=True)
out = Console()


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


# ----------------------------------------------------------------------------------------------- data
@data_app.command("list")
def data_list(
    family: Optional[str] = typer.Option(None, help="Only datasets of this family."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array instead of a table."),
) -> None:
    """List the built-in datasets (address them as builtin:NAME)."""
    from data.catalog import families, list_catalog

    if family is not None and family not in families():
        _fail(f"unknown family {family!r}; families: {', '.join(families())}")
    entries = list_catalog(family)
    if as_json:
        rows = [{"name": e.name, "ref": f"builtin:{e.name}", "family": e.family, "description": e.description,
                 "n_train": e.n_train, "n_heldout": e.n_heldout, "resolution": list(e.resolution)} for e in entries]
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"{len(entries)} built-in datasets")
    for c in ("name", "family", "train", "held-out", "res"):
        t.add_column(c, no_wrap=True)
    t.add_column("description")
    for e in entries:
        t.add_row(e.name, e.family, str(e.n_train), str(e.n_heldout), f"{e.resolution[0]}×{e.resolution[1]}", e.description)
    out.print(t)


@data_app.command("export")
def data_export(
    name: str = typer.Argument(..., help="Catalog name (with or without the builtin: prefix)."),
    out_dir: Path = typer.Argument(..., help="Folder to create (imagefolder layout: train/ and test/ with metadata.jsonl)."),
    seed: int = typer.Option(0, help="0 is the canonical dataset; other seeds draw fresh samples."),
) -> None:
    """Write a built-in dataset as a Hugging Face imagefolder."""
    from data import DatasetError, load_dataset, write_imagefolder

    ref = name if name.startswith("builtin:") else f"builtin:{name}"
    try:
        ds = load_dataset(ref, seed=seed)
        path = write_imagefolder(ds, out_dir)
    except DatasetError as e:
        _fail(str(e))
    out.print(f"wrote {len(ds.train)} train + {len(ds.heldout)} held-out pairs to {path}")


# ------------------------------------------------------------------------------------------------ zoo
@zoo_app.command("list")
def zoo_list(as_json: bool = typer.Option(False, "--json", help="Print a JSON array instead of a table.")) -> None:
    """List the reference zoo models (address them as zoo:NAME)."""
    from finetune import zoo

    rows = []
    for s in zoo.list_zoo():
        rows.append({"name": s.name, "ref": f"zoo:{s.name}", "kind": s.family, "description": s.description,
                     "mixture": dict(s.mixture), "steps": s.steps, "built": zoo.is_built(s.name),
                     "path": str(zoo.zoo_path(s.name))})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"{len(rows)} zoo models (cache: {zoo.zoo_home()})")
    for c in ("name", "kind"):
        t.add_column(c, no_wrap=True)
    for c in ("pretraining mixture", "steps", "built", "description"):
        t.add_column(c)
    for r in rows:
        mix = ", ".join(f"{k} {v:g}" for k, v in r["mixture"].items())
        t.add_row(r["name"], r["kind"], mix, str(r["steps"]), "yes" if r["built"] else "no", r["description"])
    out.print(t)


@zoo_app.command("build")
def zoo_build(
    names: Optional[list[str]] = typer.Argument(None, help="Models to build (default: all)."),
    force: bool = typer.Option(False, help="Rebuild models that are already cached."),
    steps: Optional[int] = typer.Option(None, help="Override pretraining steps (for quick trials; the card records it)."),
) -> None:
    """Pretrain zoo models deterministically and cache them under $MANDC_HOME/zoo."""
    import time

    from finetune import zoo

    known = [s.name for s in zoo.list_zoo()]
    names = names or known
    bad = [n for n in names if n.removeprefix("zoo:") not in known]
    if bad:
        _fail(f"unknown zoo model(s) {', '.join(bad)}; known: {', '.join(known)}")
    t0 = time.perf_counter()
    with _progress() as prog:
        for n in names:
            n = n.removeprefix("zoo:")
            if zoo.is_built(n) and not force:
                console.print(f"{n}: cached at {zoo.zoo_path(n)}")
                continue
            task = prog.add_task(f"pretrain {n}", total=None)
            t1 = time.perf_counter()
            path = zoo.build(n, force=force, steps=steps,
                             progress=lambda done, total, task=task: prog.update(task, completed=done, total=total))
            console.print(f"{n}: built in {time.perf_counter() - t1:.0f}s → {path}")
    console.print(f"done in {time.perf_counter() - t0:.0f}s")


# ------------------------------------------------------------------------------------------- finetune
def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            _fail(f"--set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v  # a bare string
    return out


@app.command("methods")
def methods_list(as_json: bool = typer.Option(False, "--json", help="Print a JSON array instead of tables.")) -> None:
    """List the fine-tuning methods and their options (defaults from each paper's recipe)."""
    from finetune.methods import METHODS

    rows = [{"name": n, "summary": (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0],
             "options": {k: {"default": d, "help": h} for k, (d, h) in cls.Config.help().items()}}
            for n, cls in METHODS.items()]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        t = Table(title=f"{r['name']}: {r['summary']}", title_justify="left")
        t.add_column("option", no_wrap=True)
        t.add_column("default")
        t.add_column("help")
        for k, o in r["options"].items():
            t.add_row(k, str(o["default"]), o["help"])
        out.print(t)


@app.command("finetune")
def finetune_cmd(
    model: str = typer.Option(..., "--model", help="Model reference: folder, zoo:NAME or Hub id."),
    data: str = typer.Option(..., "--data", help="Dataset reference: builtin:NAME or an imagefolder path."),
    method: str = typer.Option(..., "--method", help="Fine-tuning method (see `mandc methods`)."),
    out_dir: Path = typer.Option(..., "--out", help="Output folder: artefacts, result.json, checkpoints."),
    bits: Optional[int] = typer.Option(None, help="Weight bits 2–8 (peqa, tuneqdm; zo-ti's quantization)."),
    plan: Optional[Path] = typer.Option(None, help="Per-layer bit plan JSON (peqa, tuneqdm), e.g. from `mandc quantize`."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (default: the method's recipe)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any method option as KEY=VALUE (repeatable)."),
    resume: bool = typer.Option(True, help="Continue from out/checkpoint.pt when the inputs match."),
    force: bool = typer.Option(False, help="Retrain even if out/result.json exists for the same inputs."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fine-tune a model on a dataset with one method; writes artefacts and result.json to --out."""
    from data import DatasetError
    from finetune.methods import get_method
    from finetune.refs import ModelRefError
    from finetune.runner import run

    try:
        cls = get_method(method)
    except ValueError as e:
        _fail(str(e))
    overrides = _parse_sets(set_)
    if steps is not None:
        overrides["steps"] = steps
    fields = cls.Config.help()
    if bits is not None:
        key = "bits" if "bits" in fields else "quant_bits" if "quant_bits" in fields else None
        if key is None:
            _fail(f"--bits does not apply to method {method!r} (it applies to peqa, tuneqdm and zo-ti)")
        overrides[key] = bits
    if plan is not None:
        if "plan" not in fields:
            _fail(f"--plan does not apply to method {method!r} (it applies to peqa and tuneqdm)")
        if not plan.is_file():
            _fail(f"plan file {plan} does not exist")
        overrides["plan"] = str(plan)
    total = overrides.get("steps", fields["steps"][0])
    try:
        with _progress() as prog:
            task = prog.add_task(f"{method} on {data}", total=total)
            res = run(model, data, method, overrides, out_dir, resume=resume, force=force,
                      progress=lambda d, n: prog.update(task, completed=d, total=n))
    except (ValueError, DatasetError, ModelRefError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(res.to_dict(), indent=2))
        return
    t = Table(title=f"{method}: {model} on {data}", title_justify="left")
    t.add_column("metric", no_wrap=True)
    t.add_column("value")
    fmt = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
    for k, v in [("steps", str(res.steps)), ("trainable parameters", f"{res.trainable_params:,}"),
                 ("held-out loss before", fmt(res.heldout_loss_before)), ("held-out loss after", fmt(res.heldout_loss_after)),
                 ("peak memory", f"{res.peak_mem_bytes / 2**20:.1f} MiB ({res.mem_method})"),
                 ("step time", f"{res.step_s * 1000:.1f} ms"), ("wall time", f"{res.wall_s:.1f} s")]:
        t.add_row(k, v)
    for k, v in res.artefacts.items():
        t.add_row(f"artefact: {k}", v)
    out.print(t)


def main() -> None:  # console-script entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    sys.exit(main())
