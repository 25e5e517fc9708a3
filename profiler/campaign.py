"""Campaigns: many profiling jobs, one record file each, resumable.

::

    camp = Campaign("runs/reference")
    summary = camp.run(jobs, get_executor("local", workers=2))   # a rich progress bar on stderr
    camp.export_jsonl("records.jsonl")

Layout of a campaign folder::

    DIR/records/<job_id>.json   one ProfileRecord per finished job (ok or failed)
    DIR/work/                   temporary fine-tuning folders of running jobs (deleted as they finish)

**Resumable.** Each record is written the moment its job finishes, atomically (a hidden temporary file
in the same folder, then ``os.replace``, :func:`data.io.atomic_write`: a reader sees no file or the whole record). A
campaign that is killed and started again with the same jobs skips every job that already has an ``ok``
record, and a ``failed`` one unless ``retry_failed=True``. An unreadable record file counts as missing
(the job runs again), and so does an ok record measured on other weights than the model has now (a
rebuilt zoo model keeps its name: records carry the weights' fingerprint, ``versions["model"]``). One
campaign folder is meant for one running campaign at a time.

**Failures do not stop it.** :func:`profiler.jobs.run_job` records a job's own failure; a worker that
dies (killed, out of memory) is recorded as a failed job too, and the others go on.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from data.io import atomic_write
from profiler.executors import Executor, get_executor
from profiler.jobs import model_fingerprint, run_job
from profiler.schema import ProfileJob, ProfileRecord, describe_error, hostname, light_versions, utc_now

RECORDS = "records"
WORK = "work"


class _JobFn:
    """Executor entry point: ``{"job": job dict, "zero_shot_loss": float | None}`` in, a record dict out
    (a class at module level with the campaign's work folder bound, so it pickles, unlike a lambda)."""

    def __init__(self, workdir: str):
        self.workdir = workdir

    def __call__(self, item: dict) -> dict:
        return run_job(ProfileJob.from_dict(item["job"]), workdir=self.workdir,
                       zero_shot_loss=item.get("zero_shot_loss")).to_dict()


class Campaign:
    """A folder of profiling records (see the module docstring).

    Args:
        dir: the campaign folder (created on first write).
        retry_failed: default for :meth:`pending` / :meth:`run`: re-run jobs whose record is ``failed``.
    """

    def __init__(self, dir: str | os.PathLike, retry_failed: bool = False):
        self.dir = Path(dir)
        self.retry_failed = retry_failed

    @property
    def records_dir(self) -> Path:
        return self.dir / RECORDS

    def record_path(self, job_id: str) -> Path:
        return self.records_dir / f"{job_id}.json"

    # ----------------------------------------------------------------------------------- reading
    def read_record(self, job_id: str) -> ProfileRecord | None:
        """The record of ``job_id``, or None if there is none (or it is unreadable: it will be redone)."""
        path = self.record_path(job_id)
        try:
            rec = ProfileRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            print(f"warning: ignoring unreadable record {path}: {e}", file=sys.stderr)
            return None
        return rec if rec.job_id == job_id else None

    def records(self, status: str | None = None) -> list[ProfileRecord]:
        """Every readable record (only those with ``status`` if given), sorted by (model, dataset, seed, job_id)."""
        out = []
        if self.records_dir.is_dir():
            for path in self.records_dir.glob("*.json"):
                rec = self.read_record(path.stem)
                if rec is not None and (status is None or rec.status == status):
                    out.append(rec)
        return sorted(out, key=lambda r: (r.job.model, r.job.dataset, r.job.seed, r.job_id))

    def pending(self, jobs: Iterable[ProfileJob | dict], retry_failed: bool | None = None) -> list[ProfileJob]:
        """The jobs still to run, in the given order, duplicates removed: those without a record, those
        whose ok record was measured on other weights than the model's current ones (a rebuilt zoo
        model: ``versions["model"]``, see :func:`profiler.jobs.model_fingerprint`), and those with a
        ``failed`` record when ``retry_failed``."""
        retry = self.retry_failed if retry_failed is None else retry_failed
        out, seen, current = [], set(), {}
        for job in jobs:
            job = ProfileJob.from_dict(job) if isinstance(job, dict) else job
            if job.job_id in seen:
                continue
            seen.add(job.job_id)
            rec = self.read_record(job.job_id)
            if rec is None or (retry and not rec.ok) or (rec.ok and self._stale(rec, current)):
                out.append(job)
        return out

    @staticmethod
    def _stale(rec: ProfileRecord, current: dict, quiet: bool = False) -> bool:
        """True when ``rec`` was measured on other weights than ``rec.job.model`` has now (``current``
        caches the models' fingerprints)."""
        was = rec.versions.get("model")
        if was is None:
            return False
        if rec.job.model not in current:
            current[rec.job.model] = model_fingerprint(rec.job.model)
        now = current[rec.job.model]
        if now is None or now == was:
            return False
        if not quiet:
            print(f"note: re-running {rec.job_id} ({rec.job.model} × {rec.job.dataset} seed {rec.job.seed}): its "
                  f"record was measured on other weights ({was}, now {now})", file=sys.stderr)
        return True

    # ----------------------------------------------------------------------------------- writing
    def write_record(self, rec: ProfileRecord) -> Path:
        """Write ``rec`` atomically to ``records/<job_id>.json`` (replacing an older record of the job)."""
        return atomic_write(self.record_path(rec.job_id), json.dumps(rec.to_dict(), indent=1) + "\n")

    def export_jsonl(self, path: str | os.PathLike, include_failed: bool = False) -> int:
        """Write the records as JSON Lines (one record per line, sorted as :meth:`records`), atomically;
        returns the number of lines. Failed records are left out unless ``include_failed``."""
        recs = [r for r in self.records() if include_failed or r.ok]
        text = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in recs)
        atomic_write(path, text)
        return len(recs)

    # ----------------------------------------------------------------------------------- running
    def run(self, jobs: Iterable[ProfileJob | dict], executor: Executor | str | None = None, progress: bool = True,
            retry_failed: bool | None = None, group_by_model: bool = True) -> dict:
        """Run every pending job of ``jobs`` with ``executor`` (default: ``local`` with one worker per
        CPU), writing each record as it finishes.

        ``group_by_model`` orders the pending jobs by model, then seed (stable): a worker's cached model
        serves the following jobs, and a pair's second seed starts after its first one finished, so it
        can reuse that record's zero-shot loss (:func:`profiler.jobs.run_job`; jobs are handed to the
        executor one at a time, as workers free up, with the zero-shot losses known at that moment).
        Returns a summary: ``{"jobs", "skipped", "ran", "ok", "failed", "did_not_fit", "wall_s",
        "failed_jobs": [{"job_id", "status", "error"}...]}`` (``failed_jobs``: every record not ok).
        """
        all_jobs = [ProfileJob.from_dict(j) if isinstance(j, dict) else j for j in jobs]
        n_unique = len({j.job_id for j in all_jobs})
        todo = self.pending(all_jobs, retry_failed)
        if group_by_model:
            order = {m: i for i, m in enumerate(dict.fromkeys(j.model for j in todo))}
            todo.sort(key=lambda j: (order[j.model], j.seed))
        current: dict = {}  # the zero-shot losses of records measured on the models' current weights
        zero_shot = {r.job.pair_key: r.metrics["zero_shot_loss"] for r in self.records("ok")
                     if not self._stale(r, current, quiet=True)}

        def items():
            for j in todo:
                yield {"job": j.to_dict(), "zero_shot_loss": zero_shot.get(j.pair_key)}

        executor = get_executor(executor) if isinstance(executor, str) else executor or get_executor("local")
        work = self.dir / WORK
        shutil.rmtree(work, ignore_errors=True)  # left by a killed campaign
        work.mkdir(parents=True, exist_ok=True)
        self.records_dir.mkdir(parents=True, exist_ok=True)

        summary = {"jobs": n_unique, "skipped": n_unique - len(todo), "ran": 0, "ok": 0, "failed": 0,
                   "did_not_fit": 0, "wall_s": 0.0, "failed_jobs": []}
        t0 = time.perf_counter()
        bar = _Bar(len(todo), executor.describe(), summary["skipped"]) if progress and todo else None
        try:
            for item, result in executor.map_unordered(_JobFn(str(work)), items()):
                rec = self._to_record(item["job"], result)
                self.write_record(rec)
                if rec.ok:
                    zero_shot.setdefault(rec.job.pair_key, rec.metrics["zero_shot_loss"])
                summary["ran"] += 1
                summary[rec.status] += 1
                if not rec.ok:
                    summary["failed_jobs"].append({"job_id": rec.job_id, "status": rec.status, "error": rec.error})
                if bar is not None:
                    bar.advance(rec)
        finally:
            if bar is not None:
                bar.close()
            shutil.rmtree(work, ignore_errors=True)
        summary["wall_s"] = round(time.perf_counter() - t0, 2)
        return summary

    @staticmethod
    def _to_record(job_dict: dict, result) -> ProfileRecord:
        job = ProfileJob.from_dict(job_dict)
        if isinstance(result, BaseException):  # the worker died or the task was lost: the job failed
            return ProfileRecord(job_id=job.job_id, job=job, status="failed",
                                 error=f"worker failed: {describe_error(result)}", versions=light_versions(),
                                 host=hostname(), finished_at=utc_now())
        rec = ProfileRecord.from_dict(result)
        if rec.job_id != job.job_id:
            raise RuntimeError(f"executor returned the record of job {rec.job_id} for job {job.job_id}")
        return rec


