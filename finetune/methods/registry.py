"""The method registry: one module per method, each registering a :class:`~finetune.methods.base.Method`."""
from __future__ import annotations

import difflib

METHODS: dict[str, type] = {}


def register(cls):
    """Class decorator: ``METHODS[cls.name] = cls``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type:
    """The method class called ``name``; a clear error listing the known ones otherwise."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown fine-tuning method {name!r}.{hint} Known: {', '.join(METHODS)}")
    return METHODS[name]
