"""``Fp32MasterAdamW``: standard mixed precision, the baseline ``RemainderAdamW`` must equal.

The model's parameters are bfloat16 (forward and backward use them); the optimizer owns a float32 master
copy of each, runs ``torch.optim.AdamW`` on the masters with the bfloat16 gradients cast to float32, and
writes the masters back to the model rounded to nearest bfloat16. 16 bytes per parameter (see
:mod:`finetune.optim.remainder_adamw`).

The bfloat16 copy is rounded like :func:`~finetune.optim.bf16_split.round_to_bf16` (ties away from zero) by
default, so that the remainder scheme can be compared bit for bit; ``rounding="even"`` uses PyTorch's
``.to(torch.bfloat16)`` (ties to even), which differs only at exact ties.
"""
from __future__ import annotations

import torch

from finetune.optim.bf16_split import round_to_bf16

ROUNDINGS = ("away", "even")


class Fp32MasterAdamW:
    """fp32 master weights + ``torch.optim.AdamW`` for a list of model parameters (one set of hyper-parameters;
    ``param_groups`` lists one group per parameter, so a scheduler must set ``lr`` on all of them).

    float32 parameters are converted in place to bfloat16 at construction (the master keeps their exact
    value); ``step()`` / ``zero_grad()`` / ``param_groups`` behave as on a torch optimizer.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, rounding: str = "away"):
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.params = list(params)
        if not self.params:
            raise ValueError("Fp32MasterAdamW got an empty parameter list")
        self.rounding = rounding
        self.masters = []
        for p in self.params:
            if p.dtype not in (torch.float32, torch.bfloat16):
                raise TypeError(f"Fp32MasterAdamW needs float32 or bfloat16 parameters, got {p.dtype}")
            master = p.detach().float().clone()
            p.data = self._round(master)
            self.masters.append(master)
        # One AdamW per master so that only one parameter's fp32 gradient exists at a time (the 16 bytes/param
        # of standard mixed precision count a 2-byte gradient). foreach=False: the single-tensor arithmetic,
        # on any device — RemainderAdamW uses the same.
        self.inner = [torch.optim.AdamW([m], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
                      for m in self.masters]
        self.param_groups = [g for opt in self.inner for g in opt.param_groups]

    def _round(self, x: torch.Tensor) -> torch.Tensor:
        return round_to_bf16(x) if self.rounding == "away" else x.to(torch.bfloat16)

    @torch.no_grad()
    def step(self) -> None:
        for p, m, opt in zip(self.params, self.masters, self.inner):
            if p.grad is None:
                continue
            m.grad = p.grad.float()
            opt.step()
            m.grad = None
            p.copy_(self._round(m))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def fp32_params(self) -> list:
        return [m.detach().clone() for m in self.masters]
