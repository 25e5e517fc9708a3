"""The plan: from a dataset and a memory budget to a model, a bit plan, a method and a memory verdict.

::

    import mandc
    plan = mandc.Planner().plan("./my_images", memory="8GiB", device="cuda")
    plan.model, plan.method, plan.config, plan.memory[plan.method]
    plan.save("out/plan.json")              # versioned plain JSON; Plan.load reads it back
    plan.run("out")                         # quantize as planned, fine-tune, evaluate, feed the graph

:func:`make_plan` (what :meth:`mandc.planner.Planner.plan` calls):

1. **model**: :meth:`~mandc.planner.Planner.recommend` ranks the candidates (all models of the graph, the
   ``candidates`` given, or with ``crawl`` the store's crawled Hub models filtered by size and license,
   :func:`mandc.hub.select.crawled_candidates`); each gets a memory verdict from its description alone
   (:func:`candidate_memory`: configs and safetensors headers, for a Hub model read from the Hub without
   downloading weights), and the best-ranked candidate that fits is chosen (``shortlist``: those that fit);
2. **memory**: :func:`finetune.estimate.estimate_memory` estimates every registered method on that model
   from its configs and safetensors headers (no weights loaded): low / expected / high peak bytes. A method
   *fits* when its **high** estimate is within the budget. Quantizing methods are estimated at every
   weight-bit choice in :data:`BIT_CHOICES` and take the most bits that fit (more bits, less quantization
   error);
3. **method**: among the methods of the goal (:data:`GOALS`) that fit, the first in :data:`QUALITY_ORDER`
   (measured quality at equal steps); the others that fit are the fallback order. When nothing fits,
   :class:`NothingFitsError` names the smallest budget that would fit, with which method and bits;
4. **bits**: for a method in :data:`PLAN_METHODS` (``peqa``, ``tuneqdm``), the default bit allocator
   (:func:`profiler.mpq.profile_bits`; ``profiler.mpq.allocators.DEFAULT_ALLOCATOR``, named in the bit plan's
   ``settings.allocator``) allocates per-layer weight/activation bits at that average, and the method's
   memory is re-estimated with the plan itself.

:meth:`Plan.run` fine-tunes with :func:`finetune.run` (resumable), samples before and after, records the
measured peak beside the estimate and feeds a ProfileRecord into the graph through
:meth:`~mandc.planner.Planner.feedback`, the one feedback path.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mandc.sizes import fmt_bytes, scaled_number  # fmt_bytes is re-exported: plans print sizes

FORMAT = "mandc.Plan"
VERSION = 1

#: Methods per goal. Subject personalisation learns a token for the user's subject; domain adaptation
#: changes the denoiser (or adapters on it) for the user's style or domain.
GOALS = {"domain": ("full", "tuneqdm", "peqa", "qta-lora", "lora"), "subject": ("ti", "zo-ti")}

#: Methods best first by measured held-out loss after fine-tuning at equal steps. Sources (README,
#: "Measured: memory and quality of the methods"): ``python benchmarks/finetune_memory.py`` (one 60M UNet,
#: 30 steps: full 0.272 < tuneqdm 0.451 < peqa 0.478 < qta-lora 0.589 < lora 0.599; ti 0.797 < zo-ti 0.821),
#: ``python benchmarks/finetune_quality.py --seeds 3`` (tuneqdm below peqa on every seed and dataset) and
#: ``... --zo-variants ti-backprop`` (backprop ti 0.1933 vs zo-ti 0.1947 on photos_cat, 5 seeds).
QUALITY_ORDER = ("full", "tuneqdm", "peqa", "qta-lora", "lora", "ti", "zo-ti")

#: Methods the plan gives an MPQ-Diff per-layer bit plan (they train the quantization scales of exactly the
#: model MPQ-Diff scored). zo-ti and qta-lora accept a plan too, but the planner keeps their papers' INT8
#: recipe, and the memory estimate models a plan only for these two.
PLAN_METHODS = ("tuneqdm", "peqa")

#: Weight-bit choices tried for a method with a ``bits`` option, most first.
BIT_CHOICES = (8, 6, 4, 3, 2)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_TOP_KEYS = ("version", "dataset", "candidates", "model", "bitplan", "method", "config", "memory", "budget_bytes",
             "reasons")


class PlanError(ValueError):
    """A plan that cannot be made or read; the message says why in one line."""


class NothingFitsError(PlanError):
    """No method of the goal fits the budget; ``smallest`` is ``(bytes, method, bits)`` of the cheapest option."""

    def __init__(self, msg: str, smallest: tuple[int, str, int | None]):
        super().__init__(msg)
        self.smallest = smallest


def parse_memory(value) -> int:
    """Bytes from ``8GiB``, ``8 GB``, ``512MiB``, ``1.5G`` (binary) or a plain number of bytes.

    ``GB``/``MB`` are decimal (10⁹, 10⁶), ``GiB``/``MiB`` and the bare letters ``G``/``M`` binary."""
    n = scaled_number(value, _UNITS)
    if n is None:
        raise PlanError(f"memory budget {value!r} is not a size: give e.g. 8GiB, 512MiB, 6GB or a number of bytes")
    if not math.isfinite(n) or n <= 0:
        raise PlanError(f"memory budget must be positive, got {value!r}")
    return int(n)


# ------------------------------------------------------------------------------------------ the object
@dataclass
class Plan:
    """Everything decided for one dataset and budget; plain JSON (see :meth:`to_json`).

    ``memory``: ``{method: {"low_bytes", "expected_bytes", "high_bytes", "fits", "bits", "terms"}}`` for every
    registered method on the chosen model; ``reasons``: why the model and the method were chosen, and why each
    other method was not; ``result``: filled by :meth:`run`.
    """

    dataset: dict                 # {"ref", "fingerprint", "name", "n_train", "n_heldout"}
    candidates: list[dict]        # the ranking: {"rank", "model", "score", "spread", "why", "evidence", "license",
    #                               "lineage", "params", "memory", "feasible", ...}
    model: str
    bitplan: dict | None
    method: str
    config: dict
    memory: dict
    budget_bytes: int
    reasons: list[str]
    device: str = "cpu"
    goal: str = "domain"
    fallback: list[str] = field(default_factory=list)
    shortlist: list[str] = field(default_factory=list)   # the ranked candidates whose memory verdict fits
    predicted_score: float | None = None
    recommendation: dict = field(default_factory=dict)   # source, nearest, notes, selector of the ranking
    graph: str | None = None       # the --graph the plan was made with (None: the default store)
    created_at: str = ""
    seconds: float = 0.0
    result: dict | None = None
    version: int = VERSION

    # -- JSON -------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {"format": FORMAT, "version": self.version, **{k: v for k, v in d.items() if k != "version"}}

    @classmethod
    def from_json(cls, d, source: str = "plan") -> "Plan":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PlanError(f"{source} is not a mandc plan (expected a JSON object with format {FORMAT!r}; "
                            "make one with `mandc plan`)")
        if d.get("version") != VERSION:
            raise PlanError(f"{source} was written by plan format version {d.get('version')!r}; this mandc reads "
                            f"version {VERSION}: make the plan again with `mandc plan`")
        missing = [k for k in _TOP_KEYS if k not in d]
        if missing:
            raise PlanError(f"{source} lacks the field(s) {', '.join(missing)}: make the plan again with `mandc plan`")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        try:
            plan = cls(**kw)
        except TypeError as e:
            raise PlanError(f"{source}: {e}") from None
        plan._check(source)
        return plan

    def _check(self, source: str) -> None:
        types = {"dataset": dict, "candidates": list, "model": str, "method": str, "config": dict, "memory": dict,
                 "budget_bytes": int, "reasons": list}
        for k, t in types.items():
            if not isinstance(getattr(self, k), t) or isinstance(getattr(self, k), bool):
                raise PlanError(f"{source}: field {k!r} must be a {t.__name__}, got {type(getattr(self, k)).__name__}")
        if self.bitplan is not None and not isinstance(self.bitplan, dict):
            raise PlanError(f"{source}: field 'bitplan' must be an object or null")
        if not isinstance(self.dataset.get("ref"), str):
            raise PlanError(f"{source}: dataset.ref must be a string")
        from finetune.methods import METHODS

        if self.method not in METHODS:
            raise PlanError(f"{source}: method {self.method!r} is not a registered method ({', '.join(METHODS)})")

    def save(self, path) -> Path:
        """Write ``plan.json`` atomically; returns the path."""
        from data.io import atomic_write

        return atomic_write(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "Plan":
        path = Path(path)
        if path.is_dir():
            path = path / "plan.json"
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist (make one with `mandc plan DATASET --out DIR`)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PlanError(f"plan file {path} is not valid JSON ({e}); make it again with `mandc plan`") from None
        return cls.from_json(d, f"plan file {path}")

    # -- views ------------------------------------------------------------------------------------------
    @property
    def estimate(self) -> dict:
        """The chosen method's memory estimate."""
        return self.memory[self.method]

    def summary(self) -> list[str]:
        """A few lines for the terminal."""
        e = self.estimate
        bits = f" at {e['bits']} bits" if e.get("bits") else ""
        out = [f"model: {self.model} (predicted score {self.predicted_score:.3f})" if self.predicted_score is not None
               else f"model: {self.model}",
               f"method: {self.method}{bits}; estimated peak {fmt_bytes(e['expected_bytes'])} "
               f"(high {fmt_bytes(e['high_bytes'])}) of a {fmt_bytes(self.budget_bytes)} budget on {self.device}"]
        if self.bitplan:
            u = self.bitplan.get("usage") or {}
            out.append(f"bit plan: {len(self.bitplan.get('layers', {}))} layers, average "
                       f"{u.get('avg_bits', float('nan')):.2f} weight bits (allocator "
                       f"{(self.bitplan.get('settings') or {}).get('allocator', '?')})")
        if self.fallback:
            out.append("fallback: " + ", ".join(self.fallback))
        if len(self.candidates) > 1:
            out.append(f"shortlist: {len(self.shortlist)} of {len(self.candidates)} candidates fit "
                       f"({', '.join(self.shortlist) or 'none'})")
        return out

    # -- running ----------------------------------------------------------------------------------------
    def run(self, out_dir, *, graph=None, progress: Callable[[int, int], None] | None = None,
            log: Callable[[str], None] | None = None, resume: bool = True, samples: bool = True) -> dict:
        """Fine-tune as planned into ``out_dir/run`` and feed the measurement back; returns ``result``.

        The bit plan (if any) is written to ``out_dir/bitplan.json`` and given to the method, which
        quantizes with it through the one quantizer; ``finetune.run`` resumes an interrupted run. Afterwards
        ``result`` holds the held-out loss before/after, the measured peak beside the estimate, the loss
        curve, artefacts, the sample grid and the record's ``job_id``; ``out_dir/plan.json`` and the reports
        are rewritten. ``graph``: where the record goes (a Store, a MatchingGraph or a path, see
        :func:`mandc.feedback.open_graph`); default the graph the plan was made from (``self.graph``).
        """
        from mandc.run import run_plan

        return run_plan(self, out_dir, graph=graph, progress=progress, log=log, resume=resume, samples=samples)


