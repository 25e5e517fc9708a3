"""Crawl the Hugging Face Hub's diffusers text-to-image repos into the graph store, without weights.

Per listed repo (``HfApi.list_models(filter="diffusers", pipeline_tag="text-to-image", sort=..., limit=N)``):

1. ``model_info`` at the listed commit: files (siblings), card data, tags, gated/private, downloads, likes;
2. the small JSON files, through ``hf_hub_download`` into the normal HF cache: ``model_index.json``
   (pipeline class, components), the denoiser's and VAE's ``config.json``, the scheduler config
   (prediction type) and the ``README.md`` card;
3. per component, parameter counts and dtypes from the **safetensors headers** (ranged reads,
   ``parse_safetensors_file_metadata``; nothing else of the weights is read);
4. one transaction in the store: the model node ``hub:org/name@sha`` with the zoo's feature vector
   (:func:`profiler.modelinfo.describe_folder`; mixture and pretraining steps unknown, so 0), its
   typed lineage edges to ``hub:BASE`` (:func:`lineage_edges`) and the repo's crawl state.

Repos are skipped **with the reason recorded** when they are gated or private (HTTP 401/403), have only
pickle weights for the denoiser (``.bin``, ``.ckpt``: never loaded), are adapters (LoRA weights without a
pipeline: their lineage edge is still recorded) or are not diffusers pipelines.

**Incremental and resumable.** A repo whose listed ``sha`` and ``lastModified`` equal the stored crawl
state is not fetched again; each repo is committed as soon as it is fetched, so a crawl killed midway
resumes where it stopped. **Network faults**: HTTP 429 waits ``Retry-After`` seconds; 5xx, 408 and
timeouts/connection errors back off ``backoff_s · 2^k``; both at most ``max_retries`` times, each wait
capped at ``max_wait_s``. A repo that still fails is reported under ``failed`` and left unrecorded,
so the next crawl tries it again (nothing half-written, nothing lost).
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from finetune.weightfiles import component_safetensors
from mandc.store import LINEAGE_RELATIONS

#: Files never fetched or loaded: they unpickle code.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


@dataclass
class CrawlConfig:
    """What to list and how hard to try."""

    endpoint: str | None = field(default=None, metadata={"help": "Hub URL (default: HF_ENDPOINT, else huggingface.co)"})
    limit: int = field(default=100, metadata={"help": "repos to list"})
    sort: str = field(default="downloads", metadata={"help": "listing order: downloads, likes, last_modified, ..."})
    filter: str = field(default="diffusers", metadata={"help": "library tag of the listing"})
    pipeline_tag: str = field(default="text-to-image", metadata={"help": "task of the listing"})
    max_retries: int = field(default=4, metadata={"help": "retries of one request on 429/5xx/timeouts"})
    backoff_s: float = field(default=1.0, metadata={"help": "first back-off wait; doubles per retry"})
    max_wait_s: float = field(default=60.0, metadata={"help": "cap on one wait (Retry-After included)"})
    timeout_s: float = field(default=30.0, metadata={"help": "per-request timeout in seconds"})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)"})

    def resolved_endpoint(self) -> str:
        from huggingface_hub import constants

        return (self.endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


class _Skip(Exception):
    """A repo that is recorded as skipped, with the reason (and the lineage it still has)."""

    def __init__(self, reason: str, info: dict | None = None, lineage: list | None = None):
        super().__init__(reason)
        self.reason, self.info, self.lineage = reason, info or {}, lineage or []


class Crawler:
    """One crawl of ``config``'s listing into ``store`` (a :class:`mandc.store.Store`).

    ``sleep`` is the wait used between retries (tests pass a recorder); ``log`` gets the progress lines
    (stderr by default; a progress bar when stderr is a terminal)."""

    def __init__(self, store, config: CrawlConfig | None = None, *, sleep: Callable[[float], None] = time.sleep,
                 log: Callable[[str], None] | None = None):
        from huggingface_hub import HfApi

        self.store, self.cfg, self.sleep = store, config or CrawlConfig(), sleep
        self.endpoint = self.cfg.resolved_endpoint()
        self.api = HfApi(endpoint=self.endpoint, token=self.cfg.token)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.stats = {"retries": 0, "waited_s": 0.0}

    # ------------------------------------------------------------------ retries
    def _retry(self, fn: Callable):
        """``fn()``, retried on 429 (``Retry-After``), 5xx/408 and timeouts/connection errors."""
        wait = self.cfg.backoff_s
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 — classified below; anything else propagates
                delay = _retry_delay(e, wait)
                if delay is None or attempt == self.cfg.max_retries:
                    raise
            delay = min(delay, self.cfg.max_wait_s)
            self.stats["retries"] += 1
            self.stats["waited_s"] = round(self.stats["waited_s"] + delay, 3)
            self.sleep(delay)
            wait *= 2

    # ------------------------------------------------------------------ the crawl
    def crawl(self) -> dict:
        """List, fetch what changed, store it; returns the JSON summary (see :func:`crawl`)."""
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        t0 = time.perf_counter()
        self.log(f"hub crawl: listing {self.cfg.limit} {self.cfg.pipeline_tag} repos from {self.endpoint} ...")
        listed = self._retry(lambda: list(self.api.list_models(
            filter=self.cfg.filter, pipeline_tag=self.cfg.pipeline_tag, sort=self.cfg.sort, limit=self.cfg.limit,
            expand=["sha", "lastModified", "downloads", "likes", "gated", "private", "tags"])))
        todo, unchanged = [], []
        for m in listed:
            state = self.store.hub_repo(m.id)
            if state is not None and state["sha"] == m.sha and state["last_modified"] == _iso(m.last_modified):
                unchanged.append(m.id)
            else:
                todo.append(m)
        self.log(f"hub crawl: listed {len(listed)} repos, {len(todo)} new or changed, {len(unchanged)} unchanged")
        summary = {"endpoint": self.endpoint, "listed": len(listed), "fetched": 0, "unchanged": len(unchanged),
                   "ok": [], "skipped": {}, "failed": {}}
        quiet = are_progress_bars_disabled()
        disable_progress_bars()  # no per-file bars for the small JSON files
        bar = _bar(len(todo))
        try:
            for m in todo:
                if bar is not None:
                    bar.set_description(m.id)
                self._crawl_one(m, summary)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if not quiet:
                enable_progress_bars()
        summary.update(self.stats, seconds=round(time.perf_counter() - t0, 3),
                       lineage_edges=len(self.store.lineage()), store=str(self.store.path))
        self.log(f"hub crawl: fetched {summary['fetched']} repos: {len(summary['ok'])} ok, "
                 f"{len(summary['skipped'])} skipped, {len(summary['failed'])} failed, "
                 f"{self.stats['retries']} retries, {summary['seconds']} s")
        return summary

    def _crawl_one(self, listed, summary: dict) -> None:
        repo = listed.id
        try:
            row = self._fetch(listed)
        except _Skip as s:
            row = {"repo_id": repo, "sha": listed.sha, "last_modified": _iso(listed.last_modified),
                   "status": "skipped", "reason": s.reason, "node": None, "info": s.info, "lineage": s.lineage}
        except Exception as e:  # noqa: BLE001 — retries exhausted or a bad repo: report, record nothing
            summary["failed"][repo] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            return
        self._store(row)
        summary["fetched"] += 1
        if row["status"] == "ok":
            summary["ok"].append(row["node"])
        else:
            summary["skipped"][repo] = row["reason"]

    def _store(self, row: dict) -> None:
        """One repo's model node, lineage and crawl state, in one transaction."""
        st = self.store
        old = st.hub_repo(row["repo_id"])
        node = row["node"] or f"hub:{row['repo_id']}@{row['sha']}"  # lineage of a skipped adapter too
        with st.transaction():
            if old and old.get("node") and old["node"] != row["node"] and \
                    not st.records(model=old["node"]):
                st.remove_model(old["node"])  # a superseded revision nobody measured
            if row["status"] == "ok":
                st.add_model(row["node"], row["features"], row["info"], name=row["repo_id"])
            st.set_lineage(node, row["lineage"])
            st.put_hub_repo({k: row[k] for k in ("repo_id", "sha", "last_modified", "status", "reason", "node")}
                            | {"info": row["info"]})

    # ------------------------------------------------------------------ one repo
    def _fetch(self, listed) -> dict:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        repo = listed.id
        try:
            info = self._retry(lambda: self.api.model_info(repo, revision=listed.sha, timeout=self.cfg.timeout_s))
        except GatedRepoError as e:
            raise _Skip(f"gated: {_status(e)} on the repo's metadata") from None
        except RepositoryNotFoundError as e:
            raise _Skip(f"private or gone: {_status(e)}") from None
        sha = info.sha or listed.sha
        card = info.card_data.to_dict() if info.card_data is not None else {}
        files = sorted(s.rfilename for s in info.siblings or [])
        hub = {"repo_id": repo, "sha": sha, "last_modified": _iso(info.last_modified or listed.last_modified),
               "license": card.get("license"), "base_model": card.get("base_model"),
               "base_model_relation": card.get("base_model_relation"), "datasets": card.get("datasets"),
               "tags": list(info.tags or []), "downloads": info.downloads, "likes": info.likes,
               "gated": info.gated or False, "private": bool(info.private)}
        lineage = lineage_edges(card, info.tags or [])
        if "model_index.json" not in files:
            if any(e["relation"] == "adapter" for e in lineage) or any("lora" in f.lower() for f in files):
                raise _Skip("adapter weights only (no diffusers pipeline): lineage recorded, not a candidate",
                            {"hub": hub}, lineage)
            raise _Skip("not a diffusers pipeline (no model_index.json)", {"hub": hub}, lineage)
        try:
            index_path = Path(self._download(repo, "model_index.json", sha))
        except GatedRepoError as e:
            raise _Skip(f"gated ({hub['gated']}): {_status(e)} on its files", {"hub": hub}, lineage) from None
        except RepositoryNotFoundError as e:
            raise _Skip(f"private: {_status(e)} on its files", {"hub": hub}, lineage) from None
        index = json.loads(index_path.read_text(encoding="utf-8"))
        comps = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]}
        den = "unet" if "unet" in comps else "transformer" if "transformer" in comps else None
        if den is None:
            raise _Skip("pipeline has neither a unet nor a transformer", {"hub": hub}, lineage)
        weights = {c: component_safetensors(files, c) for c in comps}
        if not weights[den]:
            pickles = [f for f in files if f.startswith(f"{den}/") and f.endswith(PICKLE_SUFFIXES)]
            why = f"pickle-only weights ({', '.join(pickles)}): never loaded" if pickles else \
                f"no safetensors weights for its {den}"
            raise _Skip(why, {"hub": hub}, lineage)
        for f in (f"{den}/config.json", "vae/config.json", "scheduler/scheduler_config.json", "README.md"):
            if f in files:
                self._download(repo, f, sha)
        per_comp = {}
        for comp, fs in weights.items():
            params, dtypes = 0, {}
            for f in fs:
                md = self._retry(lambda f=f: self.api.parse_safetensors_file_metadata(repo, f, revision=sha))
                for dt, n in md.parameter_count.items():
                    dtypes[dt] = dtypes.get(dt, 0) + int(n)
                    params += int(n)
            if fs:
                per_comp[comp] = {"params": params, "dtypes": dict(sorted(dtypes.items())), "files": fs}
        folder = index_path.parent
        node = f"hub:{repo}@{sha}"
        from profiler.modelinfo import describe_folder

        desc = describe_folder(folder, node, name=repo, params=per_comp[den]["params"])
        den_cfg = json.loads((folder / den / "config.json").read_text()) if (folder / den / "config.json").is_file() else {}
        sched = folder / "scheduler" / "scheduler_config.json"
        hub |= {"pipeline_class": index.get("_class_name"), "components": {c: v[1] for c, v in comps.items()},
                "denoiser": {k: den_cfg[k] for k in ("_class_name", "block_out_channels", "sample_size",
                                                       "cross_attention_dim", "caption_channels", "num_layers",
                                                       "attention_head_dim", "num_attention_heads", "in_channels")
                             if k in den_cfg},
                "prediction_type": json.loads(sched.read_text()).get("prediction_type") if sched.is_file() else None,
                "weights": per_comp}
        return {"repo_id": repo, "sha": sha, "last_modified": hub["last_modified"], "status": "ok", "reason": None,
                "node": node, "features": desc["features"], "info": desc["info"] | {"hub": hub}, "lineage": lineage}

    def _download(self, repo: str, filename: str, sha: str) -> str:
        from huggingface_hub import hf_hub_download

        return self._retry(lambda: hf_hub_download(repo, filename, revision=sha, endpoint=self.endpoint,
                                                   token=self.cfg.token, etag_timeout=self.cfg.timeout_s))


