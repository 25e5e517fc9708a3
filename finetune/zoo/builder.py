"""Building and caching zoo models.

A model is built on first use into ``$MANDC_HOME/zoo/NAME/`` (default ``~/.cache/mandc``): a diffusers
folder (:class:`finetune.pipeline.MandcPixelPipeline`), a ``README.md`` card and ``samples.png``.
Builds are atomic: everything is written into a temporary sibling folder, which is renamed into place
last, under a per-model file lock, so a half-built or concurrently built model never looks built.

Pretraining data are catalog datasets of the spec's mixture, drawn with seeds ``≠ 0`` (the canonical
evaluation data are seed 0, so no zoo model has seen them). Each family gets its mixture weight, spread
evenly over its examples; batches are drawn with those weights.

**The shared MiniLM.** Every zoo model carries the same frozen 88 MB text encoder. Its weight file is
stored once, in a content-addressed store ``$MANDC_HOME/zoo/.blobs/<sha256>``, and each model's
``text_encoder/model.safetensors`` is a *hard link* to it (a plain copy where the filesystem cannot link).
So each model folder stays an ordinary, self-contained diffusers folder — deleting one model, or the
store, never breaks another — while the disk holds one copy. The blob is made read-only, and
:meth:`finetune.model.T2IModel.save_pretrained` refuses to write into the zoo cache, because an in-place
write through one link would change every model's text encoder.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from data.io import mandc_home
from finetune.errors import ModelRefError
from finetune.zoo.card import read_card, write_card
from finetune.zoo.specs import PRETRAIN_SEED, PROMPT_TOKENS, SCHEDULER_CONFIG, ZOO, ZooSpec

GRID_PROMPTS = 24        # samples in each model's card grid (3 rows of 8)
GRID_GUIDANCE = 2.0      # classifier-free guidance scale used for the card grid
GRID_STEPS = 25          # DDIM steps for the card grid
_SHARED_MIN_BYTES = 1 << 20  # text-encoder files at least this big go to the shared store
P_UNCOND = 0.1           # caption dropout while pretraining, so classifier-free guidance works later
GRAD_CLIP = 1.0          # global-norm gradient clipping while pretraining


def zoo_home() -> Path:
    """Folder holding the built zoo models: ``mandc_home()/zoo``."""
    return mandc_home() / "zoo"


def get_spec(name: str) -> ZooSpec:
    """The :class:`ZooSpec` called ``name``; an unknown name raises an error that lists the zoo."""
    try:
        return ZOO[name]
    except (KeyError, TypeError):
        raise ModelRefError(f"unknown zoo model {name!r}; the zoo has: {', '.join(ZOO)}") from None


def zoo_path(name: str) -> Path:
    """Where model ``name`` lives once built (whether or not it is built yet)."""
    return zoo_home() / get_spec(name).name


def is_built(name: str) -> bool:
    """True when ``name`` is completely built (the card is written last, inside the atomic rename)."""
    p = zoo_path(name)
    return (p / "model_index.json").is_file() and (p / "README.md").is_file()


def load_card(name: str) -> dict:
    """The YAML front matter of ``name``'s model card; raises if the model is not built."""
    if not is_built(name):
        raise FileNotFoundError(f"zoo model {name!r} is not built yet (expected at {zoo_path(name)}); "
                                f"build it with finetune.zoo.build({name!r})")
    return read_card(zoo_path(name) / "README.md")


def spec_parameters(spec: ZooSpec | str) -> int:
    """Denoiser parameter count of a spec (or zoo name), without building or allocating weights."""
    import torch
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    spec = get_spec(spec) if isinstance(spec, str) else spec
    cls = UNet2DConditionModel if spec.family == "unet" else PixArtTransformer2DModel
    with torch.device("meta"):  # shapes only
        return sum(p.numel() for p in cls(**spec.denoiser).parameters())


