"""The ``mandc`` command line.

Every command has ``--help``; list commands take ``--json`` (a JSON array of objects with ``name``).
Heavy imports (torch, diffusers) happen inside the commands so ``--help`` stays fast.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
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
from mandc.hub.cli import hub_app  # noqa: E402 — the sub-app lives with the crawler

app.add_typer(hub_app, name="hub")

console = Console(stderr=True)
out = Console()
# the CLI's warnings (a one-image dataset, a checkpoint set aside) are one line, not file:line + source
warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


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
def _parse_sets(config_cls, items: list[str] | None, flags: dict | None = None) -> dict:
    """``--set KEY=VALUE`` items and dedicated flags as typed overrides of ``config_cls`` (one error line
    naming the field, its type and help; a key given twice must agree)."""
    try:
        return config_cls.parse_overrides(items, flags)
    except ValueError as e:
        _fail(str(e))


def _parse_plan_sets(items: list[str] | None) -> dict:
    """``mandc plan --set KEY=VALUE``: typed by the first method config that has the option (the plan gives it
    to every method that has it); an option no method has is refused, as is one given twice differently."""
    from finetune.methods import METHODS

    out: dict = {}
    for item in items or []:
        key = item.split("=", 1)[0].strip().replace("-", "_")
        cls = next((c.Config for c in METHODS.values() if key in c.Config.help()), None)
        if cls is None:
            _fail(f"no fine-tuning method has the option {key!r} (see `mandc methods`)")
        value = _parse_sets(cls, [item])[key]
        if key in out and out[key] != value:
            _fail(f"option {key} given twice with different values; give it once")
        out[key] = value
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
    plan: Optional[Path] = typer.Option(None, help="Bit plan JSON from `mandc quantize` (peqa, tuneqdm, qta-lora, zo-ti): train the model it scored."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (default: the method's recipe)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any method option as KEY=VALUE (repeatable)."),
    resume: bool = typer.Option(True, help="Continue from out/checkpoint.pt when the inputs match."),
    force: bool = typer.Option(False, help="Retrain even if out/result.json exists for the same inputs."),
    feedback: bool = typer.Option(False, "--feedback", help="Add the result to the matching graph as a measured "
                                  "record (the next `mandc recommend`/`mandc plan` uses it)."),
    graph: Optional[Path] = typer.Option(None, "--graph", help="Matching-graph store for --feedback (default: "
                                         "$MANDC_HOME/graph.sqlite)."),
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
    fields = cls.Config.help()
    bits_key = "bits" if "bits" in fields else "quant_bits" if "quant_bits" in fields else None
    if bits is not None and bits_key is None:
        _fail(f"--bits does not apply to method {method!r} (it applies to peqa, tuneqdm and zo-ti)")
    overrides = _parse_sets(cls.Config, set_, {"steps": steps, **({bits_key: bits} if bits_key else {})})
    if plan is not None:
        if "plan" not in fields:
            _fail(f"--plan does not apply to method {method!r} (it applies to the quantized methods peqa, tuneqdm, qta-lora and zo-ti)")
        if not plan.is_file():
            _fail(f"plan file {plan} does not exist")
        if overrides.get("plan", str(plan)) != str(plan):
            _fail(f"option plan given twice with different values (--set plan={overrides['plan']}, --plan {plan}); "
                  f"give it once")
        overrides["plan"] = str(plan)
    total = overrides.get("steps", fields["steps"][0])
    out_existed = out_dir.exists()
    done = [0]
    try:
        with _progress() as prog:
            task = prog.add_task(f"{method} on {data}", total=total)
            res = run(model, data, method, overrides, out_dir, resume=resume, force=force,
                      progress=lambda d, n: (done.__setitem__(0, d), prog.update(task, completed=d, total=n)),
                      progress_text=lambda line: prog.console.print(line, markup=False, highlight=False))
    except KeyboardInterrupt:
        every = overrides.get("checkpoint_every", fields["checkpoint_every"][0])
        saved = done[0] // every * every if every else 0
        _fail(f"interrupted at step {done[0]}; rerun the same command to resume from step {saved}"
              + ("" if saved else " (no checkpoint yet)"), code=130)
    except (ValueError, DatasetError, ModelRefError, FileNotFoundError) as e:
        if not out_existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # the failed run created it and wrote nothing; a folder that was there stays
        _fail(str(e))
    if feedback:
        _feedback_result(res, model, data, method, overrides, graph)
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


def _feedback_result(res, model: str, data: str, method: str, overrides: dict, graph: Optional[Path]) -> None:
    """``mandc finetune --feedback``: the result as a ProfileRecord, through the planner's one feedback path."""
    from mandc.planner import Planner
    from mandc.store import StoreError
    from profiler.jobs import ProfileJob, record_from_result

    try:
        job = ProfileJob(model, data, method, dict(overrides), int(res.config.get("seed", 0)))
        rec = record_from_result(job, res).to_dict()
        Planner(graph).feedback(rec)
    except (StoreError, ValueError, FloatingPointError) as e:
        _fail(f"fine-tuning finished (result in {res.artefacts or 'the --out folder'}), but its record could not be "
              f"added to the graph: {e}")
    console.print(f"feedback: record {rec['job_id']} added to the matching graph ({graph or 'default store'})",
                  highlight=False)


