"""The shipped reference: profiling records of the zoo on the catalog, the embedded default graph.

Three JSON Lines files beside this module, written by ``python -m profiler.reference --out data/reference``
(the command, its runtime and the fine-tuning budget are in ``README.md`` here):

- ``records.jsonl``  — one :class:`profiler.jobs.ProfileRecord` per line (model × dataset × seed);
- ``models.jsonl``   — one line per zoo model: ``{"ref", "name", "features": {str: float}, "info": {...}}``;
- ``datasets.jsonl`` — one line per catalog dataset (profiled or not): ``{"ref", "name", "family",
  "profiled", "vector": [45 floats], "feature_names": [45 str]}``.

Reading needs only the standard library (no torch, no numpy), so ``mandc recommend`` starts fast.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FILES = ("records.jsonl", "models.jsonl", "datasets.jsonl")


def reference_dir() -> Path:
    """The folder of the shipped reference (this package's folder)."""
    return Path(__file__).resolve().parent


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def load_reference(path: str | os.PathLike | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """``(records, models, datasets)`` from ``path`` (default: the shipped reference), as plain dicts.

    Raises ``FileNotFoundError`` naming the missing file and how to regenerate it, and ``ValueError``
    naming the file and line of a malformed row.
    """
    folder = Path(path) if path is not None else reference_dir()
    out = []
    for name in FILES:
        p = folder / name
        if not p.is_file():
            raise FileNotFoundError(f"reference file {p} is missing; regenerate the reference with "
                                    f"`python -m profiler.reference --out {folder}`")
        out.append(_read_jsonl(p))
    records, models, datasets = out
    for i, r in enumerate(records, 1):
        if "job_id" not in r or "job" not in r or "status" not in r:
            raise ValueError(f"{folder / 'records.jsonl'}:{i}: a record needs 'job_id', 'job' and 'status'")
    return records, models, datasets


def reference_hash(path: str | os.PathLike | None = None) -> str:
    """SHA-256 (first 16 hex digits) over the three files' bytes: changes whenever the reference does."""
    folder = Path(path) if path is not None else reference_dir()
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode())
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


__all__ = ["FILES", "load_reference", "reference_dir", "reference_hash"]
