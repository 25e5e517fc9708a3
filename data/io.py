"""Small file helpers every package uses, written once here, in the lowest package (standard library only,
so importing it costs nothing).

- :func:`mandc_home` — where mandc keeps everything it caches (zoo, graph store, campaigns, caches).
- :func:`atomic_write` / :func:`atomic_output` — write a file so that no reader ever sees a partial one.
- :func:`canonical_json` — the one JSON text of an object that hashes and ids are computed from.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def mandc_home() -> Path:
    """``$MANDC_HOME`` or, unset or empty, ``~/.cache/mandc``: the root of everything mandc caches."""
    return Path(os.environ.get("MANDC_HOME") or "~/.cache/mandc").expanduser()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (``torch.save``,
    safetensors' ``save_file``); when the block ends, the file is flushed to disk and renamed over
    ``path`` (same filesystem, so the rename is atomic: a reader sees the old file or the whole new one).
    If the block raises, the temporary file is removed and ``path`` is untouched. Parent folders are
    created; the new file gets the ordinary umask permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically (see :func:`atomic_output`); returns ``path``."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def canonical_json(obj) -> str:
    """The canonical JSON text of ``obj``: sorted keys, no whitespace, ASCII only, no NaN/Infinity (raises
    ``ValueError``). Equal objects give equal text, so it is what ids and content hashes are computed from."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
