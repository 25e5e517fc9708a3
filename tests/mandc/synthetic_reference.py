"""A small synthetic reference (records, models, datasets lines per the issue-5 contract) for tests.

Importable as ``synthetic_reference`` from tests in tests/mandc (pytest puts a test file's folder on
sys.path). The matrix has a known structure a selector can learn from the features:

* ``F`` dataset families; a dataset's vector is its family centroid plus small noise, a "difficulty"
  ``h`` and a latent direction ``u`` (``D = dim + 1 + 4`` values).
* models have a pretraining mixture over the families, a capacity ``c`` (shows as ``log10_params``)
  and a latent ``a`` (shows as ``card_emb_*``).
* quality ``q(m, d) = 0.6·mix_m[f(d)] + 0.35·c_m·h_d + 0.25·⟨a_m, u_d⟩``; held-out loss
  ``base_d · exp(-q) · (1 + noise·ε_seed)``; zero-shot loss ``1.6·base_d · exp(-0.8·q) · (1 + 2·noise·ε')``.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np


def _job_id(job: dict) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def make_reference(n_families: int = 4, per_family: int = 5, n_profiled: int = 4, n_models: int = 6,
                   seeds=(0, 1), dim: int = 12, noise: float = 0.02, seed: int = 0):
    """``(records, models, datasets)``: ``n_families·per_family`` datasets (the first ``n_profiled`` of
    each family are profiled), ``n_models`` models, one ok record per (model, profiled dataset, seed)."""
    rng = np.random.default_rng(seed)
    fams = [f"fam{i}" for i in range(n_families)]
    centroids = rng.standard_normal((n_families, dim))
    datasets, latent = [], {}
    for fi, f in enumerate(fams):
        for j in range(per_family):
            h, u = float(rng.uniform(0, 1)), rng.standard_normal(4) / 2
            v = np.concatenate([centroids[fi] + 0.35 * rng.standard_normal(dim), [h], u])
            ref = f"builtin:{f}_{j}"
            datasets.append({"ref": ref, "name": f"{f}_{j}", "family": f, "vector": v.round(6).tolist(),
                             "feature_names": [f"v{i}" for i in range(dim)] + ["h"] + [f"u{i}" for i in range(4)]})
            latent[ref] = (fi, h, u, float(rng.uniform(0.05, 0.2)), j < n_profiled)
    models, mparams = [], {}
    for i in range(n_models):
        mix = np.zeros(n_families)
        if i % 3 == 2:  # a generalist
            mix[:] = 1.0 / n_families
        else:  # a specialist on one or two families
            mix[i % n_families] = 1.0
            if i % 2:
                mix[(i + 1) % n_families] = 0.5
            mix /= mix.sum()
        c, a = float(rng.uniform(0, 1)), rng.standard_normal(4) / 2
        feats = {"is_dit": float(i % 4 == 3), "log10_params": 5.0 + 2 * c, "depth": 2.0 + (i % 3), "width": 32.0 * (1 + i % 2),
                 **{f"mix_{f}": float(mix[k]) for k, f in enumerate(fams)}, **{f"card_emb_{k}": float(a[k]) for k in range(4)}}
        ref = f"zoo:synth-{i}"
        models.append({"ref": ref, "name": f"synth-{i}", "features": feats,
                       "info": {"family": "dit" if feats["is_dit"] else "unet", "mixture": dict(zip(fams, mix.tolist()))}})
        mparams[ref] = (mix, c, a)
    records = []
    for d in datasets:
        fi, h, u, base, profiled = latent[d["ref"]]
        if not profiled:
            continue
        for m in models:
            mix, c, a = mparams[m["ref"]]
            q = 0.6 * mix[fi] + 0.35 * c * h + 0.25 * float(a @ u)
            for s in seeds:
                job = {"model": m["ref"], "dataset": d["ref"], "method": "full", "config": {"steps": 30}, "seed": s}
                loss = base * np.exp(-q) * (1 + noise * rng.standard_normal())
                zs = 1.6 * base * np.exp(-0.8 * q) * (1 + 2 * noise * rng.standard_normal())
                records.append({"job_id": _job_id(job), "job": job, "status": "ok", "error": None,
                                "metrics": {"heldout_loss": float(loss), "zero_shot_loss": float(zs)},
                                "peak_mem_bytes": 1, "wall_s": 1.0, "train_s": 1.0, "versions": {}, "host": "synthetic",
                                "finished_at": "2025-01-01T00:00:00"})
    return records, models, datasets
