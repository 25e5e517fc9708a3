"""The executor interface shared by the local and the Ray executor."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator


class Executor:
    """Runs ``fn(item)`` for many plain-JSON items; see :mod:`profiler.executors`."""

    name = ""

    def map_unordered(self, fn: Callable[[dict], object], items: Iterable[dict]) -> Iterator[tuple[dict, object]]:
        """Yield ``(item, fn(item))`` as each call finishes (an escaped exception is yielded as the result)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for progress output, e.g. ``local: 2 worker processes``."""
        return self.name