# ------------------------------------------------------------------------------------------ making one
def make_plan(planner, dataset, memory="8GiB", device: str = "cuda", goal: str = "domain", candidates=None,
              steps: int | None = None, token: str | None = None, overrides: dict | None = None,
              log: Callable[[str], None] | None = None, crawl: bool = False, max_params=None,
              licenses=None, probe_budget: int | None = None, probe_top: int | None = None) -> Plan:
    """See the module docstring. ``token``: the subject's placeholder word (goal ``subject``); ``overrides``:
    method options for every method that has them (e.g. ``{"lr": 1e-4}``), validated by each method's config.
    ``candidates``: model refs of the graph (``hub:org/name`` without a revision names its crawled node);
    ``crawl``: the candidates are the store's crawled Hub models, filtered by ``max_params`` (total parameters
    from the headers, e.g. ``1e9`` or ``"800M"``) and ``licenses`` (a list or a comma list), see
    :func:`mandc.hub.select.crawled_candidates`. ``probe_budget``: training steps of a budgeted probe
    (:meth:`~mandc.planner.Planner.budgeted_probe`) over the first ``probe_top`` candidates that fit, whose
    winner becomes the plan's model (the probe runs on this machine: CUDA when available, else CPU)."""
    t0 = time.perf_counter()
    say = log or (lambda s: None)
    budget = parse_memory(memory)
    if goal not in GOALS:
        raise PlanError(f"goal must be one of {', '.join(GOALS)}, got {goal!r}")
    if device not in ("cuda", "cpu"):
        raise PlanError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise PlanError(f"steps must be a positive integer, got {steps!r}")
    if probe_budget is not None and (isinstance(probe_budget, bool) or not isinstance(probe_budget, int)
                                     or probe_budget < 1):
        raise PlanError(f"probe_budget must be a positive number of training steps, got {probe_budget!r}")
    if probe_budget is not None and not isinstance(dataset, (str, os.PathLike)):
        raise PlanError("probe_budget runs profiling jobs, which need a dataset reference (builtin:NAME or a "
                        "folder), not a loaded dataset")
    from finetune.methods import METHODS

    unknown = sorted(k for k in overrides or {} if not any(k in _options(m) for m in METHODS))
    if unknown:
        raise PlanError(f"no method has the option(s) {', '.join(unknown)} (see `mandc methods`)")

    if crawl:
        if candidates:
            raise PlanError("give either candidates (--candidates) or crawl (--crawl), not both")
        from mandc.hub.select import crawled_candidates

        if planner.store is None:
            raise PlanError("crawl (--crawl) reads the crawled Hub models of a graph store; this planner has a "
                            "plain matching graph")
        try:
            candidates = crawled_candidates(planner.store, max_params=max_params, licenses=licenses)
        except ValueError as e:
            raise PlanError(str(e)) from None
    elif max_params is not None or licenses:
        raise PlanError("max_params/licenses (--max-params, --license) filter the crawled Hub models: add crawl "
                        "(--crawl)")

    from data import load_dataset
    from data.fingerprint import dataset_fingerprint
    from mandc.feedback import dataset_key

    say(f"plan: reading the dataset {dataset}")
    ds = dataset if hasattr(dataset, "train") else load_dataset(dataset)
    ref = dataset_key(dataset) if isinstance(dataset, (str, os.PathLike)) else (ds.ref or ds.name)
    say("plan: ranking the candidate models (M&C matching graph)")
    rec = planner.recommend(ds if not isinstance(dataset, (str, os.PathLike)) else dataset, top_k=3)
    entries = rec.entries
    if candidates:
        cands = [c.strip() for c in (candidates.split(",") if isinstance(candidates, str) else candidates) if c.strip()]
        known = {e.model for e in entries}
        wanted = {m for c in cands for m in _matching(c, known)}
        unknown = [c for c in cands if not _matching(c, known)]
        if unknown:
            raise PlanError(f"candidate(s) {', '.join(unknown)} are not models of the matching graph "
                            f"(known: {', '.join(sorted(known))}); profile or crawl them first")
        entries = [e for e in entries if e.model in wanted]
    ranked = _candidates(rec, entries)
    _annotate(planner, ranked)
    say(f"plan: estimating the memory of {len(ranked)} candidate(s) from their configs and headers")
    model, skipped = _first_feasible(ranked, goal, steps, token, budget, device, overrides, say)
    probed = None
    if probe_budget is not None:
        fits = [c["model"] for c in ranked if c.get("feasible")]  # an unbuilt zoo model is not probed anyway
        say(f"plan: budgeted probe of {probe_budget} steps over the best-ranked candidates that fit")
        summary, outcome, probe_notes = planner.budgeted_probe(ref, fits, probe_budget, probe_top, log=say)
        rec.notes[:0] = probe_notes
        rec.probe_budget = summary
        if outcome is not None and outcome.best is not None:
            probed = outcome
            if outcome.best != model:
                skipped = [f"{model} and the others fit but lost the budgeted probe to {outcome.best}"]
                model = outcome.best
    say(f"plan: {model} is the best-ranked candidate that fits; estimating the memory of every method on it")

    from profiler.mpq.allocators import DEFAULT_ALLOCATOR

    memory, configs = estimate_methods(model, goal, steps, token, budget, device, overrides)
    plans: dict = {}   # one bit-allocation profile of the model serves every average (and both plan-taking methods)
    while True:
        chosen, reasons, fallback = choose_method(memory, budget, goal)  # NothingFitsError when none is left
        cfg = configs[chosen]
        if chosen not in PLAN_METHODS:
            bitplan = None
            break
        top = memory[chosen]["bits"] or max(BIT_CHOICES)
        say(f"plan: allocating per-layer bits for {chosen} with the {DEFAULT_ALLOCATOR} allocator (at most {top} "
            f"average weight bits)")
        bitplan, memory[chosen] = _bitplan_that_fits(model, ds, chosen, cfg, memory[chosen], top, budget, device,
                                                     plans, say)
        if bitplan is not None:
            if "bits" in _options(chosen):
                cfg = {**cfg, "bits": memory[chosen]["bits"]}
            # the reasons again, so they quote the estimate with the plan (the row the report shows)
            _, reasons, fallback = choose_method(memory, budget, goal)  # same choice: the row still fits
            break
        say(f"plan: no bit plan lets {chosen} fit; choosing again")
    top = next(c for c in ranked if c["model"] == model)
    if probed is not None:
        losses = {m: v[max(v)] for m, v in probed.losses.items() if v}
        reasons.insert(0, f"model {model}: won a budgeted probe of {probe_budget} training steps over "
                          f"{', '.join(probed.order[:len(losses)])} (held-out loss "
                          + ", ".join(f"{losses[m]:.4f}" for m in probed.order[:len(losses)])
                          + f"; ranked {top['rank']} of {len(entries)} by the matching graph, {rec.source})")
    elif not skipped:
        reasons.insert(0, f"model {model}: ranked first of {len(entries)} candidate(s) by the matching graph "
                          f"({rec.source}; {top['why'] or 'no evidence'})")
    else:
        reasons.insert(0, f"model {model}: ranked {top['rank']} of {len(entries)} candidate(s) by the matching graph "
                          f"({rec.source}; {top['why'] or 'no evidence'}), the best-ranked whose {goal} methods fit "
                          f"the budget; above it: " + "; ".join(skipped))
    if bitplan is None and memory[chosen].get("bits"):
        reasons.append(f"{chosen} quantizes uniformly at {memory[chosen]['bits']} bits (it takes no per-layer plan)")
    plan = Plan(
        dataset={"ref": ref, "name": ds.name, "fingerprint": dataset_fingerprint(ds), "n_train": len(ds.train),
                 "n_heldout": len(ds.heldout)},
        candidates=ranked, shortlist=[c["model"] for c in ranked if c.get("feasible")], model=model,
        bitplan=bitplan, method=chosen, config=cfg, memory=memory,
        budget_bytes=budget, reasons=reasons, device=device, goal=goal, fallback=fallback,
        predicted_score=float(top["score"]),
        recommendation={"source": rec.source, "nearest": rec.nearest, "notes": rec.notes, "selector": rec.selector,
                        "graph": rec.graph, "contenders": rec.contenders, "probe_budget": rec.probe_budget},
        graph=planner.graph_source, created_at=_now(), seconds=round(time.perf_counter() - t0, 2))
    say(f"plan: {chosen} on {model} ({time.perf_counter() - t0:.1f}s)")
    return plan


