"""The budgeted probe's policy (successive halving) on a fake measure, and the probe label of records."""
from __future__ import annotations

import pytest

from mandc.probing import halving_rounds, rounds_cost, successive_halving
from profiler.schema import ProfileJob, ProfileRecord


@pytest.mark.parametrize("k,budget,rounds", [
    (4, 80, [(4, 10), (2, 20)]),       # 4·10 + 2·20 = 80
    (3, 70, [(3, 10), (2, 20)]),
    (2, 20, [(2, 10)]),
    (4, 160, [(4, 20), (2, 40)]),
    (5, 95, [(5, 5), (3, 10), (2, 20)]),
    (4, 30, [(2, 15)]),                # too small for 4 or 3 at ≥ 5 steps: the two best-ranked
    (4, 9, []),                        # not even two models × 5 steps
    (1, 100, []),                      # one model: nothing to compare
])
def test_halving_rounds_fit_the_budget(k, budget, rounds):
    got = halving_rounds(k, budget)
    assert got == rounds and rounds_cost(got) <= budget


def test_halving_rounds_refuse_bad_arguments():
    for kw in ({"k": 0, "budget_steps": 10}, {"k": 2, "budget_steps": -1}, {"k": 2, "budget_steps": 10, "eta": 1}):
        with pytest.raises(ValueError, match="need k ≥ 1"):
            halving_rounds(**kw)


def test_successive_halving_keeps_the_best_half_and_orders_everyone():
    # loss falls with steps; c is the best at 20 steps although b leads at 10
    table = {("a", 10): 0.30, ("b", 10): 0.10, ("c", 10): 0.12, ("d", 10): 0.40,
             ("b", 20): 0.09, ("c", 20): 0.05}
    calls = []

    def measure(m, s):
        calls.append((m, s))
        return table[(m, s)]

    out = successive_halving(["a", "b", "c", "d", "e"], 80, measure, k=4)
    assert out.rounds == [(4, 10), (2, 20)] and out.steps == 80
    assert calls == [("a", 10), ("b", 10), ("c", 10), ("d", 10), ("b", 20), ("c", 20)]
    # last round by loss, then the first round's eliminated by loss; e was never short-listed
    assert out.order == ["c", "b", "a", "d"] and out.best == "c"
    assert out.losses["c"] == {10: 0.12, 20: 0.05} and "e" not in out.losses


def test_ties_keep_the_prior_order_and_a_tiny_budget_probes_nothing():
    out = successive_halving(["x", "y"], 10, lambda m, s: 0.2, k=2)
    assert out.order == ["x", "y"] and out.rounds == [(2, 5)]
    none = successive_halving(["x", "y", "z"], 4, lambda m, s: pytest.fail("must not run"), k=3)
    assert none.rounds == [] and none.best is None and none.order == ["x", "y", "z"]


def test_probe_purpose_round_trips_and_old_records_are_unchanged():
    job = ProfileJob("zoo:a", "builtin:b", "full", {"steps": 5}, 2)
    plain = ProfileRecord(job_id=job.job_id, job=job, status="ok", metrics={"heldout_loss": 0.1})
    assert "purpose" not in plain.to_dict()          # records written before the field read and write the same
    probe = ProfileRecord(job_id=job.job_id, job=job, status="ok", metrics={"heldout_loss": 0.1}, purpose="probe")
    assert ProfileRecord.from_dict(probe.to_dict()).purpose == "probe"
    with pytest.raises(ValueError, match="purpose must be one of"):
        ProfileRecord(job_id=job.job_id, job=job, status="ok", purpose="guess")


def test_graph_ignores_probe_records():
    from mandc.graph import MatchingGraph

    models = [{"ref": "m1", "features": {"params": 1.0}}, {"ref": "m2", "features": {"params": 2.0}}]
    datasets = [{"ref": "d", "vector": [0.0, 1.0], "family": "f"}, {"ref": "e", "vector": [1.0, 0.0], "family": "f"}]
    recs = []
    for purpose, loss in (("profile", 0.1), ("probe", 0.05)):
        job = ProfileJob("m1", "d", "full", {"steps": 80 if purpose == "profile" else 5}, 2)
        recs.append(ProfileRecord(job_id=job.job_id, job=job, status="ok", metrics={"heldout_loss": loss},
                                  purpose=purpose).to_dict())
    g = MatchingGraph.from_reference(recs, models, datasets, k=1)
    assert g.raw("d") == {"m1": 0.1}   # the 5-step probe's 0.05 is not a performance measurement
    assert list(g.runs("d")["m1"]) and len(g.runs("d")["m1"]) == 1


def test_job_probe_reuses_a_models_zero_shot_loss_in_later_rounds(monkeypatch):
    """The second round's job of a model gets the first job's zero-shot loss (run_job then skips that
    evaluation); another model measures its own."""
    import profiler.jobs
    from mandc.probing import JobProbe

    seen = []

    def fake_run_job(job, device=None, zero_shot_loss=None):
        seen.append((job.model, job.config["steps"], zero_shot_loss))
        zs = 0.5 if zero_shot_loss is None else zero_shot_loss
        return ProfileRecord(job_id=job.job_id, job=job, status="ok",
                             metrics={"heldout_loss": 0.4 - 0.01 * job.config["steps"], "zero_shot_loss": zs})

    monkeypatch.setattr(profiler.jobs, "run_job", fake_run_job)
    probe = JobProbe("builtin:b")
    out = successive_halving(["m1", "m2", "m3", "m4"], 80, probe, k=4)
    assert out.rounds == [(4, 10), (2, 20)] and probe.new == 6
    assert [z for m, s, z in seen if s == 10] == [None] * 4       # each model's first job measures it
    assert [z for m, s, z in seen if s == 20] == [0.5, 0.5]       # the survivors reuse it
    assert all(r["purpose"] == "probe" for r in probe.records)
