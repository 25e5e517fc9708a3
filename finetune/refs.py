"""Model references: what a string names, and loading the pipeline it names.

Three forms, tried in this order:

- a **local folder** in diffusers format (has ``model_index.json``);
- ``zoo:NAME`` — a reference-zoo model, built into ``$MANDC_HOME/zoo/NAME`` on first use;
- a **Hub id** ``org/name`` — loaded with ``DiffusionPipeline.from_pretrained``, which works offline only
  when the model is already in the Hugging Face cache.

An existing local folder wins over a Hub id of the same spelling, as in diffusers.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

ZOO_PREFIX = "zoo:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelRefError(ValueError):
    """A model reference that names nothing loadable; the message says what was tried."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. ``kind`` ∈ {local, zoo, hub}; ``value`` is the folder, zoo name or Hub id."""

    kind: str
    value: str

    def __str__(self) -> str:
        return ZOO_PREFIX + self.value if self.kind == "zoo" else self.value


def parse_model_ref(ref: str | os.PathLike) -> ModelRef:
    """Classify ``ref`` without loading or building anything; raise :class:`ModelRefError` if it is none
    of the three forms (or a folder that is not a diffusers pipeline, or an unknown zoo name)."""
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str) or not ref.strip():
        raise ModelRefError(f"model reference must be a non-empty string or path, got {ref!r}")
    if ref.startswith(ZOO_PREFIX):
        from finetune.zoo import get_spec

        return ModelRef("zoo", get_spec(ref[len(ZOO_PREFIX):]).name)
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
                        "Hub id `org/name`")


def _pipeline_class(folder: Path):
    """The class to load ``folder`` with: ours for zoo pipelines, diffusers' auto-resolution otherwise."""
    from diffusers import DiffusionPipeline

    from finetune.pipeline import MandcPixelPipeline

    try:
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as e:
        raise ModelRefError(f"{folder}/model_index.json is unreadable: {e}") from e
    return MandcPixelPipeline if name == MandcPixelPipeline.__name__ else DiffusionPipeline


def load_pipeline(ref: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load the pipeline ``ref`` names (building a zoo model if needed), in ``dtype``, on CPU."""
    parsed = parse_model_ref(ref)
    if parsed.kind == "zoo":
        from finetune.zoo import build

        folder = build(parsed.value)
    elif parsed.kind == "local":
        folder = Path(parsed.value)
    else:
        return _load_from_hub(parsed.value, dtype)
    return _from_pretrained_folder(_pipeline_class(folder), folder, dtype)


def _from_pretrained_folder(cls, folder: Path, dtype: torch.dtype):
    """``cls.from_pretrained(folder)``; a corrupt or truncated weights file or config in it is one
    :class:`ModelRefError` naming the file and what to do, not diffusers' traceback."""
    from finetune.weightfiles import corrupt_weight_files

    try:
        return cls.from_pretrained(str(folder), dtype=dtype)
    except Exception as e:  # noqa: BLE001  (diffusers/safetensors/json raise many types for one bad file)
        bad = corrupt_weight_files(folder)
        if bad:
            path, why = bad[0]
            raise ModelRefError(f"{path}: weights file {why}; copy or download the model again (a zoo model: "
                                f"`mandc zoo build NAME --force`)") from None
        if not isinstance(e, (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError,
                              NotImplementedError)):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelRefError(f"{folder}: cannot be loaded as a diffusers pipeline ({type(e).__name__}: {first}); "
                            f"check its model_index.json and each component's config.json") from None


def _load_from_hub(repo_id: str, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(repo_id, dtype=dtype)
    except (OSError, ValueError) as e:  # huggingface_hub's offline / not-found errors subclass these
        from finetune.zoo import ZOO

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = ("the Hub is offline (HF_HUB_OFFLINE=1)" if offline
               else "the Hub is unreachable or the repository does not exist")
        raise ModelRefError(
            f"could not load {repo_id!r} from the Hugging Face Hub: {why} and it is not in the local cache. "
            f"Use a local diffusers folder or a reference-zoo model instead, e.g. zoo:{next(iter(ZOO))} "
            f"(all: {', '.join(ZOO)}). Original error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