def _options(method: str) -> dict:
    from finetune.methods import get_method

    return get_method(method).Config.help()


def method_config(method: str, goal: str, steps: int | None, token: str | None) -> dict:
    """The overrides a plan gives ``method``: the goal's prompt template and the steps; the rest is the
    method's paper recipe (its config defaults)."""
    opts = _options(method)
    cfg: dict = {}
    if steps is not None:
        cfg["steps"] = int(steps)
    if goal == "subject":
        cfg["template"] = "a photo of {token}"
        if token:
            cfg["placeholder" if "placeholder" in opts else "identifier"] = token
    return cfg


def _bits_key(method: str) -> str | None:
    opts = _options(method)
    return "bits" if "bits" in opts else "quant_bits" if "quant_bits" in opts else None


def estimate_methods(model, goal: str, steps, token, budget: int, device: str,
                     overrides: dict | None = None) -> tuple[dict, dict]:
    """``(memory, configs)``: every registered method's estimate on ``model`` (``memory[m]``: low/expected/
    high bytes, ``fits``, ``bits``, ``terms``) and the config overrides it would run with. A method with a
    bits option takes the most bits of :data:`BIT_CHOICES` whose high estimate fits (the fewest if none).
    ``model``: what :func:`finetune.estimate.estimate_memory` takes (a ref, a description)."""
    from finetune.methods import METHODS

    memory, configs = {}, {}
    for m in METHODS:
        memory[m], configs[m] = method_estimate(model, m, goal, steps, token, budget, device, overrides)
    return memory, configs