# ------------------------------------------------------------------------------------------- quantize
@app.command("quantize")
def quantize_cmd(
    model: str = typer.Option(..., "--model", help="Model reference: folder, zoo:NAME or Hub id."),
    data: str = typer.Option(..., "--data", help="Calibration dataset: builtin:NAME or an imagefolder path."),
    out_path: Path = typer.Option(..., "--out", help="Bit plan JSON to write; the plot (.png) and the quantized "
                                                      "layers (.safetensors) go beside it."),
    budget_mb: Optional[float] = typer.Option(None, "--budget-mb", help="Weight-memory budget in MB (10^6 bytes) "
                                              "of the quantized layers as stored (codes + per-channel scales)."),
    avg_bits: Optional[float] = typer.Option(None, "--avg-bits", help="Budget as average weight bits (densely "
                                             "packed size), e.g. 4."),
    timesteps: Optional[int] = typer.Option(None, "--timesteps", help="K timesteps sampled uniformly for the "
                                            "profile (default: the allocator's, mpq 10, the others 3)."),
    allocator: Optional[str] = typer.Option(None, "--allocator", help="Bit allocator: grad-sensitivity (per-layer "
                                            "quantization error from gradient probes; the default), "
                                            "combined (orthogonality x that error), validated (the better of those two "
                                            "on validation images), mpq (MPQ-Diff as published) or "
                                            "sensitivity (the error measured layer by layer, slow)."),
    n_calib: int = typer.Option(32, "--n-calib", help="Calibration images N."),
    validate: bool = typer.Option(False, help="Pick β and α by validation loss on other training images (slower)."),
    seed: int = typer.Option(0, help="Calibration images and noise."),
    save_weights: bool = typer.Option(True, help="Also write the quantized layers (.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Profile layer orthogonality (MPQ-Diff) and allocate per-layer weight/activation bits under a budget."""
    from data import DatasetError
    from finetune.refs import ModelRefError
    from profiler.mpq.run import run_quantize

    if (budget_mb is None) == (avg_bits is None):
        _fail("give exactly one budget: --budget-mb X or --avg-bits B")
    stages = {"load": "load model and data", "profile": f"profile {timesteps or 'sampled'} timesteps",
              "sensitivity": "per-layer sensitivity", "validate": "validate β, α or candidates", "quantize": "quantize and save"}
    try:
        with _progress() as prog:
            tasks: dict = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = prog.add_task(stages.get(stage, stage), total=total)
                prog.update(tasks[stage], completed=done, total=total)

            res = run_quantize(model, data, out_path, budget_mb=budget_mb, avg_bits=avg_bits, timesteps=timesteps,
                               n_calib=n_calib, validate=validate, seed=seed, save_weights=save_weights,
                               progress=progress, allocator=allocator)
    except (ValueError, DatasetError, ModelRefError, FileNotFoundError, IsADirectoryError) as e:
        _fail(str(e))  # InfeasibleBudgetError (a ValueError) states the smallest feasible budget
    if as_json:
        print(json.dumps(res.to_dict(), indent=2))
        return
    for line in res.lines():
        out.print(line, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------ recommend
@app.command("recommend")
def recommend_cmd(
    dataset: str = typer.Argument(..., help="Dataset reference: builtin:NAME or an imagefolder path."),
    graph: Optional[Path] = typer.Option(None, "--graph", help="Matching-graph store: an SQLite file or a JSON "
                                         "export (default: $MANDC_HOME/graph.sqlite, seeded from the shipped reference)."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="How many models to show."),
    probe: bool = typer.Option(False, "--probe", help="Also score each locally available model's zero-shot loss on "
                               "the dataset (forward passes only) and predict with it."),
    probe_budget: Optional[int] = typer.Option(None, "--probe-budget", min=1, metavar="STEPS",
                                               help="Spend up to STEPS fine-tuning steps (all probe runs together) on "
                                               "the graph's top models by successive halving, and re-rank them by "
                                               "held-out loss; the runs are kept in the store as probe records."),
    probe_top: int = typer.Option(4, "--probe-top", min=2, help="How many of the top models the budgeted "
                                     "probe short-lists."),
    device: Optional[str] = typer.Option(None, "--device", help="Where probe runs train (default: CUDA if available)."),
    as_json: bool = typer.Option(False, "--json", help="Print the Recommendation as JSON (every candidate)."),
) -> None:
    """Rank the candidate models for a dataset with the M&C matching graph (higher score is better)."""
    from mandc.planner import Planner, recommendation_table
    from mandc.store import StoreError

    try:
        with console.status(f"ranking models for {dataset}") as status:
            def log(line: str) -> None:  # one line per probe job, above the spinner
                console.print(line, highlight=False, soft_wrap=True)
                status.update(line)

            rec = Planner(graph).recommend(dataset, top_k=top_k, probe=probe, probe_budget=probe_budget,
                                           probe_top=probe_top, device=device, log=log)
    except (StoreError, ValueError, KeyError) as e:  # data.DatasetError is a ValueError (importing data costs torch)
        _fail(str(e))
    if as_json:
        print(json.dumps(rec.to_json(), indent=2))
        return
    out.print(recommendation_table(rec))
    for note in rec.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------- evaluate
@app.command("evaluate")
def evaluate_cmd(
    seeds: int = typer.Option(5, "--seeds", min=1, help="Selector seeds (GNN init, LightGBM bagging); metrics are averaged."),
    graph: Optional[Path] = typer.Option(None, "--graph", help="MatchingGraph JSON, store export or SQLite store "
                                         "(default: the shipped reference)."),
    selectors: Optional[str] = typer.Option(None, "--selectors", help="Comma-separated subset (default: M&C, every "
                                            "baseline and ablation)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Parallel processes (default: one per core)."),
    as_json: bool = typer.Option(False, "--json", help="Print the benchmark JSON instead of the table."),
    protocol: str = typer.Option("lodo", "--protocol", help="lodo: each profiled dataset held out in turn; lofo: "
                                 "all datasets of one catalog family at once (a domain nobody profiled)."),
) -> None:
    """Leave-one-dataset-out (or leave-one-family-out) evaluation of M&C against baselines and ablations
    (top-1, top-3, rel@1, regret, τ)."""
    from mandc.evaluate import PROTOCOLS, SELECTOR_NAMES, evaluate, load_graph

    names = tuple(s.strip() for s in selectors.split(",")) if selectors else SELECTOR_NAMES
    bad = [n for n in names if n not in SELECTOR_NAMES]
    if bad:
        _fail(f"unknown selector(s) {', '.join(bad)}; known: {', '.join(SELECTOR_NAMES)}")
    if protocol not in PROTOCOLS:
        _fail(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    try:
        g = load_graph(str(graph) if graph is not None else None)
        with _progress() as prog:
            task = prog.add_task(f"{protocol}, {len(g.profiled)} datasets × {seeds} seeds", total=None)
            res = evaluate(g, seeds=seeds, selectors=names, workers=workers, protocol=protocol,
                           progress=lambda d, n: prog.update(task, completed=d, total=n))
    except (ValueError, FileNotFoundError, KeyError) as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(res.to_json(), indent=2))
        return
    out.print(res.to_markdown(), highlight=False, soft_wrap=True)


# -------------------------------------------------------------------------------------------- profile
def _suggest_pairs(n: int, models: str | None, datasets: str | None, as_json: bool,
                   show: bool = True) -> list[tuple[str, str, str]]:
    """``mandc profile --suggest N``: the pairs :func:`mandc.active.suggest` proposes from the graph store,
    printed when ``show`` (a table, or JSON)."""
    from mandc.active import suggest
    from mandc.store import Store, StoreError
    from profiler.profile_cmd import parse_list

    try:
        with console.status(f"choosing {n} pairs to profile (fitting the selector ensemble)"):
            g = Store().graph()
            cands = None
            if models or datasets:
                ms = parse_list(models, "--models") if models else g.models
                ds = parse_list(datasets, "--datasets") if datasets else g.datasets
                cands = [(m, d) for m in ms for d in ds]
            pairs = suggest(g, n, candidates=cands)
    except (StoreError, ValueError, KeyError) as e:
        _fail(str(e).strip("'\""))
    if not show:
        return pairs
    if as_json:
        print(json.dumps([{"model": m, "dataset": d, "reason": why} for m, d, why in pairs], indent=2))
    else:
        t = Table(title=f"{len(pairs)} pairs to profile next (best first)", title_justify="left")
        for c in ("model", "dataset", "why"):
            t.add_column(c)
        for row in pairs:
            t.add_row(*row)
        out.print(t)
    return pairs


@app.command("profile")
def profile_cmd(
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated model refs, e.g. zoo:unet-s-broad,zoo:dit-m-simple."),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="Comma-separated dataset refs, e.g. builtin:shapes_circles."),
    method: str = typer.Option("full", "--method", help="Fine-tuning method (default full: the reference budget)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Fine-tuning steps per job (default: the reference budget's)."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated fine-tuning seeds, e.g. 0,1."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes (default: one per CPU)."),
    executor: str = typer.Option("local", "--executor", help="local (process pool) or ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray only: the cluster to join (HOST:6379 or auto; "
                                          "default: start a local Ray instance)."),
    gpus_per_job: Optional[float] = typer.Option(None, "--gpus-per-job", help="Ray only: GPUs each job reserves "
                                                 "(default: 1 when the cluster has GPUs, else 0)."),
    campaign_dir: Optional[Path] = typer.Option(None, "--campaign-dir", help="Where records go, one file per job "
                                                "(default $MANDC_HOME/profiling); finished jobs are skipped."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-run jobs whose record says failed."),
    suggest_n: Optional[int] = typer.Option(None, "--suggest", min=1, help="Propose the N (model, dataset) pairs of "
                                            "the graph store whose measurement should improve selection most "
                                            "(--models/--datasets restrict them); --run profiles them."),
    run_suggested: bool = typer.Option(False, "--run", help="With --suggest: profile the suggested pairs."),
    graph: Optional[Path] = typer.Option(None, "--graph", help="Matching-graph store the records go into (default: "
                                         "$MANDC_HOME/graph.sqlite); unknown models and datasets are added first."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary and records as JSON."),
) -> None:
    """Profile models on datasets: fine-tune each pair with a fixed budget, record held-out losses (resumable)."""
    from profiler.executors import EXECUTORS
    from profiler.profile_cmd import build_jobs, parse_list, parse_seeds, run_profile

    if executor not in EXECUTORS:
        _fail(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if run_suggested and suggest_n is None:
        _fail("--run goes with --suggest N")
    if suggest_n is None and (not models or not datasets):
        _fail("give --models and --datasets (or --suggest N)")
    pairs = None
    if suggest_n is not None:
        pairs = _suggest_pairs(suggest_n, models, datasets, as_json, show=not (as_json and run_suggested))
        if not run_suggested:
            return
    try:
        if pairs is not None:
            jobs = [j for m, d, _ in pairs for j in build_jobs([m], [d], method, steps, parse_seeds(seeds))]
        else:
            jobs = build_jobs(parse_list(models, "--models"), parse_list(datasets, "--datasets"), method, steps,
                              parse_seeds(seeds))
        summary, records = run_profile(jobs, campaign_dir, executor, workers, progress=not as_json,
                                       retry_failed=retry_failed, address=address, gpus_per_job=gpus_per_job)
    except KeyboardInterrupt:
        from profiler.campaign import Campaign
        from profiler.profile_cmd import default_campaign_dir

        jobs = locals().get("jobs") or []
        camp = Campaign(campaign_dir or default_campaign_dir())
        n = sum(camp.read_record(j.job_id) is not None for j in jobs)
        _fail(f"interrupted with {n} of {len(jobs)} jobs recorded in {camp.dir}; rerun the same command to run "
              f"only the other {len(jobs) - n}", code=130)
    except (ValueError, ImportError) as e:
        _fail(str(e))
    from mandc.planner import Planner
    from mandc.store import StoreError

    try:  # the one feedback path: unknown dataset and model nodes first, then the records (failed ones as history)
        Planner(graph).feedback(records)
    except (StoreError, ValueError) as e:
        _fail(f"the campaign's records are in {summary['campaign_dir']}, but could not be added to the graph: {e}")
    failed = sum(r["status"] == "failed" for r in records)  # exit 1 if a job failed (did_not_fit is a result)
    if as_json:
        print(json.dumps({"summary": summary, "records": records}, indent=2))
        raise typer.Exit(1 if failed else 0)
    t = Table(title=f"{len(records)} profiling records ({summary['ran']} run now, {summary['skipped']} done before)",
              title_justify="left")
    for c in ("model", "dataset", "seed", "status", "held-out", "zero-shot", "s"):
        t.add_column(c)
    for r in records:
        j, m = r["job"], r["metrics"]
        t.add_row(j["model"], j["dataset"], str(j["seed"]), r["status"], f"{m['heldout_loss']:.4f}" if r["status"] == "ok" else "—",
                  f"{m['zero_shot_loss']:.4f}" if r["status"] == "ok" else "—", f"{r['wall_s']:.1f}")
    out.print(t)
    for r in records:
        if r["status"] != "ok":
            console.print(f"{r['status'].replace('_', ' ')}: {r['job']['model']} × {r['job']['dataset']} seed {r['job']['seed']}: {r['error']}",
                          highlight=False, soft_wrap=True)
    console.print(f"campaign: {summary['campaign_dir']} ({summary['wall_s']:.0f}s); held-out/zero-shot: held-out "
                  "denoising loss after/before fine-tuning, lower is better", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------- plan
def _stage(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


@app.command("plan")
def plan_cmd(
    dataset: str = typer.Argument(..., help="Dataset reference: builtin:NAME or an imagefolder path."),
    memory: str = typer.Option(..., "--memory", help="Memory budget of the fine-tuning run, e.g. 8GiB, 512MiB, 6GB."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for plan.json and the reports (report.md, report.html)."),
    device: str = typer.Option("cuda", "--device", help="Where the run will happen: cuda or cpu (the memory "
                               "estimate's device offset)."),
    goal: str = typer.Option("domain", "--goal", help="domain (adapt the denoiser to your images) or subject "
                             "(learn a token for your subject)."),
    token: Optional[str] = typer.Option(None, "--token", help="The subject's placeholder word (goal subject), e.g. sks."),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="Comma-separated model refs of the graph to "
                                             "choose from (default: every model of the graph); hub:org/name names "
                                             "its crawled node."),
    crawl: bool = typer.Option(False, "--crawl", help="Choose among the crawled Hub models of the store "
                               "(`mandc hub crawl`); filter with --max-params and --license."),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="With --crawl: at most this many parameters "
                                             "in all components (safetensors headers), e.g. 1e9 or 800M."),
    license_: Optional[list[str]] = typer.Option(None, "--license", help="With --crawl: only models under this "
                                                 "license (repeatable or a comma list), e.g. mit,apache-2.0."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Fine-tuning steps (default: the method's recipe)."),
    probe_budget: Optional[int] = typer.Option(None, "--probe-budget", min=1, metavar="STEPS",
                                               help="Choose the model by a budgeted probe: up to STEPS fine-tuning "
                                               "steps (on this machine) over the best-ranked candidates that fit."),
    probe_top: int = typer.Option(4, "--probe-top", min=2, help="Candidates the budgeted probe short-lists."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="A method option as KEY=VALUE for every method that "
                                             "has it, e.g. lr=1e-4 (repeatable; see `mandc methods`)."),
    graph: Optional[Path] = typer.Option(None, "--graph", help="Matching-graph store (default: $MANDC_HOME/graph.sqlite)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Plan a fine-tuning run: model, per-layer bits, method and memory verdict; writes plan.json and a report."""
    from mandc.plan import PlanError
    from mandc.planner import Planner
    from mandc.report import write_reports
    from mandc.store import StoreError

    if steps is not None and steps < 1:
        _fail(f"--steps must be ≥ 1, got {steps}")
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir} exists and is not a folder")
    try:
        plan = Planner(graph).plan(dataset, memory=memory, device=device, goal=goal, candidates=candidates,
                                   steps=steps, token=token, overrides=_parse_plan_sets(set_), log=_stage,
                                   crawl=crawl, max_params=max_params, licenses=license_,
                                   probe_budget=probe_budget, probe_top=probe_top)
    except (PlanError, StoreError, ValueError, KeyError, FileNotFoundError) as e:  # DatasetError, ModelRefError
        _fail(str(e))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = plan.save(out_dir / "plan.json")
    reports = write_reports(plan, out_dir)
    if as_json:
        print(json.dumps(plan.to_json(), indent=2))
        return
    for line in plan.summary():
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"plan: {path}", highlight=False)
    out.print(f"report: {reports['html']} (and {reports['markdown'].name})", highlight=False)
    out.print(f"next: mandc run {path}", highlight=False)


@app.command("run")
def run_cmd(
    plan_path: Path = typer.Argument(..., help="plan.json written by `mandc plan` (or its folder)."),
    resume: bool = typer.Option(True, help="Continue an interrupted run from its checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Carry out a plan: quantize, fine-tune, evaluate, update the report and feed the result into the graph."""
    from data import DatasetError
    from finetune.refs import ModelRefError
    from mandc.plan import Plan, PlanError
    from mandc.sizes import fmt_bytes
    from mandc.store import StoreError

    try:
        plan = Plan.load(plan_path)
    except PlanError as e:
        _fail(str(e))
    folder = plan_path if plan_path.is_dir() else plan_path.parent
    try:
        with _progress() as prog:
            task = prog.add_task(f"{plan.method} on {plan.model}", total=plan.config.get("steps"))
            res = plan.run(folder, resume=resume, log=_stage,
                           progress=lambda d, n: prog.update(task, completed=d, total=n))
    except (ValueError, DatasetError, ModelRefError, StoreError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(res, indent=2))
        return
    if res.get("heldout_loss_before") is not None:
        out.print(f"held-out loss {res['heldout_loss_before']:.4f} → {res['heldout_loss_after']:.4f}", highlight=False)
    out.print(f"peak memory {fmt_bytes(res['measured_peak_bytes'])} ({res['mem_method']}); estimate "
              f"{fmt_bytes(res['estimate_expected_bytes'])}, high {fmt_bytes(res['estimate_high_bytes'])}: "
              f"{'within' if res['within_high'] else 'ABOVE'} the high bound", highlight=False)
    out.print(f"report: {folder / 'report.html'}", highlight=False)


def main() -> None:  # console-script entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    sys.exit(main())