class _Bar:
    """Progress on stderr: a live rich bar (done/total, ok/failed, the last job, elapsed, ETA) on a
    terminal; one plain line per finished job otherwise (a campaign logging to a file)."""

    def __init__(self, total: int, what: str, skipped: int):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total, self.done, self.ok, self.failed = total, 0, 0, 0
        self.t0 = time.perf_counter()
        note = f" ({skipped} done before)" if skipped else ""
        self.progress = None
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                     console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task(f"profiling{note}", total=total, status=what)
        else:
            print(f"profiling {total} jobs{note}; {what}", file=sys.stderr, flush=True)

    def advance(self, rec: ProfileRecord) -> None:
        self.done += 1
        self.ok += rec.ok
        self.failed += not rec.ok
        job = f"{rec.job.model.removeprefix('zoo:')} × {rec.job.dataset.removeprefix('builtin:')} seed {rec.job.seed}"
        if self.progress is not None:
            self.progress.update(self.task, advance=1, status=f"ok {self.ok} failed {self.failed} | {job} "
                                                             f"{rec.wall_s:.1f}s")
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done}/{self.total}] {rec.status} {job} {rec.wall_s:.1f}s "
              f"(elapsed {elapsed / 60:.1f} min, eta {eta / 60:.1f} min)"
              + (f": {rec.error}" if not rec.ok else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


__all__ = ["Campaign"]
