"""Model features for model selection: a fixed set of numbers per candidate model.

``model_features(ref) -> {name: float}`` with stable keys (:func:`feature_names`):

==================  ==================================================================================
``is_dit``          1 for a transformer denoiser (PixArt/DiT), 0 for a UNet
``log10_params``    log10 of the denoiser's parameter count
``depth``           UNet: resolution levels (``len(block_out_channels)``); DiT: transformer blocks
``width``           UNet: widest level's channels; DiT: hidden size (heads × head dim)
``resolution``      native image side in pixels (denoiser ``sample_size`` × VAE down-sampling)
``text_dim``        width of the text-encoder states it is conditioned on
``pretrain_steps``  optimizer steps of pretraining, ancestors included (0 when unknown)
``mix_<family>``    share of pretraining on each catalog family, one key per family of
                    :func:`data.catalog.families` (0 for all when unknown)
``card_emb_<i>``    i < 16: MiniLM embedding of the model card's description, projected with the fixed
                    ``data.features.projection_matrix()`` (the same 384→16 map as dataset captions,
                    so a model's card and a dataset's captions live in one space)
==================  ==================================================================================

The pretraining mixture of a descendant (a zoo model that continued from a ``parent``) is the
step-weighted mixture of its whole lineage, ``mix = Σ_s steps_s · mix_s / Σ_s steps_s``: what its weights
have seen, not only its last stage.

Sources: a ``zoo:NAME`` reference is described from its :class:`finetune.zoo.ZooSpec` alone (nothing
is built); a local diffusers folder from ``model_index.json``, the denoiser's (and VAE's) ``config.json``,
the weight files' headers (parameter count, without loading) and the ``README.md`` card (YAML front
matter as written by the zoo builder, or its first paragraph of text). A built zoo folder gives the same
features as its ``zoo:`` reference.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

from finetune.refs import ModelRefError, parse_model_ref

CARD_DIM = 16  # = data.features.PROJECTION_DIM
SHAPE_KEYS = ("is_dit", "log10_params", "depth", "width", "resolution", "text_dim", "pretrain_steps")


def _families() -> list[str]:
    from data.catalog import families

    return sorted(families())


def feature_names() -> list[str]:
    """The keys of :func:`model_features`, in order."""
    return list(SHAPE_KEYS) + [f"mix_{f}" for f in _families()] + [f"card_emb_{i}" for i in range(CARD_DIM)]


def model_features(ref: str | os.PathLike) -> dict[str, float]:
    """Numeric features of the model ``ref`` (``zoo:NAME`` or a local diffusers folder); see the module
    docstring. Raises :class:`finetune.refs.ModelRefError` for a reference it cannot describe."""
    return describe_model(ref)["features"]


def describe_model(ref: str | os.PathLike) -> dict:
    """``{"ref", "name", "features", "info"}`` — one line of the reference's ``models.jsonl``.

    ``info`` is free-form: ``family`` (unet/dit), ``params``, ``mixture`` (normalised, lineage-weighted),
    ``description``, ``denoiser_class``, ``parent``.
    """
    parsed = parse_model_ref(ref)
    if parsed.kind == "zoo":
        raw = _from_spec(parsed.value)
    elif parsed.kind == "local":
        raw = _from_folder(Path(parsed.value))
    else:
        raw = _from_folder(_hub_cache_folder(parsed.value, parsed.revision))
    return _describe(raw, str(parsed))


def describe_folder(folder: str | os.PathLike, ref: str, name: str | None = None,
                    params: int | None = None) -> dict:
    """:func:`describe_model` of a diffusers ``folder`` recorded under ``ref``; the folder may hold only the
    configs and card (a Hub snapshot fetched without weights, as the Hub crawl does): ``params`` (from the
    remote safetensors headers) then replaces the count read from local weight files, ``name`` the name."""
    raw = _from_folder(Path(folder))
    if params is not None:
        raw["params"] = int(params)
    if name is not None:
        raw["name"] = name
    return _describe(raw, ref)


def _describe(raw: dict, ref: str) -> dict:
    feats = {
        "is_dit": float(raw["family"] == "dit"),
        "log10_params": math.log10(max(raw["params"], 1)),
        "depth": float(raw["depth"]),
        "width": float(raw["width"]),
        "resolution": float(raw["resolution"]),
        "text_dim": float(raw["text_dim"]),
        "pretrain_steps": float(raw["pretrain_steps"]),
    }
    mixture = raw["mixture"]
    for fam in _families():
        feats[f"mix_{fam}"] = float(mixture.get(fam, 0.0))
    for i, v in enumerate(card_embedding(raw["description"])):
        feats[f"card_emb_{i}"] = float(v)
    info = {"family": raw["family"], "params": int(raw["params"]), "mixture": mixture,
            "description": raw["description"], "denoiser_class": raw["denoiser_class"], "parent": raw.get("parent")}
    return {"ref": ref, "name": raw["name"], "features": feats, "info": info}


def card_embedding(text: str):
    """``[16]`` float array: the MiniLM sentence embedding of ``text`` times the fixed projection."""
    import numpy as np

    from data.features import projection_matrix
    from data.text import embed_captions

    if not text.strip():
        return np.zeros(CARD_DIM, dtype=np.float32)
    e = embed_captions([text])[0].astype(np.float64)
    return (e @ projection_matrix()).astype(np.float32)


def lineage_mixture(stages: list[dict]) -> dict[str, float]:
    """Step-weighted mixture over pretraining ``stages`` (``[{"mixture": {fam: w}, "steps": n}, ...]``),
    each stage's mixture normalised first; families in sorted order, summing to 1 (``{}`` if no steps)."""
    total = sum(max(0, int(s.get("steps", 0))) for s in stages)
    out: dict[str, float] = {}
    for s in stages:
        mix, steps = s.get("mixture") or {}, max(0, int(s.get("steps", 0)))
        z = sum(mix.values())
        if total <= 0 or z <= 0:
            continue
        for fam, w in mix.items():
            out[fam] = out.get(fam, 0.0) + steps / total * w / z
    return {k: round(out[k], 6) for k in sorted(out)}


