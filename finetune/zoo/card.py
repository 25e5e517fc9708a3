"""Model cards: ``README.md`` with YAML front matter (machine-readable facts) and a short text."""
from __future__ import annotations

import os
from pathlib import Path

import yaml


def write_card(folder: str | os.PathLike, meta: dict, body: str) -> Path:
    """Write ``folder/README.md``: ``---`` YAML ``meta`` ``---`` then ``body`` (Markdown)."""
    path = Path(folder) / "README.md"
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=120)
    path.write_text(f"---\n{front}---\n\n{body.strip()}\n", encoding="utf-8")
    return path


def read_card(path: str | os.PathLike) -> dict:
    """The YAML front matter of a card file as a dict (``{}`` for a card without front matter)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    if end < 0:
        raise ValueError(f"{path}: unterminated YAML front matter (no closing '---')")
    meta = yaml.safe_load(text[4:end]) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: YAML front matter is not a mapping")
    return meta
