"""``estimate_memory``: the peak memory of one fine-tuning run, from configs and safetensors headers only.

The estimate is the sum of terms, each in bytes (``MemoryEstimate.terms``):

- ``step``: the peak of two training steps on fake tensors (:func:`finetune.estimate.dryrun.dry_steps`):
  the denoiser's weights as the method leaves them (quantized layers at their bits: packed codes, zero
  points and per-channel scales), its trainable tensors, their gradients, the optimizer's state, the
  activations and temporaries of forward and backward; the text encoder too when the method trains
  through it. Reported split as ``weights``, ``gradients``, ``optimizer``, ``activations`` (the tracker's
  categories at that peak; ``trainable_params`` is the bytes of the tensors the optimizer updates, a part
  of ``weights``).
- ``text_encoder``, ``vae``: the frozen components' weights at the width the method leaves them.
- ``data``: the training images encoded once (``x0`` ``[N, C, h, w]``) and, with a frozen text encoder,
  their prompt embeddings ``[N, L, D]``.
- ``encode``: encoding the images through the VAE happens before training; it counts only where its
  transient exceeds the step's activations (``max``, not a sum).
- ``offset``: the device's fixed cost the tracker cannot see. CPU: the growth of a process's RSS in its
  first training run (thread pools, kernels' workspaces, allocator arenas): the gap between a process's
  first run and its later ones under ``finetune.memory.PeakMemory``. CUDA: a constant for the CUDA
  context and library workspaces from published context sizes, **not calibrated** (no GPU was lent).
- ``slack``: the allocator's slack over live tensor bytes (CPU: a round 2%, checked against the measured
  peaks of ``benchmarks/memory_estimate.py``; CUDA: 0, its meter counts tensor bytes).

``expected`` is the sum; ``low``/``high`` are a band around it (``BAND``) that covers what the
calibration runs showed, ``high`` being what a planner checks against a budget.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch._subclasses.fake_tensor import FakeTensorMode

from finetune.estimate.describe import describe_components, describe_hub, describe_model, tensor_bytes
from finetune.estimate.dryrun import dry_encode, dry_steps, module_bytes, prepare_, shape_model

MiB = 2**20
#: fixed offset per device type, bytes (see module doc for what each is and how it was obtained)
DEVICE_OFFSET = {"cpu": 48 * MiB, "cuda": 512 * MiB}
#: allocator slack over live tensor bytes, per device type (fraction)
SLACK = {"cpu": 0.02, "cuda": 0.0}
#: (low, high) multipliers of ``expected``
BAND = (0.90, 1.15)
ENCODE_CHUNK = 16  # finetune.runner.encode_train_data's batch


@dataclass
class MemoryEstimate:
    """Peak memory of one method on one model (bytes), with the terms that make it up."""

    method: str
    low_bytes: int
    expected_bytes: int
    high_bytes: int
    terms: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"
    basis: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryEstimate":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in ("method", "low_bytes", "expected_bytes", "high_bytes") if n not in d)
        if missing:
            raise ValueError(f"MemoryEstimate: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"MemoryEstimate: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def fits(self, budget_bytes: int) -> bool:
        return self.high_bytes <= budget_bytes


def _resolve_description(model) -> dict:
    """A description from a ``T2IModel``, a description dict, a folder, ``zoo:NAME`` (already built) or a Hub
    reference ``hub:org/name[@rev]`` / ``org/name`` (:func:`describe_hub`: configs and headers only)."""
    if isinstance(model, dict):
        return model
    if hasattr(model, "denoiser") and hasattr(model, "pipeline"):
        return describe_model(model)
    ref = str(model)
    if ref.startswith("zoo:"):
        from finetune.zoo import is_built, zoo_path

        name = ref[4:]
        if not is_built(name):
            raise ValueError(f"{ref} is not built yet; the estimate reads a built model's configs and headers "
                             f"(build it with `mandc zoo build {name}` or pass a folder)")
        return describe_components(zoo_path(name))
    if Path(ref).is_dir():
        return describe_components(ref)
    from finetune.refs import ModelRefError, parse_model_ref

    try:
        parsed = parse_model_ref(ref)
    except ModelRefError:
        parsed = None
    if parsed is not None and parsed.kind == "hub":  # configs + ranged header reads; no weights downloaded
        return describe_hub(parsed.value, parsed.revision)
    raise ValueError(f"cannot estimate memory for {ref!r}: not a folder, a built zoo:NAME, a Hub model "
                     "(hub:org/name[@rev]), a T2IModel or a description")


def estimate_memory(model, method: str, config=None, *, device: str = "cpu", batch: int | None = None,
                    resolution: int | None = None, bitplan: dict | None = None,
                    n_images: int | None = None) -> MemoryEstimate:
    """Estimate the peak memory of fine-tuning ``model`` with ``method`` (see module doc).

    Args:
        model: a diffusers folder, ``zoo:NAME`` (only if built: nothing is built here), a Hub model
            ``hub:org/name[@rev]`` (described from its configs and safetensors headers, see
            :func:`finetune.estimate.describe.describe_hub`: no weight is downloaded), a loaded
            ``T2IModel`` (not yet prepared by a method), or a description (:func:`describe_components`).
            A folder is read through its configs and safetensors headers only.
        method: a registered method name.
        config: the method's config (dataclass or dict of overrides), as ``finetune.run`` takes it.
        device: ``"cpu"`` or ``"cuda"`` (only the fixed offset and slack differ).
        batch: images per step (default: the config's ``batch_size``).
        resolution: image size in pixels (default: the model's sample size).
        bitplan: a BitPlan dict ``{"layers": {fqn: {"w_bits", "a_bits"}}}``: for a method that quantizes by
            a plan (its config has ``plan``), the denoiser's layers are counted at those bits.
        n_images: training images encoded once before training (default: 16, one encoding batch).
    """
    return estimate_from_description(_resolve_description(model), method, config, device=device, batch=batch,
                                     resolution=resolution, bitplan=bitplan, n_images=n_images)


def estimate_from_description(desc: dict, method: str, config=None, *, device: str = "cpu",
                              batch: int | None = None, resolution: int | None = None,
                              bitplan: dict | None = None, n_images: int | None = None) -> MemoryEstimate:
    """:func:`estimate_memory` on a description (``describe_components``'s format), e.g. one built from
    Hub headers without downloading the weights."""
    from finetune.methods import get_method
    from finetune.runner import resolve_config

    cls = get_method(method)
    cfg = copy.deepcopy(resolve_config(method, config))
    notes: list[str] = []
    if bitplan is not None:
        if hasattr(cfg, "plan"):
            cfg.plan = dict(bitplan)
        else:
            notes.append(f"bitplan not applied: {method} does not quantize by a plan")
    dev = str(device).split(":")[0]
    if dev not in DEVICE_OFFSET:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    b = int(batch or cfg.batch_size)
    n_img = int(n_images or ENCODE_CHUNK)
    key = _cache_key(desc, cls, cfg, dev, b, resolution, n_img, notes)
    hit = _cached(key)
    if hit is not None:
        return hit
    est = _estimate(desc, cls, cfg, dev, b, resolution, n_img, notes)
    _remember(key, est)
    return est


# The dry run costs seconds (a zoo model) to minutes (SD 1.5) per call, and a planner asks for the same
# estimates again (each plan, each bit choice): answers are kept per process and on disk, keyed by
# everything they depend on, this package's and the method's source included.
_MEMO: dict[str, MemoryEstimate] = {}


def _cache_key(desc, cls, cfg, dev, batch, resolution, n_img, notes) -> str:
    import hashlib
    import inspect
    import json

    h = hashlib.sha256()
    h.update(json.dumps([desc, cls.name, dataclasses.asdict(cfg), dev, batch, resolution, n_img, notes],
                        sort_keys=True, default=str).encode())
    for src in sorted(Path(__file__).parent.glob("*.py")) + [Path(inspect.getfile(cls)),
                                                            Path(inspect.getfile(cls.__mro__[-2]))]:
        h.update(src.read_bytes())
    return h.hexdigest()[:32]


def _cache_file(key: str) -> Path:
    from data.io import mandc_home

    return mandc_home() / "cache" / "estimates" / f"{key}.json"


def _cached(key: str) -> MemoryEstimate | None:
    import json

    if key in _MEMO:
        return copy.deepcopy(_MEMO[key])
    try:
        est = MemoryEstimate.from_dict(json.loads(_cache_file(key).read_text()))
    except (OSError, ValueError, TypeError, KeyError):  # absent, truncated or stale: estimate again
        return None
    _MEMO[key] = est
    return copy.deepcopy(est)


def _remember(key: str, est: MemoryEstimate) -> None:
    import json

    from data.io import atomic_write

    _MEMO[key] = copy.deepcopy(est)
    try:
        atomic_write(_cache_file(key), json.dumps(est.to_dict()))
    except OSError:  # a read-only $MANDC_HOME only loses the cache
        pass


def _estimate(desc, cls, cfg, dev, b, resolution, n_img, notes) -> MemoryEstimate:
    method = cls.name

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    sm = shape_model(desc, fake)
    vae_scale = 2 ** (len(sm.vae.config.block_out_channels) - 1) if sm.vae is not None else 1
    res = int(resolution or int(sm.denoiser.config.sample_size) * vae_scale)
    if res % vae_scale:
        raise ValueError(f"resolution {res} is not a multiple of the VAE's scale factor {vae_scale}")
    latent = res // vae_scale
    trainable = prepare_(sm, cls, cfg)
    dry = dry_steps(sm, cls, cfg, trainable, batch=b, latent=latent, n_forward=cls.estimate_forward_passes(cfg))
    encode = dry_encode(sm, n_images=n_img, resolution=res, chunk=ENCODE_CHUNK)

    bd = dry.breakdown
    te_bytes = 0 if cls.trains_text else module_bytes(sm.text_encoder)
    channels = int(sm.denoiser.config.in_channels)
    data = n_img * channels * latent * latent * 4
    if not cls.trains_text:
        dim = sm.text_encoder.config.hidden_size if sm.text_encoder is not None else 0
        data += n_img * sm.prompt_tokens * dim * 4
    vae_bytes = module_bytes(sm.vae)
    acts = bd.get("Activation", 0) + bd.get("Temp", 0) + bd.get("Other", 0)
    # encoding runs before training, with the step's weights resident but none of its other state
    encode_extra = max(0, encode - (dry.peak_bytes - dry.resident_bytes))
    tensors = dry.peak_bytes + te_bytes + vae_bytes + data + encode_extra
    slack = int(tensors * SLACK[dev])
    offset = DEVICE_OFFSET[dev]
    expected = tensors + slack + offset
    terms = {
        "weights": bd.get("Parameter", 0) + bd.get("Buffer", 0),
        "trainable_params": sum(t.numel() * t.element_size() for t in trainable),
        "gradients": bd.get("Gradient", 0),
        "optimizer": bd.get("Optstate", 0),
        "activations": acts,
        "step": dry.peak_bytes,
        "text_encoder": te_bytes,
        "vae": vae_bytes,
        "data": data,
        "encode": encode_extra,
        "slack": slack,
        "offset": offset,
    }
    stored = sum(tensor_bytes(c.get("tensors", {})) for c in desc["components"].values())
    if stored:
        notes.append(f"stored weights {stored / MiB:.1f} MiB (loaded in float32)")
    if cls.gradient_free:
        notes.append(f"{cls.estimate_forward_passes(cfg)} forward passes per step, no autograd")
    if dev == "cuda":
        notes.append("CUDA offset is a constant (context + library workspaces, from published context "
                     "sizes), not calibrated on a GPU")
    basis = ("peak RSS above the process's footprint before the model is built (finetune.memory.PeakMemory, CPU)"
             if dev == "cpu" else "CUDA allocator peak (max_memory_allocated) + the fixed context offset")
    lo, hi = BAND
    return MemoryEstimate(method=method, low_bytes=int(expected * lo), expected_bytes=int(expected),
                          high_bytes=int(expected * hi), terms={k: int(v) for k, v in terms.items()}, device=dev,
                          basis=basis, notes=notes + [f"batch {b}, {res}x{res} pixels, {n_img} images encoded"])
