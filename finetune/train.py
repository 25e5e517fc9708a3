"""A plain, reusable denoiser training loop (used to pretrain the reference zoo).

The text encoder is frozen, so captions are encoded once: :class:`EncodedData` keeps the pixels, one
embedding per *unique* caption and an index into them. Each step draws a batch (weighted, with
replacement, so a pretraining mixture is just per-example weights), replaces a fraction ``p_uncond`` of
the prompt embeddings by the empty prompt's (so classifier-free guidance works later), and minimises
:meth:`finetune.model.T2IModel.training_loss` with AdamW at a constant learning rate after a linear warmup.
Every random draw comes from one seeded generator, so a run is deterministic given its config.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from finetune.model import T2IModel


@dataclass
class TrainConfig:
    steps: int = 1000            # optimizer steps
    batch_size: int = 32
    lr: float = 1e-3             # constant after warmup (small denoisers tolerate a large LR)
    warmup_steps: int = 50       # linear warmup from lr/warmup_steps
    weight_decay: float = 0.0    # AdamW decoupled decay
    grad_clip: float = 1.0       # global-norm clip; 0 disables
    p_uncond: float = 0.1        # caption dropout probability (enables classifier-free guidance)
    snr_gamma: float | None = None  # Min-SNR-γ loss weighting (diffusers' --snr_gamma; 5.0 is its usual value)
    bf16: bool = False           # bf16 autocast; on a CPU without AMX it is ~3x slower, so off by default
    seed: int = 0


@dataclass
class EncodedData:
    """Training data with pre-encoded captions.

    ``pixels`` ``[N, 3, H, W]`` in ``[-1, 1]``; ``embeddings`` ``[U, L, D]`` (one per unique caption);
    ``caption_index`` ``[N]`` (long) into ``embeddings``; ``weights`` ``[N]`` sampling weights or None (uniform).
    """

    pixels: torch.Tensor
    embeddings: torch.Tensor
    caption_index: torch.Tensor
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.pixels.shape[0]
        if n == 0:
            raise ValueError("EncodedData: no training images")
        if self.caption_index.shape != (n,):
            raise ValueError(f"EncodedData: caption_index has shape {tuple(self.caption_index.shape)}, expected ({n},)")
        if self.weights is not None and (self.weights.shape != (n,) or not bool((self.weights >= 0).all())
                                         or float(self.weights.sum()) <= 0):
            raise ValueError("EncodedData: weights must be [N], non-negative, with a positive sum")

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @classmethod
    @torch.no_grad()
    def encode(cls, model: T2IModel, pixels: torch.Tensor, captions: list[str],
               weights: torch.Tensor | None = None, batch_size: int = 256,
               cache: dict[str, torch.Tensor] | None = None) -> "EncodedData":
        """Encode each distinct caption once with ``model.encode_prompt``.

        ``cache`` (caption → ``[L, D]``) is read and filled; share one only between models with the same
        text encoder and prompt length (the zoo's models all use the same MiniLM).
        """
        if len(captions) != pixels.shape[0]:
            raise ValueError(f"EncodedData.encode: {pixels.shape[0]} images but {len(captions)} captions")
        cache = {} if cache is None else cache
        unique = list(dict.fromkeys(captions))
        todo = [c for c in unique if c not in cache]
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            cache.update(zip(chunk, model.encode_prompt(chunk).cpu()))
        pos = {c: i for i, c in enumerate(unique)}
        emb = torch.stack([cache[c] for c in unique])
        idx = torch.tensor([pos[c] for c in captions], dtype=torch.long)
        return cls(pixels.float(), emb, idx, weights)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def train_denoiser(model: T2IModel, data: EncodedData, config: TrainConfig,
                   progress: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train ``model.denoiser`` on ``data`` for ``config.steps`` steps; returns per-step losses.

    ``progress(done_steps, total_steps)`` is called after every step.
    """
    cfg = config
    g = torch.Generator("cpu").manual_seed(cfg.seed)
    device = model.device
    params = [p for p in model.denoiser.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_denoiser: the denoiser has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.warmup_steps)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    uncond = model.empty_prompt_embedding().cpu()  # [1, L, D]
    result = TrainResult()
    t0 = time.perf_counter()
    model.denoiser.train()
    for step in range(cfg.steps):
        if data.weights is None:
            idx = torch.randint(len(data), (cfg.batch_size,), generator=g)
        else:
            idx = torch.multinomial(data.weights, cfg.batch_size, replacement=True, generator=g)
        cond = data.embeddings[data.caption_index[idx]]
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.p_uncond
        cond = torch.where(drop[:, None, None], uncond, cond)
        batch = {"pixel_values": data.pixels[idx], "encoder_hidden_states": cond}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = model.training_loss(batch, generator=g, snr_gamma=cfg.snr_gamma)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"train_denoiser: loss is {value} at step {step}; lower the lr (now {cfg.lr})")
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lr_sched.step()
        result.losses.append(value)
        if progress is not None:
            progress(step + 1, cfg.steps)
    model.denoiser.eval()
    result.seconds = time.perf_counter() - t0
    result.steps = cfg.steps
    return result