def method_estimate(model, method: str, goal: str, steps, token, budget: int, device: str,
                    overrides: dict | None = None) -> tuple[dict, dict]:
    """``(row, config overrides)`` of one method on ``model``: at the most bits of :data:`BIT_CHOICES` whose high
    estimate fits, else at the fewest. The fewest bits are tried first, so a method that cannot fit costs one
    estimate; estimates are cached (:mod:`finetune.estimate.core`)."""
    from finetune.estimate import estimate_memory

    g = goal if method in GOALS[goal] else next(k for k, v in GOALS.items() if method in v)
    base = method_config(method, g, steps, token)
    base.update({k: v for k, v in (overrides or {}).items() if k in _options(method)})
    key = _bits_key(method)
    if key is None or key == "quant_bits":
        est = estimate_memory(model, method, base, device=device)
        return _row(est, budget, _options(method)[key][0] if key else None), base
    fewest = BIT_CHOICES[-1]
    cfg = {**base, key: fewest}
    row = _row(estimate_memory(model, method, cfg, device=device), budget, fewest)
    if not row["fits"]:
        return row, cfg
    for bits in BIT_CHOICES[:-1]:
        c = {**base, key: bits}
        r = _row(estimate_memory(model, method, c, device=device), budget, bits)
        if r["fits"]:
            return r, c
    return row, cfg


