"""The persistent matching-graph store: one SQLite file, ``$MANDC_HOME/graph.sqlite`` by default.

It holds the *inputs* of a :class:`~mandc.graph.MatchingGraph` — model lines, dataset lines and
ProfileRecords — and builds the graph from them on demand (:meth:`Store.graph`), so the graph's own
derived quantities (normalised scores, similarity edges) are never stored and can never go stale.

Tables (every JSON column is canonical JSON text)::

    meta      (key TEXT PRIMARY KEY, value TEXT)          format, schema, reference origin and hash, feature names
    models    (ref TEXT PRIMARY KEY, name, features JSON {str: float}, info JSON, source)
    datasets  (ref TEXT PRIMARY KEY, name, vector JSON [D floats], family, source)
    records   (job_id TEXT PRIMARY KEY, model, dataset, status, record JSON (a ProfileRecord), source, added_at)
    lineage   (model, base, relation)                    typed edges model -> base: finetune/adapter/merge/quantized
    hub_repos (repo_id TEXT PRIMARY KEY, sha, last_modified, status, reason, node, info JSON, crawled_at)
                                                         the Hub crawl's state per repo (``mandc.hub``)

``lineage`` and ``hub_repos`` are created on open in stores that predate them (additive, same schema).

``source`` is ``'reference'`` for rows seeded from a reference (the shipped one in ``data/reference``
by default) and ``'user'`` for everything added later (:meth:`Store.add_records`, ``Planner.feedback``).

**Seeding.** On first use the store is seeded from its reference. The reference's content hash is kept in
``meta``; when it changes (a newer mandc ships a newer reference) the reference rows are replaced in one
transaction and the user rows are kept. Where a user row and a reference row share a key, the user row
wins: it is the user's own measurement.

Every write is one transaction (``BEGIN IMMEDIATE``, so concurrent writers wait instead of failing
half-way); :meth:`Store.transaction` groups several writes into one.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.util
import json
import math
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from data.io import atomic_write, canonical_json, mandc_home
from profiler.schema import STATUSES

STORE_FORMAT = "mandc.Store"   # meta 'format' and the export's "format"
SCHEMA_VERSION = 1
SOURCES = ("reference", "user")
DEFAULT_K = 5                  # similarity edges per dataset (the spec's k≈5)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (ref TEXT PRIMARY KEY, name TEXT NOT NULL, features TEXT NOT NULL, info TEXT NOT NULL,
                     source TEXT NOT NULL CHECK (source IN ('reference', 'user')));
CREATE TABLE datasets (ref TEXT PRIMARY KEY, name TEXT NOT NULL, vector TEXT NOT NULL, family TEXT,
                       source TEXT NOT NULL CHECK (source IN ('reference', 'user')));
CREATE TABLE records (job_id TEXT PRIMARY KEY, model TEXT NOT NULL, dataset TEXT NOT NULL, status TEXT NOT NULL,
                      record TEXT NOT NULL, source TEXT NOT NULL CHECK (source IN ('reference', 'user')),
                      added_at TEXT NOT NULL);
CREATE INDEX records_dataset ON records (dataset);
"""
_TABLES = ("meta", "models", "datasets", "records")
# Added later; created on open where missing, so older stores keep working unchanged.
_HUB_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage (model TEXT NOT NULL, base TEXT NOT NULL, relation TEXT NOT NULL,
                                    PRIMARY KEY (model, base));
CREATE TABLE IF NOT EXISTS hub_repos (repo_id TEXT PRIMARY KEY, sha TEXT, last_modified TEXT, status TEXT NOT NULL,
                                      reason TEXT, node TEXT, info TEXT NOT NULL, crawled_at TEXT NOT NULL);
