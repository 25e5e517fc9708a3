"""Model references: what a string names (parsing only; :func:`finetune.load.load_model` loads it).

Four forms, tried in this order:

- a **local folder** in diffusers format (has ``model_index.json``);
- ``zoo:NAME`` — a reference-zoo model, built into ``$MANDC_HOME/zoo/NAME`` on first use;
- ``hub:org/name`` or ``hub:org/name@REVISION`` — a Hugging Face Hub model at a branch, tag or commit
  (what ``mandc hub crawl`` stores as ``hub:org/name@sha``);
- a bare **Hub id** ``org/name`` — the same as ``hub:org/name``.

An existing local folder wins over a Hub id of the same spelling, as in diffusers.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from finetune.errors import ModelRefError

ZOO_PREFIX = "zoo:"
HUB_PREFIX = "hub:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")

__all__ = ["HUB_PREFIX", "ZOO_PREFIX", "ModelRef", "ModelRefError", "parse_model_ref"]


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. ``kind`` ∈ {local, zoo, hub}; ``value`` is the folder, zoo name or Hub id;
    ``revision`` the Hub branch/tag/commit (None: the default branch)."""

    kind: str
    value: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "zoo":
            return ZOO_PREFIX + self.value
        if self.kind == "hub" and self.revision:
            return f"{HUB_PREFIX}{self.value}@{self.revision}"
        return self.value


def parse_model_ref(ref: str | os.PathLike) -> ModelRef:
    """Classify ``ref`` without loading, building or downloading anything; raise :class:`ModelRefError`
    if it is none of the forms (or a folder that is not a diffusers pipeline, or an unknown zoo name)."""
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str) or not ref.strip():
        raise ModelRefError(f"model reference must be a non-empty string or path, got {ref!r}")
    if ref.startswith(ZOO_PREFIX):
        from finetune.zoo.specs import ZOO  # the spec table only: nothing is built

        name = ref[len(ZOO_PREFIX):]
        if name not in ZOO:
            raise ModelRefError(f"unknown zoo model {name!r}; the zoo has: {', '.join(ZOO)}")
        return ModelRef("zoo", name)
    if ref.startswith(HUB_PREFIX):
        repo, _, rev = ref[len(HUB_PREFIX):].partition("@")
        if not _HUB_ID.match(repo) or (_ and not _REVISION.match(rev)):
            raise ModelRefError(f"bad Hub reference {ref!r}: expected hub:org/name or hub:org/name@REVISION")
        return ModelRef("hub", repo, rev or None)
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelRefError(f"model reference {ref!r} is a file; expected a diffusers pipeline folder")
        if not (path / "model_index.json").is_file():
            raise ModelRefError(f"{ref!r} is not a diffusers pipeline folder: it has no model_index.json")
        return ModelRef("local", str(path))
    if _HUB_ID.match(ref):
        return ModelRef("hub", ref)
    raise ModelRefError(f"cannot resolve model reference {ref!r}: no such folder, not `zoo:NAME` and not a "
                        "Hub id `org/name` / `hub:org/name[@REVISION]`")
