"""A small reference for the store and planner tests, with *real* dataset vectors.

Importable as ``planner_reference`` from tests in tests/mandc. Nine small catalog datasets (24 pairs,
3 families × 3; the first two of each family are profiled) with their real ``DatasetFeatures`` vectors,
so a folder of real images lands near its own family; four candidate models named after real zoo
models (not built in the test's ``$MANDC_HOME``), each a specialist of one family or a generalist.
Held-out loss ``base_d · exp(-q)``, ``q = mix_m[family(d)] + 0.02·ε`` per seed.
"""
from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

FAMILIES = ("shapes", "digits", "gradients")
DATASETS = {"shapes": ["shapes_circles", "shapes_squares", "shapes_triangles"],
            "digits": ["digits_low", "digits_high", "digits_inverted"],
            "gradients": ["gradients_linear", "gradients_grainy", "gradients_diagonal"]}
MODELS = {"zoo:unet-s-shapes": {"shapes": 1.0},
          "zoo:unet-s-digits": {"digits": 1.0},
          "zoo:dit-s-gradients": {"gradients": 1.0},
          "zoo:unet-s-broad": {"shapes": 1 / 3, "digits": 1 / 3, "gradients": 1 / 3}}
N_PAIRS = 24


def job_id(job: dict) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def dataset_lines() -> tuple[dict, ...]:
    from data import DatasetFeatures, load_builtin

    lines = []
    for fam, names in DATASETS.items():
        for name in names:
            ds = load_builtin(name, n=N_PAIRS)
            lines.append({"ref": f"builtin:{name}", "name": name, "family": fam,
                          "vector": DatasetFeatures.compute(ds).to_vector().astype(float).round(6).tolist(),
                          "feature_names": DatasetFeatures.feature_names()})
    return tuple(lines)


def model_lines() -> list[dict]:
    out = []
    for i, (ref, mix) in enumerate(MODELS.items()):
        feats = {"is_dit": float("dit" in ref), "log10_params": 5.0 + 0.3 * i, "depth": 3.0, "width": 64.0,
                 **{f"mix_{f}": float(mix.get(f, 0.0)) for f in FAMILIES}}
        out.append({"ref": ref, "name": ref[4:], "features": feats,
                    "info": {"family": "dit" if feats["is_dit"] else "unet", "mixture": mix}})
    return out


def record(model: str, dataset: str, seed: int, loss: float, zero_shot: float | None = None, status: str = "ok") -> dict:
    job = {"model": model, "dataset": dataset, "method": "full", "config": {"steps": 30}, "seed": seed}
    return {"job_id": job_id(job), "job": job, "status": status, "error": None if status == "ok" else "RuntimeError: boom",
            "metrics": {"heldout_loss": loss, "zero_shot_loss": zero_shot if zero_shot is not None else 1.5 * loss},
            "peak_mem_bytes": 1, "wall_s": 1.0, "train_s": 1.0, "versions": {}, "host": "test",
            "finished_at": "2025-01-01T00:00:00+00:00"}


def make_reference(seeds=(0, 1), seed: int = 0):
    """``(records, models, datasets)`` lists (fresh copies)."""
    rng = np.random.default_rng(seed)
    datasets = [dict(d) for d in dataset_lines()]
    records = []
    for fam, names in DATASETS.items():
        for j, name in enumerate(names[:2]):  # the third of each family is never profiled
            base = 0.1 + 0.02 * j
            for ref, mix in MODELS.items():
                for s in seeds:
                    q = mix.get(fam, 0.0) + 0.02 * rng.standard_normal()
                    records.append(record(ref, f"builtin:{name}", s, float(base * np.exp(-q))))
    return records, model_lines(), datasets


def write_reference(folder, reference=None):
    """Write ``(records, models, datasets)`` as the three JSONL files of a reference folder."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(("records", "models", "datasets"), reference or make_reference()):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
