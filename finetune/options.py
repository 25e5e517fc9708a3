"""``option``: a dataclass field that carries its ``help`` text (peft style), for every config dataclass
(the fine-tuning methods', the selector's). Standard library only, so any config module can use it."""
from __future__ import annotations

import copy
from dataclasses import field


def option(default, help: str, **kw):
    """A dataclass field with ``default`` and ``metadata={"help": help, **kw}``; a mutable default (dict,
    list, set) becomes a factory of copies, so instances never share it."""
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})
