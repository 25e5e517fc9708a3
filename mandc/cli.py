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
    console.print(f"[bold red]error:[/] {msg}", highlight=False)
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


def main() -> None:  # console-script entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    sys.exit(main())
