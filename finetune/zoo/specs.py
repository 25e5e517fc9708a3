"""The reference zoo: one table of pixel-space T2I models that differ in capacity and pretraining mixture.

All models share one pixel space (32×32 RGB in ``[-1, 1]``), one text encoder (MiniLM, 24 tokens × 384)
and ONE noise schedule (:data:`SCHEDULER_CONFIG`: DDPM, T=1000, cosine ᾱ_t, v-prediction), so
their losses on a dataset compare directly. They differ in

- **denoiser**: ``unet`` (``UNet2DConditionModel``) or ``dit`` (``PixArtTransformer2DModel``), 0.3M→8M params;
- **pretraining mixture**: sampling weights over catalog families (specialists on 1–2 families,
  generalists on all, a big model on narrow data, a small one on broad data...);
- **lineage**: like checkpoints on a real hub, some models are descendants — they start from a
  ``parent`` zoo model (same denoiser) and continue pretraining on their own mixture. A specialist thus
  gets the base model's training plus its own at the cost of its own steps only.

Differences in both are what make model selection a real problem: after a short fine-tune on a catalog
dataset, the best starting point depends on the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

RESOLUTION = 32          # pixels per side; every zoo model works in this one pixel space
PROMPT_TOKENS = 24       # fixed prompt length (MiniLM tokens)
TEXT_DIM = 384           # MiniLM hidden size = cross-attention context width
PRETRAIN_SEED = 1000     # catalog seed of all pretraining data; never 0, the canonical evaluation data

# The shared noise schedule and parameterisation.
# - cosine ᾱ_t (improved DDPM, Nichol & Dhariwal 2021), made for 32-64 px pixel space: with DDPM's linear
#   betas SNR < 0.03 for t > 600, so 40% of training steps teach nothing about global layout.
# - v-prediction (Salimans & Ho 2022), not ε: sampling starts where ᾱ_t ≈ 0.004, and an ε-model's
#   colour there is x̂_0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ, its ε error amplified 16×. At these small training budgets
#   that fixed every sample's global colour wrongly (unet-s-shapes: x̂_0 mean −0.19 vs data +0.5, saturated
#   backgrounds); a v-model predicts x̂_0 ≈ −v̂ there directly and gets the backgrounds right. Losses
#   still compare across the zoo (one target for all).
# - clip_sample keeps DDIM's x̂_0 inside [-1, 1].
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                        clip_sample=True, clip_sample_range=1.0)

ALL_FAMILIES = ("shapes", "patterns", "gradients", "compositions", "digits", "textures", "photos", "faces")


def unet(channels: tuple[int, ...], attention: tuple[bool, ...] | None = None, layers: int = 1,
         head_dim: int = 16, groups: int = 8) -> dict:
    """``UNet2DConditionModel`` config for 32×32×3 pixels with MiniLM cross-attention.

    ``channels`` per resolution level (32, 16, 8, ...); ``attention[i]`` puts cross-attention blocks at
    level ``i`` (default: the lowest-resolution level only, where attention over h·w tokens is cheap).
    """
    attention = attention or tuple(i == len(channels) - 1 for i in range(len(channels)))
    if len(attention) != len(channels):
        raise ValueError(f"unet(): {len(channels)} channel levels but {len(attention)} attention flags")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return dict(sample_size=RESOLUTION, in_channels=3, out_channels=3, block_out_channels=tuple(channels),
                layers_per_block=layers, down_block_types=down, up_block_types=up,
                cross_attention_dim=TEXT_DIM, attention_head_dim=head_dim, norm_num_groups=groups)


def dit(width: int, depth: int, heads: int = 4, patch: int = 4) -> dict:
    """``PixArtTransformer2DModel`` config: ``(32/patch)²`` tokens of ``width``, ``depth`` blocks with
    self-attention, cross-attention on the (projected) MiniLM states and adaLN-single timestep modulation."""
    if width % heads:
        raise ValueError(f"dit(): width {width} is not divisible by heads {heads}")
    return dict(sample_size=RESOLUTION, in_channels=3, out_channels=3, patch_size=patch, num_layers=depth,
                num_attention_heads=heads, attention_head_dim=width // heads, cross_attention_dim=width,
                caption_channels=TEXT_DIM, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
                use_additional_conditions=False)


@dataclass(frozen=True)
class ZooSpec:
    """Everything that determines one zoo model: building it twice gives the same weights."""

    name: str
    family: str                    # "unet" or "dit"
    denoiser: dict                 # denoiser config (see unet() / dit())
    mixture: dict[str, float]      # catalog family -> sampling weight (normalised at build time)
    steps: int                     # optimizer steps
    batch_size: int
    lr: float
    seed: int
    description: str
    per_dataset: int = 192         # image-caption pairs drawn from each catalog dataset of the mixture
    warmup_steps: int = 50
    snr_gamma: float = 5.0         # Min-SNR-γ loss weighting: ~2x faster convergence at these tiny budgets
    parent: str | None = None      # zoo model whose weights this one starts from (a fine-tuned descendant)

    def __post_init__(self) -> None:
        if self.family not in ("unet", "dit"):
            raise ValueError(f"zoo spec {self.name}: family must be 'unet' or 'dit', got {self.family!r}")
        bad = sorted(set(self.mixture) - set(ALL_FAMILIES))
        if bad or not self.mixture or min(self.mixture.values()) <= 0:
            raise ValueError(f"zoo spec {self.name}: mixture {self.mixture} must give positive weights to "
                             f"catalog families {ALL_FAMILIES}" + (f" (unknown: {bad})" if bad else ""))


ALL = {f: 1.0 for f in ALL_FAMILIES}
XS, S, M, L = (16, 32, 32), (16, 32, 64), (24, 48, 96), (16, 32, 96, 192)  # UNet widths per level

# Budget: the whole table builds in ~20 min on 2 CPU cores (a batch-16 step costs ~0.11 s for XS, 0.15 s
# for S, ~0.25 s for M, L and the DiTs there); steps were tuned until each model's samples visibly resemble
# its pretraining domain. Descendants (parent=...) continue from a built model.
ZOO_SPECS: list[ZooSpec] = [
    # name                kind   denoiser             mixture (family: weight)                    steps bs  lr  seed
    ZooSpec("unet-xs-gradients", "unet", unet(XS), {"gradients": 3, "patterns": 1},               500, 16, 2e-3, 1,
            "tiny UNet on smooth colour gradients and some regular patterns (the quick demo model)"),
    ZooSpec("unet-xs-faces", "unet", unet(XS), {"faces": 2, "digits": 1},                         600, 16, 2e-3, 2,
            "tiny UNet on grayscale and toned face crops, with some handwritten digits"),
    ZooSpec("unet-xs-broad", "unet", unet(XS), ALL,                                               700, 16, 2e-3, 3,
            "tiny UNet on every catalog family (a small model on broad data)"),
    ZooSpec("unet-s-broad", "unet", unet(S), ALL,                                                1200, 16, 2e-3, 4,
            "small UNet on every catalog family (the generalist base of the unet-s line)"),
    ZooSpec("unet-s-shapes", "unet", unet(S), {"shapes": 2, "compositions": 1},                   400, 16, 1e-3, 5,
            "unet-s-broad specialised further on flat geometric shapes and simple compositions",
            parent="unet-s-broad"),
    ZooSpec("unet-s-digits", "unet", unet(S), {"digits": 1},                                      400, 16, 1e-3, 6,
            "unet-s-broad specialised further on handwritten digits", parent="unet-s-broad"),
    ZooSpec("unet-s-photos", "unet", unet(S), {"photos": 2, "textures": 1},                       600, 16, 2e-3, 7,
            "small UNet on photo crops and texture photos"),
    ZooSpec("unet-m-natural", "unet", unet(M), {"photos": 1, "textures": 1, "faces": 1},          450, 16, 2e-3, 8,
            "medium UNet on natural images: photo crops, textures and faces"),
    ZooSpec("unet-l-shapes", "unet", unet(L), {"shapes": 1, "compositions": 1},                   400, 16, 1e-3, 9,
            "large 4-level UNet on shapes and compositions only (a big model on narrow data)"),
    ZooSpec("dit-s-gradients", "dit", dit(96, 4, patch=2), {"gradients": 2, "patterns": 1},       500, 16, 3e-3, 10,
            "small PixArt transformer on colour gradients and patterns"),
    ZooSpec("dit-m-simple", "dit", dit(128, 4, patch=2), {"gradients": 1, "shapes": 1, "digits": 1}, 350, 16, 2e-3, 11,
            "PixArt transformer on simple synthetic images: gradients, shapes and digits"),
]

ZOO: dict[str, ZooSpec] = {s.name: s for s in ZOO_SPECS}


def check_lineage(zoo: dict[str, ZooSpec]) -> None:
    """Every ``parent`` is a zoo model with the same denoiser, and no lineage loops."""
    for spec in zoo.values():
        seen, cur = {spec.name}, spec
        while cur.parent is not None:
            parent = zoo.get(cur.parent)
            if parent is None:
                raise ValueError(f"zoo spec {cur.name}: parent {cur.parent!r} is not in the zoo")
            if (parent.family, parent.denoiser) != (cur.family, cur.denoiser):
                raise ValueError(f"zoo spec {cur.name}: its denoiser differs from its parent {parent.name}'s")
            if parent.name in seen:
                raise ValueError(f"zoo spec {spec.name}: lineage loops through {parent.name}")
            seen.add(parent.name)
            cur = parent


check_lineage(ZOO)
