"""Reading weight files so that a corrupt or truncated one is one line naming it, not a traceback.

A safetensors file is an 8-byte header length, a JSON header of tensor offsets, then the data; the
reader refuses a file whose header does not parse or whose offsets do not cover the data exactly, so a
truncated download or an interrupted copy is caught on open, before any tensor is used.
"""
from __future__ import annotations

from pathlib import Path


class WeightsFileError(ValueError):
    """A weights or checkpoint file that cannot be read; the message names it and what to do."""


def safetensors_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a readable safetensors file (``"truncated or corrupt: <reason>"``), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            f.metadata()
            list(f.keys())
    except FileNotFoundError:
        return "does not exist"
    except Exception as e:  # noqa: BLE001  (safetensors raises its own Rust-side error type)
        return f"truncated or corrupt ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def load_safetensors(path: str | Path, what: str = "weights file", fix: str = "") -> dict:
    """``safetensors.torch.load_file(path)``; raises :class:`WeightsFileError` naming ``path`` when it cannot
    be read. ``fix`` says what to do (default: write or download it again)."""
    from safetensors.torch import load_file

    why = safetensors_problem(path)
    if why:
        raise WeightsFileError(f"{path}: {what} {why}; {fix or 'write or download it again'}")
    return load_file(str(path))


def corrupt_weight_files(folder: str | Path) -> list[tuple[Path, str]]:
    """``(file, why)`` for every unreadable ``*.safetensors`` under ``folder`` (a model folder)."""
    out = []
    for p in sorted(Path(folder).rglob("*.safetensors")):
        why = safetensors_problem(p)
        if why:
            out.append((p, why))
    return out


def component_safetensors(files: list[str], comp: str) -> list[str]:
    """The safetensors files of pipeline component ``comp`` among a repo's ``files`` (paths relative to the
    repo): the plain ones (sharded or not), else one variant's (``fp16``...), the alphabetically first."""
    st = [f for f in files if f.startswith(f"{comp}/") and f.count("/") == 1 and f.endswith(".safetensors")]
    plain = [f for f in st if Path(f).name.count(".") == 1]
    if plain:
        return plain
    variants = sorted({Path(f).name.split(".")[-2] for f in st})
    return [f for f in st if Path(f).name.split(".")[-2] == variants[0]] if variants else []