# ---------------------------------------------------------------------------------------------- building
def new_pipeline(spec: ZooSpec):
    """A freshly initialised :class:`MandcPixelPipeline` for ``spec`` (seeded with ``spec.seed``)."""
    import torch
    from diffusers import DDPMScheduler, PixArtTransformer2DModel, UNet2DConditionModel
    from transformers import AutoTokenizer, BertModel

    from data.text import minilm_path
    from finetune.pipeline import MandcPixelPipeline

    torch.manual_seed(spec.seed)
    cls = UNet2DConditionModel if spec.family == "unet" else PixArtTransformer2DModel
    denoiser = cls(**spec.denoiser)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.model_max_length = PROMPT_TOKENS  # T2IModel pads/truncates prompts to this length
    text_encoder = BertModel.from_pretrained(minilm_path())
    kind = "unet" if spec.family == "unet" else "transformer"
    return MandcPixelPipeline(scheduler=DDPMScheduler(**SCHEDULER_CONFIG), text_encoder=text_encoder,
                              tokenizer=tokenizer, **{kind: denoiser})


# caption -> MiniLM states [24, 384]; valid across zoo models, which all share one frozen text encoder
_CAPTION_CACHE: dict = {}


@functools.lru_cache(maxsize=None)
def _catalog_pairs(dataset: str, n: int):
    """``(pixels [n, 3, 32, 32], captions)`` of one catalog dataset at the pretraining seed, both splits
    (cached per process: zoo models share pretraining data)."""
    import torch

    from data.catalog import load_builtin

    ds = load_builtin(dataset, seed=PRETRAIN_SEED, n=n)
    pixels = torch.cat([ds.train.to_tensor(32), ds.heldout.to_tensor(32)])
    return pixels, tuple(ds.train.captions) + tuple(ds.heldout.captions)


def pretraining_data(spec: ZooSpec, model):
    """``(TrainData, datasets, captions)`` for ``spec``'s mixture: every catalog dataset of each mixture
    family, with per-example weights ``w_family / (Σw · n_family)``; each distinct caption encoded once."""
    import torch

    from data.catalog import list_catalog
    from finetune.methods import TrainData

    total = sum(spec.mixture.values())
    pixels, captions, weights, datasets = [], [], [], []
    for family, w in spec.mixture.items():
        entries = sorted(list_catalog(family), key=lambda e: e.name)
        if not entries:
            raise ValueError(f"zoo spec {spec.name}: the catalog has no datasets of family {family!r}")
        fam_px, fam_caps = [], []
        for e in entries:
            px, caps = _catalog_pairs(e.name, spec.per_dataset)
            fam_px.append(px)
            fam_caps += caps
            datasets.append(e.name)
        n = len(fam_caps)
        pixels += fam_px
        captions += fam_caps
        weights.append(torch.full((n,), w / (total * n), dtype=torch.float64))
    emb, index = _encode_captions(model, captions)
    data = TrainData(x0=torch.cat(pixels).float(), prompts=captions, cond=emb, cond_index=index,
                     weights=torch.cat(weights))
    return data, datasets, captions


def _encode_captions(model, captions: list[str], batch_size: int = 256):
    """``(embeddings [U, L, D], index [N])``: each distinct caption encoded once with ``model.encode_prompt``,
    read from and added to the process-wide ``_CAPTION_CACHE``."""
    import torch

    unique = list(dict.fromkeys(captions))
    todo = [c for c in unique if c not in _CAPTION_CACHE]
    with torch.no_grad():
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            _CAPTION_CACHE.update(zip(chunk, model.encode_prompt(chunk).cpu()))
    pos = {c: i for i, c in enumerate(unique)}
    return (torch.stack([_CAPTION_CACHE[c] for c in unique]),
            torch.tensor([pos[c] for c in captions], dtype=torch.long))


def _grid_prompts(spec: ZooSpec, captions: list[str], data) -> list[str]:
    """``GRID_PROMPTS`` pretraining captions drawn with the mixture weights (seeded), i.e. the model's domain."""
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    idx = torch.multinomial(data.weights, GRID_PROMPTS, replacement=False, generator=g)
    return [captions[i] for i in idx.tolist()]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _share_text_encoder(folder: Path) -> None:
    """Replace big text-encoder files in ``folder`` by hard links into the content-addressed store."""
    store = zoo_home() / ".blobs"
    store.mkdir(parents=True, exist_ok=True)
    for f in sorted((folder / "text_encoder").iterdir()):
        if not f.is_file() or f.stat().st_size < _SHARED_MIN_BYTES:
            continue
        blob = store / _sha256(f)
        try:
            if not blob.exists():  # first model with this file: the file itself becomes the blob
                tmp = blob.with_name(f"{blob.name}.{os.getpid()}.tmp")
                os.link(f, tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, blob)
            if not os.path.samefile(f, blob):
                link = f.with_name(f.name + ".link")
                os.link(blob, link)
                os.replace(link, f)
        except OSError:  # no hard links here (other filesystem, FAT...): keep the private copy
            continue


