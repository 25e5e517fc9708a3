"""Quantities as people write and read them: byte counts (plans, reports, the CLI), parameter counts, scores."""
from __future__ import annotations

import re

_NUMBER_UNIT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*")


def scaled_number(value, units: dict[str, float]) -> float | None:
    """``value`` — a number, or a string such as ``"8GiB"``, ``"1.5 B"``, ``"1e9"`` — times its unit's scale
    from ``units`` (lower-case unit → factor; ``""`` for no unit), as a float; None when it is not a number
    with one of those units. Finiteness and sign are the caller's to check."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = _NUMBER_UNIT.fullmatch(str(value))
    unit = m.group(2).lower() if m else None
    if unit not in units:
        return None
    return float(m.group(1)) * units[unit]


def fmt_bytes(n: float | None) -> str:
    """``1.23 GiB``, ``456.0 MiB``, ``12.0 KiB``, ``512 B``; ``—`` for None."""
    if n is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_score(score: float, interval=None) -> str:
    """A ranking score, ``0.523``, or with its ``[low, high]`` interval ``0.523 ± 0.041`` (half its width)."""
    if not interval:
        return f"{score:.3f}"
    return f"{score:.3f} ± {(interval[1] - interval[0]) / 2:.3f}"

