"""The reference zoo: one table of pixel-space T2I models that differ in capacity and pretraining mixture.

All models share one pixel space (32×32 RGB in ``[-1, 1]``), one text encoder (MiniLM, 24 tokens × 384)
and ONE noise schedule (:data:`SCHEDULER_CONFIG`: DDPM, T=1000, linear β 1e-4→0.02, ε-prediction), so
their losses on a dataset compare directly. They differ in

- **denoiser**: ``unet`` (``UNet2DConditionModel``) or ``dit`` (``PixArtTransformer2DModel``), 0.3M→8M params;
- **pretraining mixture**: sampling weights over catalog families (specialists on 1–2 families,
  generalists on all, a big model on narrow data, a small one on broad data...).

Differences in both are what make model selection a real problem: after a short fine-tune on a catalog
dataset, the best starting point depends on the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field

RESOLUTION = 32          # pixels per side; every zoo model works in this one pixel space
PROMPT_TOKENS = 24       # fixed prompt length (MiniLM tokens)
TEXT_DIM = 384           # MiniLM hidden size = cross-attention context width
PRETRAIN_SEED = 1000     # catalog seed of all pretraining data; never 0, the canonical evaluation data

# The shared noise schedule: DDPM's CIFAR-10 betas, which suit 32×32 pixel space (SD's "scaled_linear"
# betas leave too much signal at t=T for pixels). clip_sample keeps DDIM's x̂_0 inside [-1, 1].
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                        clip_sample=True, clip_sample_range=1.0)

ALL_FAMILIES = ("shapes", "patterns", "gradients", "compositions", "digits", "textures", "photos", "faces")


def unet(channels: tuple[int, ...], attention: tuple[bool, ...] | None = None, layers: int = 1,
         head_dim: int = 16, groups: int = 8, pooled_text: bool = True) -> dict:
    """``UNet2DConditionModel`` config for 32×32×3 pixels with MiniLM cross-attention.

    ``channels`` per resolution level (32, 16, 8, ...); ``attention[i]`` puts cross-attention blocks at
    level ``i`` (default: the lowest-resolution level only, where attention over h·w tokens is cheap).
    ``pooled_text`` adds diffusers' ``addition_embed_type="text"``: an attention-pooled prompt vector is
    added to the timestep embedding, so every ResNet block sees the prompt (global colour and layout
    are learnt much sooner than through cross-attention alone).
    """
    attention = attention or tuple(i == len(channels) - 1 for i in range(len(channels)))
    if len(attention) != len(channels):
        raise ValueError(f"unet(): {len(channels)} channel levels but {len(attention)} attention flags")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return dict(sample_size=RESOLUTION, in_channels=3, out_channels=3, block_out_channels=tuple(channels),
                layers_per_block=layers, down_block_types=down, up_block_types=up,
                cross_attention_dim=TEXT_DIM, attention_head_dim=head_dim, norm_num_groups=groups,
                addition_embed_type="text" if pooled_text else None, addition_embed_type_num_heads=8)


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
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in ("unet", "dit"):
            raise ValueError(f"zoo spec {self.name}: family must be 'unet' or 'dit', got {self.family!r}")
        bad = sorted(set(self.mixture) - set(ALL_FAMILIES))
        if bad or not self.mixture or min(self.mixture.values()) <= 0:
            raise ValueError(f"zoo spec {self.name}: mixture {self.mixture} must give positive weights to "
                             f"catalog families {ALL_FAMILIES}" + (f" (unknown: {bad})" if bad else ""))


ALL = {f: 1.0 for f in ALL_FAMILIES}

# name                 kind    denoiser                          mixture                          steps  bs   lr    seed
ZOO_SPECS: list[ZooSpec] = [
    ZooSpec("unet-xs-gradients", "unet", unet((16, 32, 32)), {"gradients": 1, "patterns": 1}, 300, 32, 2e-3, 1,
            "tiny UNet on smooth gradients and regular patterns (the quick demo model)"),
]

ZOO: dict[str, ZooSpec] = {s.name: s for s in ZOO_SPECS}
