"""Where a matching graph comes from, and the one path by which measurements enter it.

:func:`open_graph` resolves a graph source — ``None`` (the default store, ``$MANDC_HOME/graph.sqlite``), a
:class:`~mandc.store.Store`, a :class:`~mandc.graph.MatchingGraph`, or a path (an SQLite store file, a
store export or a ``MatchingGraph.to_json()``) — to a Store or a MatchingGraph. :func:`feed` adds
measured ProfileRecords to it; :class:`~mandc.planner.Planner` (``Planner.feedback``), ``mandc run``
(:func:`mandc.run.run_plan`), ``mandc profile`` and ``mandc finetune --feedback`` all go through it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from mandc.store import Store, StoreError


def dataset_key(ref) -> str:
    """The graph's name for a dataset (or model) reference: ``builtin:NAME`` as is, a folder as its absolute
    path (so ``./data`` and ``/home/me/data`` are one node)."""
    s = os.fspath(ref)
    if s.startswith("builtin:") or s.startswith("records:"):
        return s
    p = Path(s).expanduser()
    return str(p.resolve()) if p.exists() else s


def open_graph(src=None):
    """The Store or MatchingGraph that ``src`` names (see the module docstring). A JSON store export is
    read into an in-memory store: what is fed into it is not written back to the file."""
    if src is None:
        return Store()
    if isinstance(src, Store) or (hasattr(src, "G") and hasattr(src, "scores")):
        return src
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"a graph source is a Store, a MatchingGraph, a path or None, got {type(src).__name__}")
    path = Path(src).expanduser()
    if not path.is_file():
        raise StoreError(f"graph file {path} does not exist (give an SQLite store or a JSON export)")
    if path.suffix.lower() != ".json":
        return Store(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
        raise StoreError(f"cannot read graph JSON {path}: {why}") from None
    fmt = d.get("format") if isinstance(d, dict) else None
    if fmt == "mandc.MatchingGraph":
        from mandc.graph import MatchingGraph

        try:
            return MatchingGraph.from_json(d)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise StoreError(f"{path}: malformed graph JSON ({type(e).__name__}: {e})") from None
    if fmt == "mandc.Store":
        store = Store(":memory:", reference=False)
        store.import_json(path)  # its errors name the file
        return store
    raise StoreError(f"{path} is neither a store export (format 'mandc.Store') nor a graph JSON "
                     f"(format 'mandc.MatchingGraph')")


def graph_of(target, k: int):
    """A copy of the matching graph of ``target`` (a Store: built with ``k`` similarity edges per dataset)."""
    return target.graph(k) if isinstance(target, Store) else target.copy()


def feed(target, records) -> int:
    """Add measured ProfileRecords (one dict or a list, ``profiler.jobs`` format) to ``target`` (a Store or
    a MatchingGraph); returns how many. A dataset or model the graph does not know is added first (dataset
    features computed from the data, the model line from ``profiler.modelinfo.describe_model``) — only for
    records with status ``ok``: a failed record is history and adds no node. Dataset and folder-model
    references are keyed by :func:`dataset_key`. A MatchingGraph is updated in memory only."""
    records = [records] if isinstance(records, dict) else list(records)
    recs = []
    for r in records:
        if not isinstance(r, dict) or not isinstance(r.get("job"), dict):
            raise ValueError("feedback takes ProfileRecord dicts (with 'job_id', 'job', 'status', 'metrics'), "
                             f"got {str(r)[:120]}")
        rec = json.loads(json.dumps(r))  # our own copy
        rec["job"]["dataset"] = dataset_key(rec["job"].get("dataset", ""))
        rec["job"]["model"] = dataset_key(rec["job"].get("model", ""))  # a folder model: its absolute path too
        recs.append(rec)
    store = target if isinstance(target, Store) else None
    known_models = {m["ref"] for m in store.models()} if store is not None else set(target.models)
    known_data = {d["ref"] for d in store.datasets()} if store is not None else set(target.datasets)
    # nodes only for what becomes a performance edge: a probe record (mandc.probing) is kept as history
    ok = [r for r in recs if r.get("status") == "ok" and r.get("purpose", "profile") == "profile"]
    for model in dict.fromkeys(r["job"]["model"] for r in ok if r["job"]["model"] not in known_models):
        from profiler.modelinfo import describe_model

        line = describe_model(model)
        if store is not None:
            store.add_model(model, line["features"], line["info"], name=line["name"])
        else:
            target.add_model(model, line["features"], line["info"])
    for ds_ref in dict.fromkeys(r["job"]["dataset"] for r in ok if r["job"]["dataset"] not in known_data):
        from data import DatasetFeatures, load_dataset

        ds = load_dataset(ds_ref)
        vec = DatasetFeatures.compute(ds).to_vector()
        if store is not None:
            store.add_dataset(ds_ref, vec, family=ds.family, name=ds.name)
        else:
            target.add_dataset(ds_ref, vec, family=ds.family)
    if store is not None:
        return store.add_records(recs)
    target.add_records(ok)
    return len(recs)
