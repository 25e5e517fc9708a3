"""Byte counts as people read them (plans, reports, the CLI)."""
from __future__ import annotations


def fmt_bytes(n: float | None) -> str:
    """``1.23 GiB``, ``456.0 MiB``, ``12.0 KiB``, ``512 B``; ``—`` for None."""
    if n is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
