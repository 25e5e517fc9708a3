"""``mandc run PLAN``: carry out a :class:`~mandc.plan.Plan` and feed the measurement back into the graph.

Layout of the plan's folder (``out_dir``)::

    plan.json  report.md  report.html      the plan, rewritten with ``result`` after the run
    bitplan.json                           the MPQ-Diff plan the method quantizes with (if the plan has one)
    run/                                   finetune.run's output: artefacts, result.json, checkpoint.pt
    samples.png                            held-out captions: top row before, bottom row after fine-tuning

The same command again resumes an interrupted run from ``run/checkpoint.pt`` (``finetune.run``), or, once
finished, returns the stored result without training again. The record fed back has the job's own id, so
feeding it twice changes nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

SAMPLES = 4          # held-out captions in the before/after grid
SAMPLE_STEPS = 25    # DDIM steps per sample
GUIDANCE = 2.0       # classifier-free guidance of the samples (as in `make demo`)


def run_plan(plan, out_dir, *, graph=None, progress: Callable[[int, int], None] | None = None,
             log: Callable[[str], None] | None = None, resume: bool = True, samples: bool = True) -> dict:
    """See :meth:`mandc.plan.Plan.run`."""
    import torch

    from data import load_dataset
    from finetune.load import load_model
    from finetune.runner import run
    from mandc.feedback import feed, graph_of, open_graph
    from mandc.store import DEFAULT_K

    say = log or (lambda s: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    config = dict(plan.config)
    if plan.bitplan:  # the method quantizes with the plan itself (its content, not a path, keys the run)
        from profiler.mpq.bitplan import BitPlan

        BitPlan.from_dict(plan.bitplan, "the plan's bitplan").save(out / "bitplan.json")
        config["plan"] = plan.bitplan
    say(f"run: loading {plan.dataset['ref']} and {plan.model}")
    ds = load_dataset(plan.dataset["ref"])
    from data.fingerprint import dataset_fingerprint

    fp = dataset_fingerprint(ds)
    if fp != plan.dataset.get("fingerprint"):
        say(f"run: note: the dataset's contents changed since the plan was made (fingerprint {fp} ≠ "
            f"{plan.dataset.get('fingerprint')}); running on what is there now")
    prompts = list(ds.heldout.captions[:SAMPLES])
    grid = out / "samples.png"
    after: list = []

    def sample_trained(model) -> None:  # the trained model, before finetune.run releases it
        from finetune.runner import resolve_config

        cfg = resolve_config(plan.method, config)
        token = getattr(cfg, "placeholder", None) or cfg.identifier
        after.extend(model.sample([cfg.template.format(caption=c, token=token) for c in prompts],
                                  steps=SAMPLE_STEPS, seed=0, guidance_scale=GUIDANCE))

    say(f"run: fine-tuning with {plan.method} ({config.get('steps', 'default')} steps) into {run_dir}")
    # finetune.run loads the model itself, inside its memory meter, so the measured peak counts the weights as
    # the estimate does (a model loaded and sampled here first would sit below the meter's baseline)
    res = run(plan.model, ds, plan.method, config, run_dir, resume=resume, progress=progress,
              trained=sample_trained if samples else None)
    if after:  # trained now (not answered by an earlier result.json): the base model's samples beside them
        from finetune.images import save_grid

        base = load_model(plan.model)
        before = base.sample(prompts, steps=SAMPLE_STEPS, seed=0, guidance_scale=GUIDANCE)
        save_grid(before + after, grid, nrow=len(prompts))
        del base
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    record = record_from_result(plan, res, config)
    target = open_graph(graph if graph is not None else plan.graph)
    feed(target, record)
    say(f"run: fed record {record['job_id']} ({plan.model} × {plan.dataset['ref']}) into the matching graph")
    est = plan.memory[plan.method]
    plan.result = {
        "job_id": record["job_id"], "heldout_loss_before": res.heldout_loss_before,
        "heldout_loss_after": res.heldout_loss_after, "steps": res.steps, "losses": res.losses,
        "measured_peak_bytes": int(res.peak_mem_bytes), "mem_method": res.mem_method, "device": res.device,
        "estimate_high_bytes": est["high_bytes"], "estimate_expected_bytes": est["expected_bytes"],
        "within_high": bool(res.peak_mem_bytes <= est["high_bytes"]),
        "peak_over_expected": round(res.peak_mem_bytes / max(est["expected_bytes"], 1), 3),
        "predicted_score": plan.predicted_score, "artefacts": res.artefacts,
        "samples": str(grid) if grid.is_file() else None, "run_dir": str(run_dir), "wall_s": round(res.wall_s, 1),
        "step_s": res.step_s, "trainable_params": res.trainable_params, "resumed_from": res.resumed_from,
        "finished_at": record["finished_at"],
    }
    plan.result["measured_rank"] = _measured_rank(graph_of(target, DEFAULT_K), plan)
    plan.save(out / "plan.json")
    from mandc.report import write_reports

    write_reports(plan, out)
    return plan.result


def record_from_result(plan, res, config: dict) -> dict:
    """The run as a ProfileRecord dict (``profiler.jobs`` format): the job is the plan's model, dataset, method
    and config overrides; ``heldout_loss`` after, ``zero_shot_loss`` before fine-tuning."""
    from profiler.jobs import ProfileJob, record_from_result

    job = ProfileJob(plan.model, plan.dataset["ref"], plan.method, dict(config), int(res.config.get("seed", 0)))
    return record_from_result(job, res).to_dict()


def _measured_rank(g, plan) -> dict:
    """Where the chosen model now ranks on the dataset ``g`` by measurement (among the models measured there)."""
    ref = plan.dataset["ref"]
    if ref not in g.datasets:
        return {}
    scores = g.scores(ref)
    order = sorted(scores, key=lambda m: (-scores[m], m))
    return {"rank": order.index(plan.model) + 1 if plan.model in order else None, "of": len(order),
            "predicted_rank": next((c["rank"] for c in plan.candidates if c["model"] == plan.model), None)}