@contextlib.contextmanager
def _build_lock(name: str):
    """Exclusive per-model lock file, so two processes never build the same model at once."""
    zoo_home().mkdir(parents=True, exist_ok=True)
    with open(zoo_home() / f".{name}.lock", "w") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock, the atomic rename still protects readers
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("mandc", "torch", "diffusers", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def build(name: str, force: bool = False, steps: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> Path:
    """Build zoo model ``name`` (if needed) and return its folder.

    A built model is reused unless ``force`` is set or ``steps`` asks for a different step count than the
    one it was built with (``steps`` overrides the spec's, for quick builds in tests and demos).
    ``progress(done_steps, total_steps)`` is called after every training step.

    A descendant (``spec.parent``) first builds its parent if needed (with the parent's own steps) and
    starts from the parent's weights. Rebuilding a parent does not rebuild its built descendants.
    """
    from finetune.images import save_grid
    from finetune.model import T2IModel

    spec = get_spec(name)
    final = zoo_path(name)
    with _build_lock(spec.name):
        if is_built(name) and not force and (steps is None or load_card(name).get("steps") == steps):
            return final
        for stale in zoo_home().glob(f".{spec.name}.build-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.build-", dir=zoo_home()))
        try:
            if spec.parent is None:
                model = T2IModel(new_pipeline(spec))
                lineage = []
            else:
                from finetune.pipeline import MandcPixelPipeline

                model = T2IModel(MandcPixelPipeline.from_pretrained(str(build(spec.parent))))
                lineage = load_card(spec.parent)["lineage"]
            data, datasets, captions = pretraining_data(spec, model)
            config = pretraining_config(spec, steps)
            t_train = time.perf_counter()
            losses = pretrain_(model, data, config, progress)
            t_train = time.perf_counter() - t_train
            model.pipeline.save_pretrained(str(tmp))
            _share_text_encoder(tmp)
            prompts = _grid_prompts(spec, captions, data)
            images = model.sample(prompts, steps=GRID_STEPS, seed=0, guidance_scale=GRID_GUIDANCE)
            save_grid(images, tmp / "samples.png", nrow=8)
            meta = _card_meta(spec, model, config, losses, t_train, datasets, len(data), lineage,
                              time.perf_counter() - t0)
            write_card(tmp, meta, _card_body(spec, meta, prompts))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model folder is an ordinary shared folder
            if final.exists():  # force: move the old build aside first (a directory rename is atomic)
                old = Path(tempfile.mkdtemp(prefix=f".{spec.name}.build-old-", dir=zoo_home()))
                os.replace(final, old / "model")
            os.replace(tmp, final)
        finally:
            for leftover in zoo_home().glob(f".{spec.name}.build-*"):
                shutil.rmtree(leftover, ignore_errors=True)
    return final


def pretraining_config(spec: ZooSpec, steps: int | None = None) -> dict:
    """The ``full`` method's config that pretrains ``spec`` (``steps`` overrides the spec's step count)."""
    return {"steps": spec.steps if steps is None else steps, "batch_size": spec.batch_size, "lr": spec.lr,
            "warmup_steps": spec.warmup_steps, "snr_gamma": spec.snr_gamma, "seed": spec.seed,
            "p_uncond": P_UNCOND, "max_grad_norm": GRAD_CLIP, "checkpoint_every": 0}


def pretrain_(model, data, config: dict, progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Train ``model``'s denoiser in place on ``data`` with the ``full`` method and ``config`` (see
    :func:`pretraining_config`), through the one training loop; returns the per-step losses (none for 0
    steps: the weights stay as they are, e.g. a descendant's copy of its parent)."""
    import torch

    if config["steps"] == 0:
        model.denoiser.eval()
        return []

    from finetune.methods import get_method
    from finetune.train import train_

    cls = get_method("full")
    m = cls(model, cls.Config.from_dict(config))
    m.config.validate()
    m.setup_()
    m.optimizer = m.make_optimizer()
    losses, _ = train_(m, data, torch.Generator("cpu").manual_seed(m.config.seed), progress=progress)
    model.denoiser.eval()
    return losses


def _card_meta(spec: ZooSpec, model, config: dict, losses: list[float], train_s: float, datasets: list[str], n_images: int, lineage: list[dict],
               seconds: float) -> dict:
    total = sum(spec.mixture.values())
    mixture = {k: round(v / total, 4) for k, v in spec.mixture.items()}
    tail = losses[-50:]
    # dict(mixture): a copy, so the YAML card spells it out instead of using an &anchor
    lineage = lineage + [{"model": spec.name, "mixture": dict(mixture), "steps": config["steps"]}]
    return {
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": ["mandc-zoo", "pixel-space", spec.family],
        "name": spec.name,
        "family": spec.family,
        "description": spec.description,
        "denoiser_class": type(model.denoiser).__name__,
        "parameters": {"denoiser": model.num_parameters("denoiser"),
                       "text_encoder": model.num_parameters("text_encoder")},
        "mixture": mixture,
        "parent": spec.parent,
        # lineage as a Hub card states it (what ``mandc.hub`` reads): continued pretraining = a fine-tune
        **({"base_model": f"zoo:{spec.parent}", "base_model_relation": "finetune"} if spec.parent else {}),
        "lineage": lineage,  # pretraining stages, root first: the weights saw all of them in order
        "total_steps": sum(stage["steps"] for stage in lineage),
        "datasets": datasets,
        "dataset_seed": PRETRAIN_SEED,
        "n_images": n_images,
        "steps": config["steps"],
        "batch_size": config["batch_size"],
        "lr": config["lr"],
        "warmup_steps": config["warmup_steps"],
        "snr_gamma": config["snr_gamma"],
        "seed": spec.seed,
        "final_loss": round(sum(tail) / len(tail), 5) if tail else None,
        "resolution": model.resolution,
        "scheduler": dict(SCHEDULER_CONFIG),
        "denoiser_config": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.denoiser.items()},
        "build_seconds": round(seconds, 1),
        "train_seconds": round(train_s, 1),
        "versions": _versions(),
    }


def _card_body(spec: ZooSpec, meta: dict, prompts: list[str]) -> str:
    mix = ", ".join(f"{k} {v:.0%}" for k, v in meta["mixture"].items())
    lines = [
        f"# {spec.name}",
        "",
        f"{spec.description[0].upper()}{spec.description[1:]}. A pixel-space ({meta['resolution']}×"
        f"{meta['resolution']} RGB) text-to-image model of the mandc reference zoo: "
        f"{meta['denoiser_class']} denoiser with {meta['parameters']['denoiser']:,} parameters, "
        f"conditioned on all-MiniLM-L6-v2 token states ({PROMPT_TOKENS} tokens × 384).",
        "",
        *([f"**Initialised from** `zoo:{spec.parent}` ({meta['total_steps'] - meta['steps']} steps of "
           f"pretraining, see its card), then trained further as below.", ""] if spec.parent else []),
        f"**Pretraining.** {meta['steps']} AdamW steps (batch {meta['batch_size']}, lr {meta['lr']}, "
        f"{meta['warmup_steps']} warmup steps, seed {meta['seed']}, {P_UNCOND:.0%} caption dropout for classifier-free "
        f"guidance, Min-SNR-γ={meta['snr_gamma']} loss weights) on {meta['n_images']} catalog images from "
        f"{len(meta['datasets'])} datasets; mixture: {mix}. "
        f"Final training loss (weighted v-MSE, mean of the last 50 steps): {meta['final_loss']}. Built in "
        f"{meta['build_seconds']} s with torch {meta['versions']['torch']}, diffusers "
        f"{meta['versions']['diffusers']}.",
        "",
        "The catalog images were drawn with seeds other than 0, so the canonical evaluation datasets "
        "(seed 0) are unseen. Noise schedule shared by the whole zoo: DDPM, T=1000, cosine ᾱ, "
        "v-prediction.",
        "",
        "![samples](samples.png)  ",
        f"DDIM {GRID_STEPS} steps, guidance {GRID_GUIDANCE}, seed 0, for these prompts (row by row):",
        "",
        *[f"{i + 1}. {p}" for i, p in enumerate(prompts)],
        "",
        "```python",
        "from finetune.load import load_model",
        f'model = load_model("zoo:{spec.name}")',
        "```",
    ]
    return "\n".join(lines)