def candidate_memory(model, goal: str, steps, token, budget: int, device: str,
                     overrides: dict | None = None) -> dict:
    """One candidate's memory verdict from its description alone (configs + safetensors headers, nothing
    loaded or downloaded): ``{"method", "bits", "high_bytes", "expected_bytes", "fits"}`` of the goal's method
    :func:`choose_method` would take on it, or, when none fits, of its cheapest option (``fits`` False). Only
    the goal's methods are estimated, best quality first, stopping at the first that fits."""
    from finetune.methods import METHODS

    rows: dict = {}
    for m in (m for m in QUALITY_ORDER if m in GOALS[goal] and m in METHODS):
        rows[m] = method_estimate(model, m, goal, steps, token, budget, device, overrides)[0]
        if rows[m]["fits"]:
            break
    try:
        m = choose_method(rows, budget, goal)[0]
    except NothingFitsError as e:
        m = e.smallest[1]
    r = rows[m]
    return {"method": m, "bits": r["bits"], "high_bytes": r["high_bytes"], "expected_bytes": r["expected_bytes"],
            "fits": r["fits"]}


def _row(est, budget: int, bits) -> dict:
    return {"low_bytes": int(est.low_bytes), "expected_bytes": int(est.expected_bytes), "high_bytes": int(est.high_bytes),
            "fits": bool(est.high_bytes <= budget), "bits": bits, "terms": {k: int(v) for k, v in est.terms.items()}}