"""
LINEAGE_RELATIONS = ("finetune", "adapter", "merge", "quantized")
_DATASET_COLS = "ref, name, vector, family, source"


class StoreError(RuntimeError):
    """A store file that cannot be used (corrupt, foreign, newer schema) or bad rows given to it."""


def default_path() -> Path:
    """``$MANDC_HOME/graph.sqlite``."""
    return mandc_home() / "graph.sqlite"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- reference
def _by_model(lineage: list[dict]) -> dict[str, list[dict]]:
    """Lineage rows ``{"model", "base", "relation"}`` grouped as :meth:`Store.set_lineage` takes them."""
    out: dict[str, list[dict]] = {}
    for e in lineage:
        out.setdefault(e["model"], []).append({"base": e["base"], "relation": e["relation"]})
    return out


def load_reference_dir(folder) -> tuple[list[dict], list[dict], list[dict]]:
    """``(records, models, datasets)`` from a folder with ``records.jsonl``, ``models.jsonl`` and
    ``datasets.jsonl`` (the layout of ``data/reference``), errors as :class:`StoreError`."""
    from data.reference import load_reference

    try:
        return load_reference(folder)
    except (OSError, ValueError) as e:
        raise StoreError(str(e)) from None


def shipped_reference_dir() -> Path | None:
    """``data/reference``, found without importing the ``data`` package (whose import pulls in torch:
    opening the store must stay fast)."""
    spec = importlib.util.find_spec("data")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "reference"


def shipped_reference_hash() -> str | None:
    """sha256 over the shipped reference files' bytes (cheap: no parsing), or None while the package
    has none."""
    folder = shipped_reference_dir()
    files = [folder / f"{n}.jsonl" for n in ("records", "models", "datasets")] if folder is not None else []
    if not files or not all(f.is_file() for f in files):
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return "shipped:" + h.hexdigest()


def reference_hash(reference: tuple[list[dict], list[dict], list[dict]]) -> str:
    """sha256 of the canonical JSON of ``(records, models, datasets)``."""
    return hashlib.sha256(canonical_json(list(reference)).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ store
class Store:
    """The SQLite store of the matching graph's models, datasets and ProfileRecords.

    Args:
        path: the SQLite file (default :func:`default_path`); ``":memory:"`` for a throw-away store.
            Parent folders are created.
        reference: what to seed from — ``None``: the shipped reference (``data/reference``), re-seeded
            whenever its files change;
            a folder with the three JSONL files; a ``(records, models, datasets)`` tuple; ``False``: no
            seeding (an empty store, e.g. to :meth:`import_json` into). A store seeded from an explicit
            reference, or created empty with ``False``, is not seeded from the shipped one when it is
            later opened with ``None``.

    Raises :class:`StoreError` for a file that is not a mandc store (not SQLite, another program's
    database, or a newer schema), naming the file.
    """

    def __init__(self, path=None, reference=None):
        self.path = default_path() if path is None else path if str(path) == ":memory:" else Path(path).expanduser()
        self._imported_from: str | None = None  # the export a ":memory:" store was filled from (import_json)
        if self.path != ":memory:":
            if self.path.is_file() and self.path.stat().st_size == 0:  # SQLite would silently seed it
                raise StoreError(f"{self.path} is an empty file, not a mandc graph store; delete it to have mandc "
                                 f"create a store there, or give another path (--graph)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._depth = 0
        self._graph_cache: tuple[str, int, object] | None = None
        self._hash_cache: tuple[tuple[int, int], str] | None = None  # ((total_changes, data_version), hash)
        try:
            self._con = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self._con.execute("PRAGMA foreign_keys = ON")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a usable mandc graph store (SQLite: {e}); move it away "
                             f"or give another path (--graph)") from None
        self._seed(reference)

    # ------------------------------------------------------------------ connection and transactions
    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        n = self.counts()
        return (f"Store({str(self.path)!r}: {n['models']} models, {n['datasets']} datasets, "
                f"{n['records']} records ({n['user_records']} user))")

    @contextlib.contextmanager
    def transaction(self):
        """Group writes into one atomic transaction (nested calls join the outer one)."""
        if self._depth == 0:
            self._con.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield self
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._con.execute("ROLLBACK")
            raise
        self._depth -= 1
        if self._depth == 0:
            self._con.execute("COMMIT")

    def _init_schema(self) -> None:
        tables = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            with self.transaction():
                for stmt in filter(str.strip, _SCHEMA.split(";")):  # not executescript: it would COMMIT
                    self._con.execute(stmt)
                self._set_meta("format", STORE_FORMAT)
                self._set_meta("schema", SCHEMA_VERSION)
                self._set_meta("created_at", _now())
                self._set_meta("reference_origin", None)
                self._set_meta("reference_hash", None)
                self._set_meta("feature_names", None)
            self._init_hub_tables()
            return
        fmt = None
        if "meta" in tables:
            row = self._con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            fmt = json.loads(row[0]) if row else None
        if fmt != STORE_FORMAT or not set(_TABLES) <= tables:
            raise StoreError(f"{self.path} is an SQLite database but not a mandc graph store (tables: "
                             f"{', '.join(sorted(tables))}); give another path")
        schema = self._meta("schema")
        if schema != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has store schema {schema}, this mandc reads schema {SCHEMA_VERSION}; "
                             f"upgrade mandc, or export it with the mandc that wrote it")
        self._init_hub_tables()

    def _init_hub_tables(self) -> None:
        if {"lineage", "hub_repos"} <= {r[0] for r in self._con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}:
            return
        with self.transaction():
            for stmt in filter(str.strip, _HUB_SCHEMA.split(";")):
                self._con.execute(stmt)

    def _meta(self, key: str):
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def _set_meta(self, key: str, value) -> None:
        self._con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, canonical_json(value)))

    # ------------------------------------------------------------------ seeding
    @property
    def reference_origin(self) -> str | None:
        """``"shipped"``, ``"custom"`` (an explicit reference), ``"none"`` (created with ``reference=False``)
        or None (not seeded yet: nothing shipped when it was opened)."""
        return self._meta("reference_origin")

    @property
    def reference_hash(self) -> str | None:
        return self._meta("reference_hash")

    def _seed(self, reference) -> None:
        if reference is False:
            if self.reference_origin is None:  # made empty on purpose: never seed it from the shipped one
                with self.transaction():
                    self._set_meta("reference_origin", "none")
            return
        if reference is None:
            if self.reference_origin in ("custom", "none"):
                return  # a store seeded from a chosen reference (or made empty on purpose) keeps it
            h = shipped_reference_hash()  # hashing the files is cheaper than parsing them on every open
            if h is None or (h == self.reference_hash and self.reference_origin == "shipped"):
                return  # nothing shipped yet (seed when it appears), or already seeded from this one
            self.reseed(load_reference_dir(shipped_reference_dir()), origin="shipped", hash_=h)
            return
        ref = load_reference_dir(reference) if isinstance(reference, (str, os.PathLike)) else tuple(reference)
        if len(ref) != 3:
            raise StoreError("a reference is (records, models, datasets)")
        h = reference_hash(ref)
        if h != self.reference_hash or self.reference_origin != "custom":
            self.reseed(ref, origin="custom", hash_=h)

    def reseed(self, reference: tuple[list[dict], list[dict], list[dict]], origin: str = "custom",
               hash_: str | None = None) -> None:
        """Replace every reference row with ``reference``'s, keeping user rows (which win on a shared key)."""
        records, models, datasets = reference
        with self.transaction():
            for table in ("records", "models", "datasets"):
                self._con.execute(f"DELETE FROM {table} WHERE source = 'reference'")
            self._put_models(models, "reference", replace=False)
            self._put_datasets(datasets, "reference", replace=False)
            self._put_records(records, "reference", replace=False)
            self._set_meta("reference_origin", origin)
            self._set_meta("reference_hash", hash_ or reference_hash(reference))
            self._set_meta("seeded_at", _now())

    # ------------------------------------------------------------------ writing
    def add_records(self, records: Iterable[dict], source: str = "user") -> int:
        """Insert (or replace, by ``job_id``) ProfileRecords; returns how many. Failed records are kept
        too (they are the campaign's history), the graph uses only ``status == "ok"`` ones."""
        with self.transaction():
            return self._put_records(list(records), source, replace=True)

    def add_dataset(self, ref: str, vector, family: str | None = None, name: str | None = None,
                    source: str = "user") -> None:
        """Insert or replace a dataset node's line (``vector`` = ``DatasetFeatures.to_vector()``)."""
        vec = vector.tolist() if hasattr(vector, "tolist") else list(vector)
        with self.transaction():
            self._put_datasets([{"ref": ref, "name": name, "vector": vec, "family": family}], source, replace=True)

    def add_model(self, ref: str, features: dict, info: dict | None = None, name: str | None = None,
                  source: str = "user") -> None:
        """Insert or replace a candidate model's line (``features`` from ``profiler.modelinfo.model_features``)."""
        with self.transaction():
            self._put_models([{"ref": ref, "name": name, "features": features, "info": info or {}}], source,
                             replace=True)

    def _verb(self, replace: bool) -> str:
        return "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"

    def _check_source(self, source: str) -> None:
        if source not in SOURCES:
            raise StoreError(f"source must be one of {SOURCES}, got {source!r}")

    def _put_models(self, models: list[dict], source: str, replace: bool) -> int:
        self._check_source(source)
        rows = []
        for m in models:
            ref = m.get("ref") if isinstance(m, dict) else None
            if not isinstance(ref, str) or not ref:
                raise StoreError(f"model line without a ref: {str(m)[:120]}")
            feats = m.get("features") or {}
            bad = {k: v for k, v in feats.items() if not isinstance(v, (int, float)) or not math.isfinite(v)}
            if bad:
                raise StoreError(f"model {ref}: features must be finite numbers, got {bad}")
            name = m.get("name") or ref.split(":", 1)[-1]
            feats = canonical_json({k: float(v) for k, v in feats.items()})
            rows.append((ref, name, feats, canonical_json(m.get("info") or {}), source))
        self._con.executemany(f"{self._verb(replace)} INTO models VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def _put_datasets(self, datasets: list[dict], source: str, replace: bool) -> int:
        self._check_source(source)
        names = self._meta("feature_names")
        given = next((d.get("feature_names") for d in datasets if isinstance(d, dict) and d.get("feature_names")), None)
        if given is not None:
            if names is not None and list(given) != names and self.counts()["datasets"]:
                raise StoreError(f"dataset feature names differ from the store's ({len(given)} vs {len(names)} "
                                 f"names); the store was built with another DatasetFeatures version")
            names = list(given)
            self._set_meta("feature_names", names)
        dim = len(names) if names is not None else None
        rows = []
        for d in datasets:
            ref = d.get("ref") if isinstance(d, dict) else None
            if not isinstance(ref, str) or not ref:
                raise StoreError(f"dataset line without a ref: {str(d)[:120]}")
            vec = d.get("vector")
            if not isinstance(vec, list) or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in vec):
                raise StoreError(f"dataset {ref}: vector must be a list of finite numbers")
            if dim is None:
                dim = len(vec)
            if len(vec) != dim:
                raise StoreError(f"dataset {ref}: vector has {len(vec)} values, the store's have {dim}")
            name = d.get("name") or ref.split(":", 1)[-1]
            rows.append((ref, name, canonical_json([float(x) for x in vec]), d.get("family"), source))
        self._con.executemany(f"{self._verb(replace)} INTO datasets VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def _put_records(self, records: list[dict], source: str, replace: bool) -> int:
        self._check_source(source)
        rows, now = [], _now()
        for r in records:
            job = r.get("job") if isinstance(r, dict) else None
            if not isinstance(job, dict) or not r.get("job_id") or not job.get("model") or not job.get("dataset"):
                raise StoreError(f"not a ProfileRecord (needs job_id, job.model, job.dataset): {str(r)[:160]}")
            status = r.get("status")
            if status not in STATUSES:  # did_not_fit and failed are history; the graph uses ok ones
                raise StoreError(f"record {r['job_id']}: status must be one of {', '.join(STATUSES)}, got {status!r}")
            try:
                text = canonical_json(r)
            except ValueError:
                raise StoreError(f"record {r['job_id']}: has NaN or infinite numbers (JSON cannot hold them)") from None
            rows.append((str(r["job_id"]), job["model"], job["dataset"], status, text, source, now))
        self._con.executemany(f"{self._verb(replace)} INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def remove_model(self, ref: str) -> bool:
        """Delete a model's line and its lineage edges (its records stay: they are history); True if it existed."""
        with self.transaction():
            self._con.execute("DELETE FROM lineage WHERE model = ?", (ref,))
            return self._con.execute("DELETE FROM models WHERE ref = ?", (ref,)).rowcount > 0

    def set_lineage(self, model: str, edges: Iterable[dict]) -> int:
        """Replace ``model``'s lineage with ``edges`` ``[{"base": ref, "relation": one of LINEAGE_RELATIONS}]``."""
        rows = []
        for e in edges:
            if e.get("relation") not in LINEAGE_RELATIONS or not isinstance(e.get("base"), str) or not e["base"]:
                raise StoreError(f"lineage edge of {model}: need a base ref and a relation in {LINEAGE_RELATIONS}, "
                                 f"got {e}")
            rows.append((model, e["base"], e["relation"]))
        with self.transaction():
            self._con.execute("DELETE FROM lineage WHERE model = ?", (model,))
            self._con.executemany("INSERT OR REPLACE INTO lineage VALUES (?, ?, ?)", rows)
        return len(rows)

    def lineage(self, model: str | None = None) -> list[dict]:
        """Lineage edges ``{"model", "base", "relation"}`` (all, or of one model), sorted."""
        q, args = "SELECT model, base, relation FROM lineage", ()
        if model is not None:
            q, args = q + " WHERE model = ?", (model,)
        return [{"model": m, "base": b, "relation": r} for m, b, r in self._con.execute(q + " ORDER BY model, base", args)]

    def put_hub_repo(self, row: dict) -> None:
        """Insert or replace one repo's crawl state ``{"repo_id", "sha", "last_modified", "status" ("ok" or
        "skipped"), "reason", "node" (the model ref it became, or None), "info"}``."""
        if row.get("status") not in ("ok", "skipped") or not row.get("repo_id"):
            raise StoreError(f"hub repo row needs a repo_id and status ok/skipped, got {str(row)[:120]}")
        with self.transaction():
            self._con.execute("INSERT OR REPLACE INTO hub_repos VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (row["repo_id"], row.get("sha"), row.get("last_modified"), row["status"],
                               row.get("reason"), row.get("node"), canonical_json(row.get("info") or {}), _now()))

    def hub_repo(self, repo_id: str) -> dict | None:
        """One repo's crawl state (see :meth:`put_hub_repo`, plus ``crawled_at``), or None."""
        rows = self.hub_repos(repo_id=repo_id)
        return rows[0] if rows else None

    def hub_repos(self, status: str | None = None, repo_id: str | None = None) -> list[dict]:
        """Crawl states of every crawled repo (or of one status / one repo), by repo id."""
        conds, args = [], []
        for col, val in (("status", status), ("repo_id", repo_id)):
            if val is not None:
                conds.append(f"{col} = ?")
                args.append(val)
        q = "SELECT repo_id, sha, last_modified, status, reason, node, info, crawled_at FROM hub_repos"
        q += (" WHERE " + " AND ".join(conds) if conds else "") + " ORDER BY repo_id"
        return [{"repo_id": r, "sha": s, "last_modified": lm, "status": st, "reason": why, "node": n,
                 "info": json.loads(i), "crawled_at": at} for r, s, lm, st, why, n, i, at in self._con.execute(q, args)]

    # ------------------------------------------------------------------ reading
    def models(self) -> list[dict]:
        """Model lines ``{"ref", "name", "features", "info", "source"}`` (reference order, then user)."""
        rows = self._con.execute("SELECT ref, name, features, info, source FROM models ORDER BY rowid")
        return [{"ref": r, "name": n, "features": json.loads(f), "info": json.loads(i), "source": s}
                for r, n, f, i, s in rows]

    def datasets(self) -> list[dict]:
        """Dataset lines ``{"ref", "name", "vector", "family", "source"}``; the first carries ``feature_names``."""
        rows = [{"ref": r, "name": n, "vector": json.loads(v), "family": f, "source": s}
                for r, n, v, f, s in self._con.execute(f"SELECT {_DATASET_COLS} FROM datasets ORDER BY rowid")]
        names = self._meta("feature_names")
        if rows and names is not None:
            rows[0]["feature_names"] = names
        return rows

    def records(self, source: str | None = None, dataset: str | None = None, model: str | None = None) -> list[dict]:
        """ProfileRecords (all, or of one source / one dataset / one model), in insertion order."""
        q, args = "SELECT record FROM records", []
        conds = []
        if model is not None:
            conds.append("model = ?")
            args.append(model)
        if source is not None:
            conds.append("source = ?")
            args.append(source)
        if dataset is not None:
            conds.append("dataset = ?")
            args.append(dataset)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        return [json.loads(r[0]) for r in self._con.execute(q + " ORDER BY rowid", args)]

    def dataset(self, ref: str) -> dict | None:
        """One dataset line, or None."""
        row = self._con.execute(f"SELECT {_DATASET_COLS} FROM datasets WHERE ref = ?", (ref,)).fetchone()
        return None if row is None else {"ref": row[0], "name": row[1], "vector": json.loads(row[2]),
                                         "family": row[3], "source": row[4]}

    def has_model(self, ref: str) -> bool:
        return self._con.execute("SELECT 1 FROM models WHERE ref = ?", (ref,)).fetchone() is not None

    def counts(self) -> dict[str, int]:
        c = lambda q: self._con.execute(q).fetchone()[0]  # noqa: E731
        return {"models": c("SELECT COUNT(*) FROM models"), "datasets": c("SELECT COUNT(*) FROM datasets"),
                "records": c("SELECT COUNT(*) FROM records"),
                "user_records": c("SELECT COUNT(*) FROM records WHERE source = 'user'"),
                "profiled": c("SELECT COUNT(DISTINCT dataset) FROM records WHERE status = 'ok'")}

    def content_hash(self) -> str:
        """sha256 over every model, dataset, record and lineage row (not the meta table, not probe records: they
        are not part of the graph): equal contents, equal hash.
        It keys the planner's cache of fitted selectors. Kept until this connection writes a row or another
        connection commits (``total_changes``, ``PRAGMA data_version``): on 100k records hashing takes seconds."""
        stamp = (self._con.total_changes, self._con.execute("PRAGMA data_version").fetchone()[0])
        if self._hash_cache is not None and self._hash_cache[0] == stamp:
            return self._hash_cache[1]
        h = hashlib.sha256()
        for table, cols in (("models", "ref, features, info"), ("datasets", "ref, vector, family"),
                            ("records", "job_id, record")):
            h.update(table.encode())
            # probe records (mandc.probing) never enter the graph, so they do not change what it keys
            where = " WHERE coalesce(json_extract(record, '$.purpose'), 'profile') = 'profile'" if table == "records" else ""
            for row in self._con.execute(f"SELECT {cols} FROM {table}{where} ORDER BY {cols.split(',')[0]}"):
                h.update(canonical_json(list(row)).encode())
        lineage = self.lineage()
        if lineage:  # the graph has lineage edges (a store without any keeps the hash it had before they existed)
            h.update(b"lineage" + canonical_json(lineage).encode())
        self._hash_cache = (stamp, h.hexdigest())
        return self._hash_cache[1]

    def graph(self, k: int = DEFAULT_K, copy: bool = True):
        """The :class:`~mandc.graph.MatchingGraph` of the store's contents, ``k`` similarity edges per dataset.

        Records naming a model or dataset the store has no line for (e.g. user records of a model
        dropped by a newer reference) are left out with a warning. The graph is cached per content;
        ``copy=False`` returns the cached graph itself, for a caller that only reads it (no copy of
        100k edges per call)."""
        from mandc.graph import MatchingGraph

        key = self.content_hash()
        if self._graph_cache is not None and self._graph_cache[:2] == (key, k):
            return self._graph_cache[2].copy() if copy else self._graph_cache[2]
        models, datasets = self.models(), self.datasets()
        if not datasets or not models:
            hint = ("the shipped reference (data/reference/*.jsonl) was not found when it was opened; regenerate "
                    "it with `python -m profiler.reference --out data/reference`" if self.reference_origin is None
                    else "seed it from a reference or import a JSON export")
            raise StoreError(f"the graph store {self._imported_from or self.path} is empty (no "
                             f"{'datasets' if not datasets else 'models'}): "
                             f"{hint}")
        known_m, known_d = {m["ref"] for m in models}, {d["ref"] for d in datasets}
        records, orphans = [], []
        for r in self.records():
            if r.get("purpose", "profile") != "profile":  # probe records are history, not performance edges
                continue
            (records if r["job"]["model"] in known_m and r["job"]["dataset"] in known_d else orphans).append(r)
        if orphans:
            import warnings

            job = orphans[0]["job"]
            warnings.warn(f"{len(orphans)} record(s) name a model or dataset the store has no line for "
                          f"(e.g. {job['model']} on {job['dataset']}); left out of the graph", stacklevel=2)
        g = MatchingGraph.from_reference(records, models, datasets, k=k, lineage=self.lineage())
        self._graph_cache = (key, k, g)
        return g.copy() if copy else g

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        """The whole store as one JSON object (what :meth:`export_json` writes)."""
        return {"format": STORE_FORMAT, "schema": SCHEMA_VERSION,
                "reference": {"origin": self.reference_origin, "hash": self.reference_hash},
                "feature_names": self._meta("feature_names"),
                "models": self.models(),
                "datasets": [{k: v for k, v in d.items() if k != "feature_names"} for d in self.datasets()],
                "records": [{"source": s, "record": json.loads(r)}
                            for s, r in self._con.execute("SELECT source, record FROM records ORDER BY rowid")],
                "lineage": self.lineage()}

    def export_json(self, path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (a temporary sibling renamed into place)."""
        return atomic_write(path, json.dumps(self.to_json(), indent=1))

    def import_json(self, path_or_obj) -> None:
        """Replace the store's whole contents (rows and reference origin/hash) with an export's, in one
        transaction; a bad file raises :class:`StoreError` and leaves the store unchanged."""
        if isinstance(path_or_obj, dict):
            d, where = path_or_obj, "the JSON object"
        else:
            where = str(path_or_obj)
            try:
                d = json.loads(Path(path_or_obj).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise StoreError(f"cannot read the store export {where}: {e}") from None
        if not isinstance(d, dict) or d.get("format") != STORE_FORMAT:
            raise StoreError(f"{where} is not a mandc store export (expected an object with format {STORE_FORMAT!r})")
        if d.get("schema") != SCHEMA_VERSION:
            raise StoreError(f"{where} has store schema {d.get('schema')!r}, this mandc reads {SCHEMA_VERSION}")
        try:
            with self.transaction():
                for table in ("records", "models", "datasets", "lineage"):
                    self._con.execute(f"DELETE FROM {table}")
                self._set_meta("feature_names", d.get("feature_names"))
                for src in SOURCES:
                    self._put_models([m for m in d.get("models", []) if m.get("source", "user") == src], src, True)
                    self._put_datasets([x for x in d.get("datasets", []) if x.get("source", "user") == src], src, True)
                    self._put_records([r["record"] for r in d.get("records", []) if r.get("source", "user") == src],
                                      src, True)
                for m, edges in _by_model(d.get("lineage") or []).items():  # exports before lineage have none
                    self.set_lineage(m, edges)
                ref = d.get("reference") or {}
                self._set_meta("reference_origin", ref.get("origin"))
                self._set_meta("reference_hash", ref.get("hash"))
            if self.path == ":memory:" and not isinstance(path_or_obj, dict):
                self._imported_from = where  # what the errors of a throw-away store should name
        except (KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"{where}: malformed store export ({type(e).__name__}: {e})") from None
        except StoreError as e:  # a bad row: say which file it came from
            raise StoreError(f"{where}: {e}") from None
        self._graph_cache = None