# ------------------------------------------------------------------------------------ zoo specs
def _from_spec(name: str) -> dict:
    from finetune.zoo import ZOO, get_spec, spec_parameters

    spec = get_spec(name)
    stages, cur = [], spec
    while cur is not None:  # root first, like the card's lineage
        stages.insert(0, {"mixture": dict(cur.mixture), "steps": cur.steps})
        cur = ZOO[cur.parent] if cur.parent else None
    shape = _denoiser_shape("UNet2DConditionModel" if spec.family == "unet" else "PixArtTransformer2DModel",
                            spec.denoiser)
    return {"name": spec.name, "family": spec.family, "params": spec_parameters(spec), **shape,
            "resolution": int(spec.denoiser["sample_size"]), "pretrain_steps": sum(s["steps"] for s in stages),
            "mixture": lineage_mixture(stages), "description": spec.description, "parent": spec.parent,
            "denoiser_class": shape["denoiser_class"]}


def _denoiser_shape(cls_name: str, cfg: dict) -> dict:
    """``depth``, ``width``, ``text_dim`` and the family from a denoiser config dict."""
    if "Transformer" in cls_name or "num_layers" in cfg and "block_out_channels" not in cfg:
        heads, head_dim = int(cfg.get("num_attention_heads", 0)), int(cfg.get("attention_head_dim", 0))
        text_dim = cfg.get("caption_channels") or cfg.get("cross_attention_dim") or cfg.get("joint_attention_dim") or 0
        return {"family": "dit", "denoiser_class": cls_name, "depth": int(cfg.get("num_layers", 0)),
                "width": heads * head_dim, "text_dim": int(text_dim)}
    channels = list(cfg.get("block_out_channels") or [])
    if not channels:
        raise ModelRefError(f"denoiser config of class {cls_name} has neither block_out_channels nor num_layers")
    text_dim = cfg.get("cross_attention_dim") or 0
    text_dim = max(text_dim) if isinstance(text_dim, (list, tuple)) else text_dim
    return {"family": "unet", "denoiser_class": cls_name, "depth": len(channels), "width": max(channels),
            "text_dim": int(text_dim)}