def choose_method(memory: dict, budget: int, goal: str) -> tuple[str, list[str], list[str]]:
    """``(method, reasons, fallback)``: the first method of the goal in :data:`QUALITY_ORDER` whose high
    estimate fits ``budget``; raises :class:`NothingFitsError` naming the smallest budget that would fit."""
    order = [m for m in QUALITY_ORDER if m in GOALS[goal] and m in memory]
    fitting = [m for m in order if memory[m]["fits"]]
    if not fitting:
        opts = [(memory[m]["high_bytes"], m, memory[m].get("bits")) for m in order]
        need, m, bits = min(opts)
        at = f" at {bits} bits" if bits else ""
        raise NothingFitsError(f"no {goal} method fits in {fmt_bytes(budget)}: the smallest budget that fits is "
                               f"{fmt_bytes(need)} ({need} bytes), with {m}{at}", (need, m, bits))
    chosen = fitting[0]
    e = memory[chosen]
    reasons = [f"method {chosen}: the best measured quality among the {goal} methods that fit "
               f"(high estimate {fmt_bytes(e['high_bytes'])} ≤ budget {fmt_bytes(budget)})"]
    for m in memory:
        if m == chosen:
            continue
        r = memory[m]
        if m not in GOALS[goal]:
            reasons.append(f"not {m}: it is a {'subject' if goal == 'domain' else 'domain'} method, the goal is {goal}")
        elif not r["fits"]:
            at = f" even at {r['bits']} bits" if r.get("bits") else ""
            reasons.append(f"not {m}: its high estimate {fmt_bytes(r['high_bytes'])} exceeds the budget{at}")
        else:
            reasons.append(f"not {m}: it fits, but {chosen} ranks above it in measured quality (fallback)")
    return chosen, reasons, fitting[1:]


