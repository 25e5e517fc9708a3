"""Budgeted probing: spend a few fine-tuning steps on the user's data to choose between the graph's best guesses.

The matching graph ranks every candidate without running any of them. A user with some GPU minutes can do
better: short-list the top ``k`` models of that ranking, fine-tune each for a few steps on the dataset and
keep the one whose held-out loss drops most — by **successive halving** (Jamieson & Talwalkar 2016), which
spends the budget where the choice is still open::

    round r = 0 .. R-1:   n_r = ceil(k / eta^r) candidates (the best of round r-1),
                          each fine-tuned from scratch for s_r = s_0 · eta^r steps
    R = ceil(log_eta k),  so the last round compares ceil(k / eta^(R-1)) ≤ eta candidates
    cost = s_0 · Σ_r n_r · eta^r  training steps  ≤  budget   (s_0 is the largest that fits)

e.g. ``k = 4, eta = 2, budget = 80``: 4 models × 10 steps, then the best 2 × 20 steps; the pick is the
lower held-out loss of the last round. Every probe run is a standard profiling job (``profiler.jobs``:
method ``full`` with the reference budget's batch, lr and warm-up, fewer steps, seed :data:`PROBE_SEED`),
so it is reproducible and becomes a :class:`~profiler.schema.ProfileRecord` with ``purpose = "probe"``:
the store keeps it (a repeated probe reuses it instead of training again), the matching graph does not
turn it into a performance edge (a 10-step loss is not on the scale of the reference budget's 80 steps).

:func:`halving_rounds` and :func:`successive_halving` are the policy, pure functions of a ``measure(model,
steps) -> loss`` callable: the planner's measures by running jobs, ``benchmarks/probe_budget.py`` by
looking up runs it made once, so the benchmark scores exactly the policy the product runs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: fine-tuning seed of probe jobs: not one of the reference's seeds (0, 1), so a probe on a catalog
#: dataset is not a prefix of a reference run it would then be scored against
PROBE_SEED = 2
PROBE_MODELS = 4       # default short-list size k
ETA = 2                # halving factor
MIN_STEPS = 5          # the first round's steps are at least the reference budget's warm-up


def halving_rounds(k: int, budget_steps: int, eta: int = ETA, min_steps: int = MIN_STEPS) -> list[tuple[int, int]]:
    """``[(n_r, s_r)]``: candidates and steps per candidate of each round of successive halving over ``k``
    short-listed models within ``budget_steps`` training steps (see the module docstring).

    When the budget cannot give ``k`` candidates ``min_steps`` each, ``k`` shrinks (the lowest-ranked
    candidates are dropped first) until it can; ``[]`` when not even two candidates fit (nothing to
    compare). Raises ``ValueError`` for ``k < 1``, ``eta < 2`` or a negative budget."""
    if k < 1 or eta < 2 or budget_steps < 0 or min_steps < 1:
        raise ValueError(f"need k ≥ 1, eta ≥ 2, budget ≥ 0 and min_steps ≥ 1 (got k={k}, eta={eta}, "
                         f"budget={budget_steps}, min_steps={min_steps})")
    for n in range(k, 1, -1):
        rounds = max(1, math.ceil(math.log(n, eta) - 1e-9))
        sizes = [math.ceil(n / eta ** r) for r in range(rounds)]
        s0 = budget_steps // sum(size * eta ** r for r, size in enumerate(sizes))
        if s0 >= min_steps:
            return [(size, s0 * eta ** r) for r, size in enumerate(sizes)]
    return []


def rounds_cost(rounds: Sequence[tuple[int, int]]) -> int:
    """Training steps a schedule of :func:`halving_rounds` spends."""
    return sum(n * s for n, s in rounds)


@dataclass
class ProbeOutcome:
    """What :func:`successive_halving` measured and chose.

    ``losses[model][steps]``: held-out loss after ``steps`` probe steps; ``order``: every short-listed model,
    best first (the last round's by loss, then each earlier round's eliminated ones by their loss, then the
    ones the budget dropped, in prior order); ``steps``: training steps spent."""

    rounds: list[tuple[int, int]]
    losses: dict[str, dict[int, float]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    steps: int = 0

    @property
    def best(self) -> str | None:
        return self.order[0] if self.order and self.losses else None


def successive_halving(ranked: Sequence[str], budget_steps: int, measure: Callable[[str, int], float],
                       k: int = PROBE_MODELS, eta: int = ETA, min_steps: int = MIN_STEPS) -> ProbeOutcome:
    """Run successive halving over the first ``k`` of ``ranked`` (the graph's order, best first).

    ``measure(model, steps)`` fine-tunes ``model`` for ``steps`` steps from its pretrained weights and
    returns the held-out loss (lower is better). Ties keep the prior's order, so a probe that cannot tell
    two models apart leaves the graph's choice standing."""
    short = list(dict.fromkeys(ranked))[:k]
    rounds = halving_rounds(len(short), budget_steps, eta, min_steps)
    out = ProbeOutcome(rounds=rounds)
    prior = {m: i for i, m in enumerate(short)}
    alive = short[: rounds[0][0]] if rounds else []
    dropped = short[len(alive):]
    eliminated: list[list[str]] = []
    for r, (n, steps) in enumerate(rounds):
        alive = alive[:n]
        for m in alive:
            out.losses.setdefault(m, {})[steps] = float(measure(m, steps))
            out.steps += steps
        alive.sort(key=lambda m: (out.losses[m][steps], prior[m]))
        keep = rounds[r + 1][0] if r + 1 < len(rounds) else 1
        eliminated.append(alive[keep:])
        alive = alive[:keep]
    out.order = alive + [m for group in reversed(eliminated) for m in group] + dropped
    if not rounds:
        out.order = short
    return out




# ------------------------------------------------------------------------------------------ running probes
class JobProbe:
    """``measure(model, steps)`` for :func:`successive_halving` that runs the probe as a profiling job.

    The job is ``ProfileJob(model, dataset, "full", profiler.reference.budget(steps), PROBE_SEED)``; a record of
    the same job already in ``store`` (a probe run before: the job is deterministic) is reused instead of
    training again, and a model's zero-shot loss, measured by its first job, is passed to its later ones
    (``run_job(zero_shot_loss=)``: one held-out evaluation fewer per later round). New records get
    ``purpose = "probe"`` and are added to ``store`` as each finishes, so an interrupted probe keeps what it
    measured. A job that fails scores ``inf`` (it is eliminated) and its
    error is kept in :attr:`errors`. ``log`` gets one line per job."""

    def __init__(self, dataset: str, store=None, device: str | None = None, log: Callable[[str], None] | None = None):
        self.dataset, self.store, self.device, self.log = dataset, store, device, log or (lambda line: None)
        self.records: list[dict] = []       # every probe record used (new and reused)
        self.new = 0
        self.errors: dict[str, str] = {}
        self.zero_shot: dict[str, float] = {}  # a model's pretrained loss: measured by its first job, reused after

    def job(self, model: str, steps: int):
        from profiler.reference import METHOD, budget
        from profiler.schema import ProfileJob

        return ProfileJob(model, self.dataset, METHOD, budget(steps), PROBE_SEED)

    def __call__(self, model: str, steps: int) -> float:
        job = self.job(model, steps)
        old = self.store.records(dataset=self.dataset, model=model) if self.store is not None else []
        rec = next((r for r in old if r.get("job_id") == job.job_id and r.get("status") == "ok"), None)
        if rec is not None:  # measured on other weights (a rebuilt zoo model keeps its name): measure again
            from profiler.jobs import model_fingerprint

            fp = model_fingerprint(model)
            if fp is not None and (rec.get("versions") or {}).get("model") not in (None, fp):
                rec = None
        if rec is not None:
            self.log(f"probe: {model}, {steps} steps: held-out loss {rec['metrics']['heldout_loss']:.4f} "
                     "(measured before, from the store)")
        else:
            from profiler.jobs import run_job

            self.log(f"probe: fine-tuning {model} for {steps} steps")
            # `full`'s zero-shot loss is seed- and step-free: a later round's job reuses the first one's
            # (run_job then skips that evaluation; the record is the same)
            r = run_job(job, device=self.device, zero_shot_loss=self.zero_shot.get(model))
            r.purpose = "probe"
            rec = r.to_dict()
            self.new += 1
            if self.store is not None:
                self.store.add_records([rec])
            if r.status != "ok":
                self.errors[model] = r.error or r.status
                self.log(f"probe: {model} failed ({self.errors[model]}); it is out of the running")
                self.records.append(rec)
                return math.inf
            self.log(f"probe: {model}, {steps} steps: held-out loss {r.metrics['heldout_loss']:.4f} "
                     f"({r.wall_s:.0f} s)")
        self.records.append(rec)
        zs = rec["metrics"].get("zero_shot_loss")
        if zs is not None:
            self.zero_shot.setdefault(model, float(zs))
        return float(rec["metrics"]["heldout_loss"])


__all__ = ["ETA", "JobProbe", "MIN_STEPS", "PROBE_MODELS", "PROBE_SEED", "ProbeOutcome", "halving_rounds", "rounds_cost",
           "successive_halving"]
