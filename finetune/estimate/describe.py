"""What a memory estimate reads of a model: its configs and its safetensors headers, never a weight.

A *description* is plain JSON (so a Hub crawler can build one from ``model_index.json``, the components'
``config.json`` and HTTP range reads of the safetensors headers)::

    {"source": "path or id", "pipeline": "StableDiffusionPipeline",
     "components": {
        "unet": {"library": "diffusers", "class": "UNet2DConditionModel", "config": {...},
                 "tensors": {"conv_in.weight": {"dtype": "F32", "shape": [320, 4, 3, 3]}, ...}},
        "text_encoder": {...}, "vae": {...},
        "tokenizer": {"model_max_length": 77}}}

``tensors`` may be empty (configs alone are enough to build the module skeleton); when present they give
the stored bytes and are checked against the skeleton's parameter count.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

# safetensors dtype names -> bytes per element
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MODULE_COMPONENTS = ("unet", "transformer", "text_encoder", "vae")
MAX_HEADER = 100 * 2**20  # the safetensors format's own limit on the header size


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """``{tensor name: {"dtype", "shape"}}`` from a safetensors file's header: its first 8 bytes (little-endian
    header length) and the JSON after them. Reads nothing else, so a file whose data is absent or truncated
    still describes its tensors."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise ValueError(f"{path}: safetensors header length {n} is over the format's limit")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable safetensors header: {e}") from None
    return {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in header.items() if k != "__metadata__"}


def tensor_bytes(tensors: dict) -> int:
    """Stored bytes of a ``{name: {"dtype", "shape"}}`` mapping."""
    total = 0
    for name, t in tensors.items():
        n = 1
        for d in t["shape"]:
            n *= int(d)
        total += n * DTYPE_BYTES.get(t["dtype"], 4)
    return total


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON: {e}") from None


def describe_components(folder: str | os.PathLike) -> dict:
    """The description (module doc) of a local diffusers folder: ``model_index.json``, each module
    component's ``config.json`` and the headers of its ``*.safetensors`` files, and the tokenizer's
    ``model_max_length``. Raises ``ValueError`` naming the file that is missing or unreadable."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ValueError(f"{folder}: no model_index.json (not a diffusers pipeline folder)")
    index = _read_json(index_path)
    desc = {"source": str(folder), "pipeline": index.get("_class_name"), "components": {}}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[0] is None:
            continue
        sub = folder / name
        if name in MODULE_COMPONENTS:
            cfg_path = sub / "config.json"
            if not cfg_path.is_file():
                raise ValueError(f"{cfg_path}: missing (component {name!r} of {index_path})")
            tensors: dict = {}
            for st in sorted(sub.glob("*.safetensors")):
                tensors.update(read_safetensors_header(st))
            desc["components"][name] = {"library": spec[0], "class": spec[1], "config": _read_json(cfg_path),
                                        "tensors": tensors}
        elif name == "tokenizer":
            tc = sub / "tokenizer_config.json"
            cfg = _read_json(tc) if tc.is_file() else {}
            desc["components"]["tokenizer"] = {"library": spec[0], "class": spec[1],
                                               "model_max_length": cfg.get("model_max_length")}
    if not any(n in desc["components"] for n in ("unet", "transformer")):
        raise ValueError(f"{index_path}: no unet or transformer component")
    return desc


def _plain_config(module) -> dict:
    cfg = module.config
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return json.loads(json.dumps(d, default=str))


def describe_model(model) -> dict:
    """The description of an already-loaded ``T2IModel``: its components' configs and parameter shapes
    (metadata only; no tensor values are read). The model must not be prepared by a method yet."""
    from safetensors.torch import _TYPES  # safetensors' own dtype-name table

    names = {v: k for k, v in _TYPES.items()}
    comps = {}
    den_name = "transformer" if model.is_transformer else "unet"
    for name, module in ((den_name, model.denoiser), ("text_encoder", model.text_encoder), ("vae", model.vae)):
        if module is None:
            continue
        tensors = {n: {"dtype": names.get(t.dtype, "F32"), "shape": list(t.shape)}
                   for n, t in list(module.named_parameters()) + list(module.named_buffers())}
        lib = "diffusers" if type(module).__module__.startswith("diffusers") else "transformers"
        comps[name] = {"library": lib, "class": type(module).__name__, "config": _plain_config(module),
                       "tensors": tensors}
    comps["tokenizer"] = {"library": "transformers", "class": type(model.tokenizer).__name__,
                          "model_max_length": int(model.max_prompt_tokens)}
    return {"source": str(getattr(model, "ref", type(model.pipeline).__name__)),
            "pipeline": type(model.pipeline).__name__, "components": comps}