def _bitplan_that_fits(model: str, ds, method: str, cfg: dict, uniform: dict, bits: int, budget: int, device: str,
                       plans: dict, say) -> tuple[dict | None, dict]:
    """``(bitplan, memory row)``: MPQ-Diff's plan at the most average weight bits (of :data:`BIT_CHOICES`, at
    most ``bits``) with which ``method``'s high estimate — now with the plan itself — fits the budget;
    ``(None, row of the fewest bits)`` when none does (``uniform``'s row, marked as not fitting, when no average is
    feasible for the model at all). ``plans`` caches the model's plans across calls."""
    from finetune.estimate import estimate_memory

    if not plans:
        from finetune.load import load_model
        from profiler.mpq import profile_bits_at

        plans.update({b: p.to_json() for b, p in profile_bits_at(load_model(model), ds, BIT_CHOICES).items()})
        if not plans:
            plans[None] = None  # no average is feasible for this model: remember, do not profile again
    row = None
    for b in [b for b in BIT_CHOICES if b <= bits and plans.get(b)]:
        bits_cfg = {**cfg, "bits": b} if "bits" in _options(method) else cfg
        est = estimate_memory(model, method, bits_cfg, device=device, bitplan=plans[b])
        row = _row(est, budget, b)
        if row["fits"]:
            return plans[b], row
        say(f"plan: {method} with the {b}-bit plan does not fit ({fmt_bytes(est.high_bytes)})")
    if row is None:  # no feasible plan at or below these bits: the method cannot be planned
        row = {**uniform, "fits": False, "note": f"MPQ-Diff finds no feasible plan at or below {bits} average bits"}
    return None, row


def _matching(candidate: str, known: set[str]) -> list[str]:
    """The graph's models a candidate names: itself, or for ``hub:org/name`` without a revision its crawled
    node(s) ``hub:org/name@sha``."""
    if candidate in known:
        return [candidate]
    if candidate.startswith("hub:") and "@" not in candidate:
        return sorted(k for k in known if k.startswith(candidate + "@"))
    return []


def _annotate(planner, ranked: list[dict]) -> None:
    """Each candidate's ``license``, ``lineage`` (``[{"base", "relation"}]``: the store's typed lineage edges,
    else the card's ``base_model`` or the zoo parent) and ``params`` (all components from the safetensors
    headers for a crawled model, else the denoiser's), from the graph's model lines."""
    from mandc.hub.crawl import lineage_edges
    from mandc.hub.select import total_params

    edges: dict[str, list[dict]] = {}
    if planner.store is not None:
        infos = {m["ref"]: m.get("info") or {} for m in planner.store.models()}
        for e in planner.store.lineage():
            edges.setdefault(e["model"], []).append({"base": e["base"], "relation": e["relation"]})
    else:
        graph = planner.graph()
        infos = {c["model"]: graph.model_info(c["model"]) for c in ranked}
    for c in ranked:
        info = infos.get(c["model"], {})
        hub = info.get("hub") or {}
        lineage = edges.get(c["model"])
        if lineage is None and hub:
            lineage = lineage_edges({k: hub.get(k) for k in ("base_model", "base_model_relation")}, hub.get("tags") or [])
        if lineage is None and info.get("parent"):
            parent = str(info["parent"])
            lineage = [{"base": parent if ":" in parent else f"zoo:{parent}", "relation": "finetune"}]
        n = total_params(info)
        c.update(license=hub.get("license") or info.get("license"), lineage=lineage or [],
                 params=n if n is not None else info.get("params"),
                 params_of="all components" if n is not None else "denoiser")


