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

:func:`describe_components` reads a local folder; :func:`describe_hub` builds the same description for a Hub
repo from its small JSON files (``hf_hub_download`` into the HF cache) and ranged reads of its safetensors
headers (``HfApi.parse_safetensors_file_metadata``), so a Hub model is estimated before anything is downloaded.
"""
from __future__ import annotations

import copy
import json
import os
import re
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


# Hub descriptions: per process, and on disk for a pinned commit (immutable), so that a second plan of the
# same crawled model needs no network (HF_HUB_OFFLINE=1 works once it has been described online).
_HUB_MEMO: dict[tuple, dict] = {}
_SHA = re.compile(r"^[0-9a-f]{40}$")


def _hub_cache_file(endpoint: str, repo_id: str, sha: str) -> Path:
    import hashlib

    from data.io import mandc_home

    key = hashlib.sha256(f"{endpoint}\n{repo_id}\n{sha}".encode()).hexdigest()[:32]
    return mandc_home() / "cache" / "descriptions" / f"{key}.json"


def describe_hub(repo_id: str, revision: str | None = None, *, endpoint: str | None = None,
                 token: str | None = None) -> dict:
    """The description (module doc) of Hub pipeline ``repo_id`` at ``revision`` without downloading a weight:
    the file list (``model_info``), ``model_index.json``, each module component's ``config.json`` and the
    tokenizer's config through ``hf_hub_download``, and each component's safetensors headers through ranged
    reads (the files :func:`finetune.weightfiles.component_safetensors` picks). ``source`` is
    ``hub:REPO@SHA``. The endpoint is ``endpoint``, else ``HF_ENDPOINT``, else huggingface_hub's default.
    Raises ``ValueError`` (one line) for a gated, private, missing or unreachable repo, a repo that is not a
    diffusers pipeline, or one whose denoiser has no safetensors weights (pickles are never read)."""
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    from finetune.weightfiles import component_safetensors

    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    where = f"{repo_id}@{revision}" if revision else repo_id
    pinned = bool(revision and _SHA.match(revision))
    key = (endpoint, repo_id, revision)
    if key in _HUB_MEMO:
        return copy.deepcopy(_HUB_MEMO[key])
    if pinned:
        try:
            desc = json.loads(_hub_cache_file(endpoint, repo_id, revision).read_text())
            _HUB_MEMO[key] = desc
            return copy.deepcopy(desc)
        except (OSError, ValueError):
            pass
    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(repo_id, revision=revision)
        sha = info.sha or revision
        files = sorted(s.rfilename for s in info.siblings or [])
        if "model_index.json" not in files:
            raise ValueError(f"Hub model {where} is not a diffusers pipeline (no model_index.json)")

        def get_json(name: str) -> dict:
            path = hf_hub_download(repo_id, name, revision=sha, endpoint=endpoint, token=token)
            return _read_json(Path(path))

        index = get_json("model_index.json")
        desc = {"source": f"hub:{repo_id}@{sha}", "pipeline": index.get("_class_name"), "components": {}}
        for name, spec in index.items():
            if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[0] is None:
                continue
            if name in MODULE_COMPONENTS:
                if f"{name}/config.json" not in files:
                    raise ValueError(f"Hub model {where}: component {name!r} has no config.json")
                weights = component_safetensors(files, name)
                if not weights and name in ("unet", "transformer"):
                    raise ValueError(f"Hub model {where} has no safetensors weights for its {name} (pickle-only "
                                     "weights are never read)")
                tensors: dict = {}
                for f in weights:
                    md = api.parse_safetensors_file_metadata(repo_id, f, revision=sha)
                    tensors.update({n: {"dtype": t.dtype, "shape": list(t.shape)} for n, t in md.tensors.items()})
                desc["components"][name] = {"library": spec[0], "class": spec[1],
                                            "config": get_json(f"{name}/config.json"), "tensors": tensors}
            elif name == "tokenizer":
                cfg = get_json("tokenizer/tokenizer_config.json") if "tokenizer/tokenizer_config.json" in files else {}
                desc["components"]["tokenizer"] = {"library": spec[0], "class": spec[1],
                                                   "model_max_length": cfg.get("model_max_length")}
    except GatedRepoError as e:
        raise ValueError(f"Hub model {where} is gated: accept its terms on the Hub and log in first "
                         f"({_first_line(e)})") from None
    except RepositoryNotFoundError as e:
        raise ValueError(f"Hub model {where} does not exist or is private ({_first_line(e)})") from None
    except (OSError, HfHubHTTPError) as e:  # offline, unreachable, a missing revision or file
        raise ValueError(f"cannot describe Hub model {where} from its headers: {type(e).__name__}: "
                         f"{_first_line(e)}") from None
    if not any(n in desc["components"] for n in ("unet", "transformer")):
        raise ValueError(f"Hub model {where}: its model_index.json has no unet or transformer component")
    _HUB_MEMO[key] = desc
    if pinned or (sha and _SHA.match(sha)):
        from data.io import atomic_write

        try:
            atomic_write(_hub_cache_file(endpoint, repo_id, sha), json.dumps(desc))
        except OSError:  # a read-only $MANDC_HOME only loses the cache
            pass
    return copy.deepcopy(desc)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
