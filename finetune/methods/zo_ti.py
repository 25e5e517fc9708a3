"""``zo-ti``: zeroth-order textual inversion on an INT8 model (ZOODiP, Seo et al., CVPR 2025).

No autograd graph is ever built: the only trainable tensor, the placeholder token's embedding
θ ∈ R^d, is updated from forward passes alone, so training memory ≈ inference memory.

Per step, with one image x_0, one timestep t and one noise ε shared by all passes:

.. math::
    \\hat g = \\frac{1}{c}\\sum_{i=1}^{n} \\frac{L(θ + µ e_i) - L(θ)}{µ}\\, e_i,
    \\qquad e_i \\sim \\mathcal N(0, I_d),

``n + 1`` forward passes (n = 2, µ = 1e-3), each e_i regenerated from a stored seed and never kept.
The paper writes c = n; the public code (``ignoww/ZOODiP``, which produced the published numbers)
uses c = n·√((d' + n − 1)/n) with d' the dimension left after the subspace projection. We follow the
code (``normalize="code"``; ``"paper"`` gives c = n): the two differ by a positive scalar, which matters only
through Adam's large ε.

- **Subspace gradient** (``subspace=True``; **off by default**, the paper has it on): keep the last τ = 128
  values of θ; every τ steps standardise them per feature, fit PCA, find i* = the first index whose
  cumulative explained-variance ratio exceeds 1 − ν (ν = 1e-3), and take P = the principal directions after
  i* (the low-variance ones). Until the next refresh ĝ ← ĝ − (ĝ Pᵀ) P. No projection before the first
  refresh. Off because it cost quality at every setting measured (README, "ZOODiP's ablation"): the
  directions it projects out still carry most of their share of the true gradient, more than the noise it
  removes is worth.
- **Partial uniform timestep sampling**: t ~ U{lo, …, hi − 1}. The paper's window is 500–899 of T = 1000
  on SD 1.5's scaled-linear schedule; a step index means a noise level only through its schedule, so by
  default (``timestep_min``/``timestep_max`` None) the window is that ᾱ_t (SNR) range on *this* model's
  schedule (:func:`finetune.schedules.snr_matched_window`): 500–899 on SD 1.5 itself, 644–922 on the zoo's
  cosine schedule. An end given by hand is a step of T = 1000 (scaled to the model's T) and is used as is;
  ``timestep_min=0, timestep_max=1000`` samples the full range. The run's config records the window used.
- **Optimiser**: Adam on ĝ, β = (0.9, 0.999), ε = 1e-3 added to √v̂, lr 5e-3 (paper).
- The model is quantized first: INT8 weights for every Linear/Conv2d of the denoiser, the text encoder
  and the VAE (the embedding table stays in full precision: θ is a row of it), symmetric min–max codes,
  float activations (``QuantConfig(bits=8, symmetric=True, init="minmax")``). With ``plan`` (a BitPlan
  from ``mandc quantize``) the denoiser is instead the model MPQ-Diff scored (its bits, symmetric, clip,
  calibrated activation scales); the text encoder and VAE stay at ``quant_bits``.

Output: ``learned_embeds.safetensors`` ``{token: [1, d]}``, diffusers' textual-inversion format.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from finetune.methods.base import Method, MethodConfig, TrainData, option
from finetune.methods.registry import register
from finetune.methods.tokens import add_placeholder_, save_embedding


#: ZOODiP's partial timestep window [500, 900) of T = 1000, chosen on SD 1.5's schedule.
PAPER_WINDOW = (500, 900)


@dataclass
class ZOTIConfig(MethodConfig):
    lr: float = option(5e-3, "Adam learning rate on the estimated gradient (paper: 5e-3)")
    steps: int = option(1000, "optimisation steps (each is n+1 forward passes)")
    placeholder: str = option("<mandc>", "the new token")
    initializer: str = option("object", "single-token word whose embedding initialises θ")
    template: str = option("{token} {caption}", "prompt per image ('a photo of {token}' for a subject)")
    n_directions: int = option(2, "random directions n per step (n+1 forward passes)")
    mu: float = option(1e-3, "perturbation size µ")
    adam_eps: float = option(1e-3, "ε added to √v̂ in Adam")
    subspace: bool = option(False, "project out low-variance PCA directions of θ's recent history (the "
                                   "paper's subspace gradient; off: it cost quality at every setting measured)")
    tau: int = option(128, "history length τ and PCA refresh period")
    nu: float = option(1e-3, "explained-variance threshold ν")
    normalize: str = option("code", "'code': the public code's gradient normalisation; 'paper': 1/n")
    quant_bits: int = option(8, "weight bits of the quantized denoiser, text encoder and VAE")
    plan: str | dict | None = option(None, "a BitPlan from mandc quantize (JSON path or dict) for the denoiser; "
                                           "the text encoder and VAE stay at quant_bits")
    timestep_min: int | None = option(None, "partial timestep sampling: t ~ U{timestep_min..timestep_max-1} of "
                                            "T=1000 (0: from the start); none: the paper's 500 on SD 1.5, mapped "
                                            "to this model's schedule by matching ᾱ_t (SNR)")
    timestep_max: int | None = option(None, "upper end (exclusive) of the sampled timesteps, of T=1000 (1000: to "
                                            "the end); none: the paper's 900 on SD 1.5, SNR-matched like timestep_min")

    def validate(self) -> None:
        super().validate()
        if self.n_directions < 1 or self.mu <= 0 or self.tau < 2 or not 0 < self.nu < 1:
            raise ValueError("need n_directions ≥ 1, mu > 0, tau ≥ 2 and 0 < nu < 1")
        if self.normalize not in ("code", "paper"):
            raise ValueError(f"normalize must be 'code' or 'paper', got {self.normalize!r}")
        from finetune.quant import plan_data, resolve_quant_config

        self.plan = plan_data(self.plan)
        for cfg in self.quant_configs().values():
            resolve_quant_config(cfg)  # bad bits or a bad plan fail before the model is loaded

    def quant_configs(self) -> dict:
        """``{component: QuantConfig}`` for the denoiser, the text encoder and the VAE."""
        from finetune.quant import QuantConfig

        base = QuantConfig(bits=self.quant_bits, symmetric=True, init="minmax")
        den = base if self.plan is None else QuantConfig(plan=self.plan)
        return {"denoiser": den, "text_encoder": base, "vae": base}


class SubspaceProjector:
    """History of θ and the low-variance directions P ``[k, d]`` found by PCA on it (see module doc)."""

    def __init__(self, tau: int, nu: float):
        self.tau, self.nu = tau, nu
        self.history: list[torch.Tensor] = []
        self.pos = 0
        self.P: torch.Tensor | None = None

    def push(self, theta: torch.Tensor) -> None:
        if len(self.history) < self.tau:
            self.history.append(theta.detach().float().clone())
        else:
            self.history[self.pos] = theta.detach().float().clone()
        self.pos = (self.pos + 1) % self.tau

    def components(self) -> tuple[torch.Tensor, int]:
        """The history's principal directions ``[k, d]`` (float64, by decreasing variance) and i*: rows
        ``0 … i*`` are the kept high-variance ones, the rest the low-variance ones a refresh projects out."""
        H = torch.stack(self.history).double()                          # [τ, d]
        std = H.std(0, unbiased=False)
        Z = (H - H.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))  # StandardScaler
        _, S, Vh = torch.linalg.svd(Z, full_matrices=False)              # PCA: rows of Vh are the components
        k = min(len(self.history), Vh.shape[0])                          # sklearn's n_components = len(history)
        var = S[:k] ** 2
        ratio = torch.cumsum(var / var.sum(), 0) if var.sum() > 0 else torch.ones(k, dtype=var.dtype)
        above = torch.nonzero(ratio > 1 - self.nu)
        return Vh[:k], int(above[0]) if len(above) else k - 1

    def refresh(self) -> int:
        """Recompute P from the history; returns i* (the number of kept high-variance directions − 1)."""
        Vh, i_star = self.components()
        self.P = Vh[i_star + 1:].float()                                 # [k − i* − 1, d]
        return i_star

    def project(self, g: torch.Tensor) -> torch.Tensor:
        if self.P is None or self.P.shape[0] == 0:
            return g
        return g - (g @ self.P.T) @ self.P

    @property
    def n_projected(self) -> int:
        return 0 if self.P is None else int(self.P.shape[0])


@register
class ZeroOrderTI(Method):
    name = "zo-ti"
    Config = ZOTIConfig
    trains_text = True
    quantized = True
    gradient_free = True

    def token(self) -> str:
        return self.config.placeholder

    def setup_(self) -> None:
        from finetune.quant import quantize_

        c, m = self.config, self.model
        self.token_id = add_placeholder_(m, c.placeholder, c.initializer)
        for part, cfg in c.quant_configs().items():
            module = getattr(m, part)
            if module is not None:
                module.requires_grad_(False)
                quantize_(module, cfg)
                module.requires_grad_(False)
        theta = self.embedding_row()
        self.m = torch.zeros_like(theta, dtype=torch.float32)
        self.v = torch.zeros_like(theta, dtype=torch.float32)
        self.t = 0
        self.projector = SubspaceProjector(c.tau, c.nu) if c.subspace else None
        self.window = self.timestep_window()
        # the run records the window it sampled (of T=1000, the fields' unit), not None
        T = m.num_train_timesteps
        self.config = replace(c, timestep_min=round(self.window[0] * 1000 / T),
                              timestep_max=round(self.window[1] * 1000 / T))

    def timestep_window(self) -> tuple[int, int]:
        """``(lo, hi)``: t ~ U{lo, …, hi − 1} in the model's own timesteps. An end given in the config is
        scaled from T = 1000; an end left None is the paper's (:data:`PAPER_WINDOW`, on SD 1.5) mapped to the
        model's schedule by ᾱ_t (:func:`finetune.schedules.snr_matched_window`)."""
        from finetune.schedules import snr_matched_window

        c, T = self.config, self.model.num_train_timesteps
        matched = snr_matched_window(self.model.scheduler, PAPER_WINDOW) if None in (c.timestep_min, c.timestep_max) \
            else None
        lo = matched[0] if c.timestep_min is None else int(c.timestep_min * T / 1000)
        hi = matched[1] if c.timestep_max is None else int(c.timestep_max * T / 1000)
        if not 0 <= lo < hi <= T:
            snr = f"; none is {PAPER_WINDOW} SNR-matched to {matched}" if matched else ""
            raise ValueError(f"zo-ti timestep window [{lo}, {hi}) of this model's {T} steps is empty (timestep_min="
                             f"{c.timestep_min}, timestep_max={c.timestep_max}{snr}): set both by hand")
        return lo, hi

    def sample_timesteps(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.randint(*self.window, (n,), generator=g)

    @classmethod
    def estimate_prepare_(cls, model, c):
        for module in (model.denoiser, model.text_encoder, model.vae):
            if module is not None:
                model.quantize_(module, bits=c.quant_bits, init="minmax", symmetric=True)
                module.requires_grad_(False)
        return []

    @classmethod
    def estimate_forward_passes(cls, config) -> int:
        return config.n_directions + 1

    def embedding_row(self) -> torch.Tensor:
        """θ: a view of the placeholder's row in the (full-precision) input-embedding table."""
        return self.model.text_encoder.get_input_embeddings().weight[self.token_id]

    def trainable(self) -> list[torch.Tensor]:
        return [self.embedding_row()]

    def make_optimizer(self):
        return None  # Adam on ĝ lives in step(): no torch optimizer, no autograd

    @torch.no_grad()
    def _loss(self, x_t, t, target, ids) -> float:
        cond = self.model.encode_tokens(**ids)
        pred = self.model.denoise(x_t, t, cond)
        return float(torch.nn.functional.mse_loss(pred.float(), target.float()))

    @torch.no_grad()
    def step(self, data: TrainData, g: torch.Generator) -> float:
        c, model = self.config, self.model
        idx = torch.randint(len(data), (c.batch_size,), generator=g)
        t = self.sample_timesteps(c.batch_size, g).to(model.device)
        x0 = data.x0[idx].to(model.device, model.dtype)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        x_t = model.scheduler.add_noise(x0, noise, t)
        target = model.target(x0, noise, t)
        ids = model.tokenize([data.prompts[i] for i in idx.tolist()])
        seeds = torch.randint(0, 2**31 - 1, (c.n_directions,), generator=g).tolist()

        theta = self.embedding_row()              # a view: writing into it changes what the encoder sees
        base = self._loss(x_t, t, target, ids)
        coeffs = []
        for s in seeds:
            e = torch.randn(theta.shape, generator=torch.Generator().manual_seed(s)).to(theta)
            theta.add_(c.mu * e)
            coeffs.append((self._loss(x_t, t, target, ids) - base) / c.mu)
            theta.sub_(c.mu * e)
        grad = torch.zeros_like(theta, dtype=torch.float32)
        for s, k in zip(seeds, coeffs):          # directions regenerated from their seeds, never stored
            grad += k * torch.randn(theta.shape, generator=torch.Generator().manual_seed(s))
        n, d = c.n_directions, theta.numel()
        if c.normalize == "code":
            d_eff = d - (self.projector.n_projected if self.projector else 0)
            grad /= float(np.sqrt((d_eff + n - 1) / n) * n)
        else:
            grad /= n
        if self.projector is not None:
            grad = self.projector.project(grad)

        # Adam with ε = 1e-3 outside the square root, bias-corrected
        self.t += 1
        b1, b2 = 0.9, 0.999
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        theta.sub_((c.lr * m_hat / (v_hat.sqrt() + c.adam_eps)).to(theta.dtype))

        if self.projector is not None:
            self.projector.push(theta)
            if self.t % c.tau == 0:
                self.projector.refresh()
        return base

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"embedding": self.embedding_row().detach().clone()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.embedding_row().copy_(sd["embedding"])

    def optimizer_state(self) -> dict:
        p = self.projector
        return {"m": self.m, "v": self.v, "t": self.t,
                "history": torch.stack(p.history) if p and p.history else None,
                "pos": p.pos if p else 0, "P": p.P if p else None}

    def load_optimizer_state(self, state: dict | None) -> None:
        if not state:
            return
        self.m, self.v, self.t = state["m"], state["v"], int(state["t"])
        if self.projector is not None:
            h = state.get("history")
            self.projector.history = list(h.unbind(0)) if h is not None else []
            self.projector.pos, self.projector.P = int(state.get("pos", 0)), state.get("P")

    def save(self, out_dir: Path) -> dict[str, str]:
        return {"embedding": str(save_embedding(self.config.placeholder, self.embedding_row(), out_dir))}
