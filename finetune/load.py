"""``load_model(ref)``: the one place that turns a model reference into a :class:`~finetune.model.T2IModel`.

It sits above :mod:`finetune.model` (which only wraps a loaded pipeline) and resolves every form of
:func:`finetune.refs.parse_model_ref`:

- a local diffusers folder: loaded as it is;
- ``zoo:NAME``: built into ``$MANDC_HOME/zoo`` on first use (:func:`finetune.zoo.build`), then loaded;
- ``hub:org/name[@REVISION]`` or ``org/name``: the files a ``T2IModel`` needs are downloaded into the normal
  Hugging Face cache with ``snapshot_download(allow_patterns=...)`` (:func:`hub_snapshot`) — the
  pipeline index, the configs, the tokenizer and the **safetensors** weights of the denoiser, text
  encoder and VAE; never a pickle (``.bin``/``.ckpt``), never the components a T2IModel does not use
  (safety checker, feature extractor). With ``HF_HUB_OFFLINE=1`` and those files cached, it loads without
  the network. The endpoint is ``HF_ENDPOINT`` (read at call time), else huggingface_hub's default.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from finetune.model import T2IModel
from finetune.refs import ModelRefError, parse_model_ref

#: The pipeline components a T2IModel uses; the others in a Hub pipeline are neither fetched nor loaded.
T2I_COMPONENTS = ("unet", "transformer", "text_encoder", "tokenizer", "vae", "scheduler")
#: Weight formats that unpickle code; a Hub snapshot never fetches them.
PICKLE_PATTERNS = ("*.bin", "*.ckpt", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.msgpack", "*.h5", "*.onnx")

__all__ = ["PICKLE_PATTERNS", "T2I_COMPONENTS", "hub_allow_patterns", "hub_snapshot", "load_model",
           "load_pipeline", "model_folder", "pipeline_class", "unused_components"]


def load_model(ref: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> T2IModel:
    """The :class:`T2IModel` that ``ref`` names (folder, ``zoo:NAME``, ``hub:org/name[@rev]``, ``org/name``),
    on ``device`` in ``dtype``. Raises :class:`finetune.refs.ModelRefError` naming what was tried."""
    folder = model_folder(ref)
    return T2IModel.from_pretrained(folder, device=device, dtype=dtype, pipeline_class=pipeline_class(folder),
                                    **unused_components(folder))


def load_pipeline(ref: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """The diffusers pipeline ``ref`` names, in ``dtype``, on CPU (weights file-mapped, not materialised)."""
    folder = model_folder(ref)
    return pipeline_class(folder).from_pretrained(str(folder), dtype=dtype, **unused_components(folder))


def unused_components(folder: str | os.PathLike) -> dict:
    """``{name: None}`` for the pipeline components a T2IModel does not use (safety checker, feature
    extractor, image encoder...): they are not loaded, and a Hub snapshot does not hold them."""
    index = _model_index(Path(folder))
    return {k: None for k, v in index.items() if not k.startswith("_") and k not in T2I_COMPONENTS
            and isinstance(v, (list, tuple)) and v and v[0] is not None}


def _model_index(folder: Path) -> dict:
    try:
        return json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelRefError(f"{folder}/model_index.json is unreadable: {e}") from None


def pipeline_class(folder: str | os.PathLike):
    """The class to load ``folder`` with: ours for zoo pipelines, diffusers' auto-resolution otherwise."""
    from diffusers import DiffusionPipeline

    from finetune.pipeline import MandcPixelPipeline

    name = _model_index(Path(folder)).get("_class_name")
    return MandcPixelPipeline if name == MandcPixelPipeline.__name__ else DiffusionPipeline


def model_folder(ref: str | os.PathLike) -> Path:
    """A local diffusers folder holding ``ref``: the folder itself, the built zoo model (built now if
    needed) or the Hub snapshot in the HF cache (downloaded now if needed, see :func:`hub_snapshot`)."""
    parsed = parse_model_ref(ref)
    if parsed.kind == "zoo":
        from finetune.zoo import build

        return Path(build(parsed.value))
    if parsed.kind == "local":
        return Path(parsed.value)
    return hub_snapshot(parsed.value, parsed.revision)


def hub_allow_patterns(model_index: dict) -> list[str]:
    """``snapshot_download`` patterns for the T2IModel components of a pipeline's ``model_index.json``."""
    pats = ["model_index.json"]
    for comp in T2I_COMPONENTS:
        spec = model_index.get(comp)
        if isinstance(spec, (list, tuple)) and spec and spec[0] is not None:
            pats += [f"{comp}/*.json", f"{comp}/*.txt", f"{comp}/*.model", f"{comp}/*.safetensors"]
    return pats


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None  # None: huggingface_hub's own default


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of Hub model ``repo_id`` at ``revision`` with what a T2IModel needs,
    downloaded into the HF cache (only files not cached yet); offline, the cached snapshot.

    Raises :class:`ModelRefError` for a repo that is not a diffusers pipeline, has no safetensors
    weights for its denoiser (pickle-only), is gated/private, or is neither reachable nor cached."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        index_file = hf_hub_download(repo_id, "model_index.json", revision=revision, endpoint=_endpoint())
        index = json.loads(Path(index_file).read_text(encoding="utf-8"))
        folder = Path(snapshot_download(repo_id, revision=revision, endpoint=_endpoint(),
                                        allow_patterns=hub_allow_patterns(index),
                                        ignore_patterns=list(PICKLE_PATTERNS)))
    except GatedRepoError as e:
        raise ModelRefError(f"Hub model {where} is gated: accept its terms on the Hub and log in "
                            f"(`hf auth login`) first ({_first_line(e)})") from None
    except RepositoryNotFoundError as e:
        raise ModelRefError(f"Hub model {where} does not exist or is private ({_first_line(e)})") from None
    except (OSError, ValueError, HfHubHTTPError) as e:  # offline / not cached / unreachable
        offline = constants.is_offline_mode()
        why = ("the Hub is offline (HF_HUB_OFFLINE=1)" if offline
               else "the Hub is unreachable or the repository/revision does not exist")
        raise ModelRefError(
            f"could not load {where!r} from the Hugging Face Hub: {why} and it is not in the local cache. "
            f"Use a local diffusers folder or a reference-zoo model instead, e.g. zoo:unet-xs-gradients. "
            f"Original error: {type(e).__name__}: {_first_line(e)}") from None
    den = "unet" if index.get("unet") and index["unet"][0] else "transformer"
    if not list((folder / den).glob("*.safetensors")):
        raise ModelRefError(f"Hub model {where} has no safetensors weights for its {den} (pickle-only "
                            "weights are never loaded)")
    return folder


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""