def crawl(store, config: CrawlConfig | None = None, **kwargs) -> dict:
    """Crawl ``config``'s listing into ``store``; returns the summary ``{"endpoint", "listed", "fetched",
    "unchanged", "ok": [node refs], "skipped": {repo: reason}, "failed": {repo: error}, "retries",
    "waited_s", "seconds", "lineage_edges", "store"}``. ``kwargs`` go to :class:`Crawler`."""
    return Crawler(store, config, **kwargs).crawl()


def lineage_edges(card: dict, tags: list[str]) -> list[dict]:
    """Typed edges ``[{"base": "hub:ORG/NAME", "relation"}]`` from a card's ``base_model`` (str or list)
    and ``base_model_relation``, and the Hub's ``base_model:<relation>:<id>`` tags. An explicit relation
    in the card wins, then the tag's; a base with neither is a ``finetune``. A base already written as a
    reference (``zoo:NAME``, as zoo cards do, or ``hub:…``) is kept as it is."""
    edges: dict[str, str] = {}
    bases = card.get("base_model") or []
    bases = [bases] if isinstance(bases, str) else [b for b in bases if isinstance(b, str)]
    rel = card.get("base_model_relation")
    if rel in LINEAGE_RELATIONS:
        edges.update({b: rel for b in bases})
    for t in tags:
        parts = t.split(":", 2)
        if len(parts) == 3 and parts[0] == "base_model" and parts[1] in LINEAGE_RELATIONS:
            edges.setdefault(parts[2], parts[1])
    for b in bases:
        edges.setdefault(b, "finetune")
    return [{"base": b if b.startswith(("hub:", "zoo:")) else f"hub:{b}", "relation": r}
            for b, r in sorted(edges.items())]


