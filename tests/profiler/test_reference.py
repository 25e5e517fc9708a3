"""The reference campaign's job list and matrix summary (the campaign itself is run by its script)."""
from __future__ import annotations

from profiler.reference import BUDGET, STEPS, budget, matrix_summary, profiled_datasets, reference_jobs


def test_profiled_datasets_are_the_first_four_of_each_family():
    from data.catalog import families, list_catalog

    ds = profiled_datasets()
    assert len(ds) == 32 == len(set(ds))
    for fam in families():
        assert [d for d in ds if d[len("builtin:"):] in {e.name for e in list_catalog(fam)}] == \
            [f"builtin:{e.name}" for e in list_catalog(fam)[:4]]


def test_reference_jobs_cover_zoo_datasets_seeds():
    from finetune.zoo import list_zoo

    jobs = reference_jobs(seeds=2)
    assert len(jobs) == len(list_zoo()) * 32 * 2 == len({j.job_id for j in jobs})
    j = jobs[0]
    assert j.method == "full" and j.config == budget() == {"steps": STEPS, **BUDGET}
    assert set(BUDGET) == {"batch_size", "lr", "warmup_steps"}
    assert budget(12) == {"steps": 12, **BUDGET}
    assert [x.model for x in jobs[:64]] == [j.model] * 64  # model-major: workers keep a model cached


def test_matrix_summary():
    def rec(m, d, s, loss, status="ok"):
        return {"status": status, "job": {"model": m, "dataset": d, "seed": s}, "metrics": {"heldout_loss": loss},
                "wall_s": 2.0}

    recs = [rec("a", "x", 0, 0.1), rec("a", "x", 1, 0.3), rec("b", "x", 0, 0.15), rec("b", "x", 1, 0.2),
            rec("a", "y", 0, 0.5), rec("b", "y", 0, 0.4), rec("b", "y", 1, 0.0, status="failed")]
    m = matrix_summary(recs)
    assert m["winners"] == {"x": "b", "y": "b"}  # means over seeds: x: a 0.2 vs b 0.175
    assert m["max_winner_share"] == 1.0 and m["distinct_winners"] == 1
    assert m["job_s"]["a"] == {"mean": 2.0, "n": 3}