def _first_feasible(ranked: list[dict], goal: str, steps, token, budget: int, device: str, overrides,
                    say) -> tuple[str, list[str]]:
    """``(model, skipped)``: the best-ranked candidate whose memory verdict (:func:`candidate_memory`, from its
    description alone) fits, and one line per better-ranked candidate that does not. Sets each candidate's
    ``memory`` and ``feasible``; a zoo model not built yet is built only when it is reached before a feasible
    one (else ``memory`` None, ``feasible`` None: not estimated). Raises :class:`NothingFitsError` naming the
    smallest budget that fits over all candidates."""
    from finetune.zoo import is_built
    from profiler.reference import ensure_built

    chosen, skipped = None, []
    for c in ranked:
        m = c["model"]
        try:
            unbuilt = m.startswith("zoo:") and not is_built(m[4:])
        except ValueError:  # an unknown zoo name: the estimate below says so
            unbuilt = False
        if unbuilt and chosen is not None:
            c.update(memory=None, feasible=None, memory_note="not estimated: a zoo model not built yet (it is "
                                                             "built when it is the best-ranked candidate left)")
            continue
        if unbuilt:
            ensure_built([m])  # a zoo model is built on first use (minutes), so that its configs can be read
        try:
            c["memory"] = candidate_memory(m, goal, steps, token, budget, device, overrides)
        except (ValueError, OSError) as e:  # a Hub repo that is gated, gone or unreachable; a bad folder
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            c.update(memory=None, feasible=False, memory_note=f"cannot be estimated: {why}")
            if chosen is None:
                skipped.append(f"{m} cannot be estimated ({why})")
            continue
        r = c["memory"]
        c["feasible"] = bool(r["fits"])
        at = f" at {r['bits']} bits" if r.get("bits") else ""
        say(f"plan: {m}: {r['method']}{at}, high estimate {fmt_bytes(r['high_bytes'])} "
            f"({'fits' if r['fits'] else 'does not fit'})")
        if chosen is None:
            if r["fits"]:
                chosen = m
            else:
                skipped.append(f"{m} does not fit (no {goal} method does; the cheapest, {r['method']}{at}, needs "
                               f"{fmt_bytes(r['high_bytes'])})")
    if chosen is not None:
        return chosen, skipped
    opts = [(c["memory"]["high_bytes"], c["memory"]["method"], c["memory"]["bits"], c["model"])
            for c in ranked if c.get("memory")]
    if not opts:
        raise PlanError("no candidate model can be estimated: " + "; ".join(skipped))
    need, m, bits, model = min(opts)
    at = f" at {bits} bits" if bits else ""
    on = f"on {model}" if len(ranked) == 1 else f"on any of the {len(ranked)} candidates"
    raise NothingFitsError(f"no {goal} method fits in {fmt_bytes(budget)} {on}: the smallest budget that fits is "
                           f"{fmt_bytes(need)} ({need} bytes), with {m}{at} on {model}", (need, m, bits))


def _candidates(rec, entries) -> list[dict]:
    """The ranking as plain JSON, with each score's evidence spread: the similarity-weighted standard deviation
    of the model's normalised measured score over the target's nearest profiled datasets."""
    out = []
    for rank, e in enumerate(entries, 1):
        ev = [x for x in e.evidence if x.get("score") is not None]
        spread = None
        if len(ev) >= 2:
            w = [max(x["similarity"], 1e-6) for x in ev]
            mu = sum(wi * x["score"] for wi, x in zip(w, ev)) / sum(w)
            spread = round(math.sqrt(sum(wi * (x["score"] - mu) ** 2 for wi, x in zip(w, ev)) / sum(w)), 4)
        out.append({"rank": rank, "model": e.model, "score": round(float(e.score), 4), "spread": spread,
                    "measured_loss": e.measured_loss, "probe_loss": e.probe_loss, "why": e.why,
                    "evidence": e.evidence, "mixture": e.mixture, "description": e.description,
                    "interval": e.interval})
    return out


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