# ------------------------------------------------------------------------------------------ helpers
def _retry_delay(e: BaseException, backoff: float) -> float | None:
    """Seconds to wait before retrying after ``e``, or None when ``e`` is not worth retrying."""
    import httpx2
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    seen, x = set(), e
    while x is not None and id(x) not in seen:  # the error, then what it was raised from
        seen.add(id(x))
        if isinstance(x, (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError)):
            return None
        if isinstance(x, HfHubHTTPError) and x.response is not None:
            code = x.response.status_code
            if code == 429:
                try:
                    return max(0.0, float(x.response.headers.get("Retry-After", "")))
                except ValueError:
                    return backoff
            return backoff if code == 408 or 500 <= code < 600 else None
        if isinstance(x, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)):
            return backoff
        x = x.__cause__ or x.__context__
    return None


def _status(e) -> str:
    r = getattr(e, "response", None)
    return f"HTTP {r.status_code}" if r is not None else type(e).__name__


def _iso(t) -> str | None:
    return None if t is None else t.isoformat() if hasattr(t, "isoformat") else str(t)


def _bar(total: int):
    if not sys.stderr.isatty() or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="repo", file=sys.stderr)


__all__ = ["CrawlConfig", "Crawler", "PICKLE_SUFFIXES", "crawl", "lineage_edges"]