# ------------------------------------------------------------------------------- diffusers folders
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelRefError(f"{path} is missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelRefError(f"{path} is unreadable: {e}") from None


def _from_folder(folder: Path) -> dict:
    index = _read_json(folder / "model_index.json")
    key = next((k for k in ("unet", "transformer") if (index.get(k) or [None])[0]), None)  # [null, null]: absent
    if key is None:
        raise ModelRefError(f"{folder}/model_index.json names neither a 'unet' nor a 'transformer' component")
    cfg = _read_json(folder / key / "config.json")
    shape = _denoiser_shape(str(cfg.get("_class_name", key)), cfg)
    scale = 1
    if index.get("vae") and (folder / "vae" / "config.json").is_file():
        scale = 2 ** (len(_read_json(folder / "vae" / "config.json").get("block_out_channels", [0])) - 1)
    meta, body = _read_card(folder / "README.md")
    stages = meta.get("lineage") or ([{"mixture": meta["mixture"], "steps": meta.get("steps", 0)}]
                                     if isinstance(meta.get("mixture"), dict) else [])
    mixture = lineage_mixture(stages) if stages and sum(int(s.get("steps", 0)) for s in stages) > 0 else \
        _normalised(meta.get("mixture") or {})
    description = str(meta.get("description") or _first_paragraph(body) or folder.name)
    params = _count_parameters(folder / key) or int((meta.get("parameters") or {}).get("denoiser", 0))
    return {"name": str(meta.get("name") or folder.name), **shape, "params": params,
            "resolution": int(cfg.get("sample_size") or 0) * scale,
            "pretrain_steps": int(meta.get("total_steps") or meta.get("steps") or 0), "mixture": mixture,
            "description": description, "parent": meta.get("parent")}


def _normalised(mix: dict) -> dict[str, float]:
    z = sum(float(v) for v in mix.values() if isinstance(v, (int, float)))
    return {k: round(float(v) / z, 6) for k, v in sorted(mix.items())} if z > 0 else {}


def _read_card(path: Path) -> tuple[dict, str]:
    """``(front matter, body)`` of a model card; ``({}, "")`` when there is none."""
    if not path.is_file():
        return {}, ""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith("---\n"):
        from finetune.zoo.card import read_card

        try:
            meta = read_card(path)
        except Exception as e:  # noqa: BLE001 — a malformed card: use its text, say so
            raise ModelRefError(f"{path}: cannot read the card's YAML front matter: {e}") from None
        end = text.find("\n---", 4)
        return meta, text[end + 4:] if end >= 0 else ""
    return {}, text


def _first_paragraph(body: str, limit: int = 512) -> str:
    """The first paragraph of Markdown prose (headings, images, code, HTML and tables skipped)."""
    para: list[str] = []
    in_code = False
    for line in body.splitlines():
        s = line.strip()
        if s.startswith("```"):
            in_code = not in_code
            continue
        if in_code or s.startswith(("#", "!", "<", "|")):
            if para:
                break
            continue
        if not s:
            if para:
                break
            continue
        para.append(s)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", " ".join(para))  # [text](link) -> text
    return re.sub(r"[*_`]", "", text)[:limit]


def _count_parameters(component: Path) -> int:
    """Parameter count from the component's safetensors headers (sharded or not) without loading
    weights; 0 when there are no safetensors files."""
    files = sorted(component.glob("*.safetensors"))
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelRefError(f"{f}: not a readable safetensors file ({e})") from None
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry.get("shape", []))
    return total


def _hub_cache_folder(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of a Hub model that is already in the Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception as e:  # noqa: BLE001 — offline / not cached / not installed
        raise ModelRefError(f"model features of {repo_id!r} need its files: it is not in the local Hugging Face "
                            f"cache ({type(e).__name__}). Use a local diffusers folder or zoo:NAME.") from None


__all__ = ["CARD_DIM", "card_embedding", "describe_folder", "describe_model", "feature_names", "lineage_mixture", "model_features"]
