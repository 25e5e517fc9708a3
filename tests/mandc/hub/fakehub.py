"""A fake Hugging Face Hub for the tests: a real HTTP server on 127.0.0.1 serving repos from folders.

It implements what ``huggingface_hub`` 2.4 calls for a crawl and a download, with the Hub's status codes
and headers:

- ``GET /api/models?…&limit=N`` — the listing (sorted by downloads), ``page_size`` items per page,
  the next page in a ``Link: <…>; rel="next"`` header;
- ``GET /api/models/ORG/NAME[/revision/REV]`` — model info (sha, lastModified, cardData, tags,
  siblings, gated, private, downloads, likes);
- ``GET /api/models/ORG/NAME/tree/REV?recursive=…`` — the file list ``snapshot_download`` asks for;
- ``HEAD``/``GET /ORG/NAME/resolve/REV/PATH`` — files, with ``ETag``, ``X-Repo-Commit``,
  ``Content-Length`` and ``Range`` support (206 + ``Content-Range``);
- errors as the Hub sends them: 404 + ``X-Error-Code: RepoNotFound/RevisionNotFound/EntryNotFound``,
  401 for a private repo, 403 + ``X-Error-Code: GatedRepo`` for a gated repo's files.

Faults are injected per (method, path substring): a status with headers (429 + ``Retry-After``, 5xx) or
a delay (a slow response), each a bounded number of ``times``. Every request is logged in ``requests``;
every file request in ``file_reads`` as ``(method, "ORG/NAME/PATH", Range header or None)``, so a test can
tell a header read (ranged GET) from a download (GET of the whole file).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlparse

import yaml


@dataclass
class Repo:
    repo_id: str
    folder: Path
    downloads: int = 0
    likes: int = 0
    gated: str | bool = False
    private: bool = False
    tags: list = field(default_factory=list)
    sha: str = ""
    last_modified: str = ""

    def refresh(self) -> None:
        """Recompute the commit sha from the files (a changed file is a new commit)."""
        h = hashlib.sha1()
        for rel, f in sorted(self.files().items()):
            h.update(rel.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
        sha = h.hexdigest()
        if sha != self.sha:
            self.sha, self.last_modified = sha, time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())

    def files(self) -> dict[str, Path]:
        return {p.relative_to(self.folder).as_posix(): p for p in sorted(self.folder.rglob("*")) if p.is_file()}

    def card_data(self) -> dict | None:
        readme = self.folder / "README.md"
        if not readme.is_file():
            return None
        text = readme.read_text()
        if not text.startswith("---\n"):
            return None
        return yaml.safe_load(text[4:text.index("\n---", 4)]) or None

    def info(self) -> dict:
        card = self.card_data() or {}
        return {"id": self.repo_id, "_id": self.sha[:24], "modelId": self.repo_id, "sha": self.sha,
                "lastModified": self.last_modified, "private": self.private, "gated": self.gated,
                "disabled": False, "downloads": self.downloads, "likes": self.likes,
                "tags": sorted(set(self.tags) | set(card.get("tags") or [])), "pipeline_tag": "text-to-image",
                "library_name": "diffusers", "cardData": self.card_data(),
                "siblings": [{"rfilename": rel} for rel in self.files()]}


@dataclass
class Fault:
    method: str
    path_contains: str
    status: int | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    times: int = 1


class FakeHub:
    """``with FakeHub() as hub: hub.add(...); HfApi(endpoint=hub.url)...``"""

    def __init__(self, page_size: int = 2):
        self.repos: dict[str, Repo] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.file_reads: list[tuple[str, str, str | None]] = []
        self.page_size = page_size
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo_id: str, folder: Path, **kw) -> Repo:
        repo = Repo(repo_id, Path(folder), **kw)
        repo.refresh()
        self.repos[repo_id] = repo
        return repo

    def inject(self, method: str, path_contains: str, status: int | None = None, headers: dict | None = None,
               delay: float = 0.0, times: int = 1) -> None:
        self.faults.append(Fault(method, path_contains, status, headers or {}, delay, times))

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for f in self.faults:
                if f.times > 0 and f.method in (method, "*") and f.path_contains in path:
                    f.times -= 1
                    return f
        return None


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        # -------------------------------------------------------------- plumbing
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
            self.send_response(status)
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            hdrs.setdefault("Content-Length", str(len(body)))
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.end_headers()
            if not head and body:
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        def _error(self, status: int, code: str, msg: str, head: bool) -> None:
            self._send(status, json.dumps({"error": msg}).encode(), {"X-Error-Code": code, "X-Error-Message": msg},
                       head)

        def _serve(self, head: bool) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            fault = hub.take_fault(self.command, path)
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.status is not None:
                    return self._send(fault.status, b'{"error": "injected"}', fault.headers, head)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"]:
                if len(parts) == 2:
                    return self._listing(url, head)
                return self._api_repo(parts[2:], head)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
            return self._error(404, "NotFound", f"no route {path}", head)

        def _repo(self, repo_id: str, head: bool, files: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository not found: {repo_id}", head)
                return None
            if repo.private:
                self._error(401, "RepoNotFound", f"Repository not found (private): {repo_id}", head)
                return None
            if files and repo.gated:
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted", head)
                return None
            return repo

        def _rev_ok(self, repo: Repo, rev: str, head: bool) -> bool:
            if rev in ("main", repo.sha):
                return True
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return False

        # -------------------------------------------------------------- endpoints
        def _listing(self, url, head: bool) -> None:
            q = parse_qs(url.query)
            repos = sorted((r for r in hub.repos.values() if not r.private), key=lambda r: (-r.downloads, r.repo_id))
            start = int(q.get("cursor", ["0"])[0])
            limit = int(q.get("limit", [str(len(repos))])[0])
            end = min(start + hub.page_size, limit, len(repos))
            items = [{k: v for k, v in r.info().items() if k not in ("siblings", "cardData")} for r in repos[start:end]]
            headers = {}
            if end < min(limit, len(repos)):
                nq = {k: v for k, v in q.items() if k != "cursor"} | {"cursor": [str(end)]}
                headers["Link"] = f'<{hub.url}/api/models?{urlencode(nq, doseq=True)}>; rel="next"'
            self._send(200, json.dumps(items).encode(), headers, head)

        def _api_repo(self, parts: list[str], head: bool) -> None:
            repo = self._repo("/".join(parts[:2]), head)
            if repo is None:
                return
            rest = parts[2:]
            if rest and rest[0] == "revision" and len(rest) == 2:
                if not self._rev_ok(repo, rest[1], head):
                    return
                rest = []
            if not rest:
                return self._send(200, json.dumps(repo.info()).encode(), head=head)
            if rest[0] == "tree" and len(rest) >= 2:
                if not self._rev_ok(repo, rest[1], head):
                    return
                prefix = "/".join(rest[2:])
                entries = [{"type": "file", "path": rel, "size": f.stat().st_size,
                            "oid": hashlib.sha1(f.read_bytes()).hexdigest()}
                           for rel, f in repo.files().items() if rel.startswith(prefix)]
                return self._send(200, json.dumps(entries).encode(), head=head)
            return self._error(404, "NotFound", "unknown repo route", head)

        def _resolve(self, repo_id: str, rev: str, rel: str, head: bool) -> None:
            repo = self._repo(repo_id, head, files=True)
            if repo is None or not self._rev_ok(repo, rev, head):
                return
            f = repo.files().get(rel)
            if f is None:
                return self._error(404, "EntryNotFound", f"{rel} does not exist on {rev}", head)
            with hub._lock:
                hub.file_reads.append((self.command, f"{repo_id}/{rel}", self.headers.get("Range")))
            data = f.read_bytes()
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": repo.sha,
                       "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                       "Last-Modified": formatdate(usegmt=True)}
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and not head:
                a, _, b = rng[6:].partition("-")
                lo, hi = int(a or 0), min(int(b) if b else len(data) - 1, len(data) - 1)
                headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
                return self._send(206, data[lo:hi + 1], headers)
            headers["Content-Length"] = str(len(data))
            self._send(200, data, headers, head)

    return Handler
