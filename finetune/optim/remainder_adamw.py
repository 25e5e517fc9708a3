"""``RemainderAdamW``: AdamW without an fp32 master copy, optionally stepping inside backward.

Lewandowski & Kosson, "Memory Efficient Mixed-Precision Optimizers" (arXiv 2309.12381).

Parameters live in **bfloat16**, and forward/backward use them directly. Per parameter element the
optimizer keeps an int16 remainder (the low 16 bits of the fp32 value, :mod:`finetune.optim.bf16_split`)
and fp32 moments ``m``, ``v``. Each update rebuilds the exact fp32 value, applies AdamW — the very
arithmetic of ``torch.optim.AdamW`` (its functional ``adam(..., decoupled_weight_decay=True)``, single-tensor
path), so decoupled weight decay, bias correction and ``eps`` are PyTorch's — and splits the result again.

Bytes per parameter (Adam, bf16 training):

=====================================  ======  =====  ====  ===  ===  =====
scheme                                 param   grad   fp32  m    v    total
=====================================  ======  =====  ====  ===  ===  =====
standard mixed precision (fp32 master)    2      2      4    4    4     16
remainders (this class)                   2      2      2    4    4     14
remainders + ``step_in_backward=True``    2      —      2    4    4     12
=====================================  ======  =====  ====  ===  ===  =====

With ``step_in_backward=True`` each parameter is updated by a ``register_post_accumulate_grad_hook`` as
soon as its gradient is complete, and its gradient is freed at once, so the model's full gradient buffer
never exists (only one parameter's gradient at a time, plus that parameter's transient fp32 copy).
Then ``step()`` does nothing and ``zero_grad()`` is harmless, and two things become impossible:

* **gradient accumulation** — each backward pass updates the weights immediately;
* **global-norm gradient clipping** — it needs every gradient before the first update.

Declare them (``gradient_accumulation_steps``, ``max_grad_norm``) and the constructor refuses the
combination; without ``step_in_backward`` ``max_grad_norm`` clips the global gradient norm in ``step()``.
"""
from __future__ import annotations

import copy

import torch
from torch.optim import Optimizer
from torch.optim.adam import adam as _functional_adam

from finetune.optim.bf16_split import merge_fp32, split_fp32, split_fp32_into_


def _scalar_dtype():
    # torch.optim.Adam's step counter dtype (float64 only under a float64 default dtype)
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def adamw_update_(param32, grad32, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step on fp32 tensors, in place, with ``torch.optim.AdamW``'s own arithmetic."""
    _functional_adam([param32], [grad32], [exp_avg], [exp_avg_sq], [], [step], foreach=False, capturable=False,
                     differentiable=False, fused=None, grad_scale=None, found_inf=None, has_complex=False,
                     decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2, lr=lr,
                     weight_decay=weight_decay, eps=eps, maximize=False)


class RemainderAdamW(Optimizer):
    """AdamW over bfloat16 parameters with int16 remainders (see module docstring).

    Args:
        params: parameters or param groups. float32 parameters are converted **in place** to bfloat16
            (their dropped low bits go to the remainder, so nothing is lost); bfloat16 ones start with a
            zero remainder.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (same defaults).
        step_in_backward: update each parameter from a post-accumulate-grad hook during backward.
        gradient_accumulation_steps, max_grad_norm: the training loop's settings, declared so that
            incompatible combinations fail here; ``max_grad_norm`` is applied in ``step()``.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, step_in_backward: bool = False,
                 gradient_accumulation_steps: int = 1, max_grad_norm: float | None = None):
        if not lr >= 0:
            raise ValueError(f"invalid learning rate {lr!r}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"invalid betas {betas!r}")
        if not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"invalid eps {eps!r} or weight_decay {weight_decay!r}")
        if isinstance(gradient_accumulation_steps, bool) or not isinstance(gradient_accumulation_steps, int) \
                or gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be a positive integer, got {gradient_accumulation_steps!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")
        if step_in_backward and gradient_accumulation_steps > 1:
            raise ValueError(
                f"step_in_backward=True is incompatible with gradient accumulation (gradient_accumulation_steps="
                f"{gradient_accumulation_steps}): every backward pass updates the parameters at once. Use a "
                "larger batch, or step_in_backward=False")
        if step_in_backward and max_grad_norm is not None:
            raise ValueError(
                f"step_in_backward=True is incompatible with global-norm gradient clipping (max_grad_norm="
                f"{max_grad_norm}): the norm needs every gradient before the first parameter is updated. "
                "Use step_in_backward=False")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self.step_in_backward = step_in_backward
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.max_grad_norm = max_grad_norm
        self._hooks = []
        super().__init__(params, defaults)  # calls add_param_group, which sets up every parameter

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            self._init_param(p)
            if self.step_in_backward and p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(group)))

    # -- state ------------------------------------------------------------------------------------
    def _init_param(self, p: torch.Tensor) -> None:
        if p in self.state and self.state[p]:
            return
        if p.dtype == torch.float32:
            with torch.no_grad():
                hi, rem = split_fp32(p.detach())
            p.data = hi  # the model now holds bfloat16; the dropped bits live in `rem`
        elif p.dtype == torch.bfloat16:
            rem = torch.zeros(p.shape, dtype=torch.int16, device=p.device)
        else:
            raise TypeError(f"RemainderAdamW needs float32 or bfloat16 parameters, got {p.dtype} "
                            f"(shape {tuple(p.shape)})")
        self.state[p] = {"step": torch.tensor(0.0, dtype=_scalar_dtype()), "remainder": rem,
                         "exp_avg": torch.zeros(p.shape, dtype=torch.float32, device=p.device),
                         "exp_avg_sq": torch.zeros(p.shape, dtype=torch.float32, device=p.device)}

    def fp32_params(self) -> list:
        """Exact float32 values of all parameters (rebuilt from bfloat16 + remainder; new tensors)."""
        return [merge_fp32(p.detach(), self.state[p]["remainder"]) for g in self.param_groups for p in g["params"]]

    # -- update -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _update(self, p: torch.Tensor, group: dict, grad: torch.Tensor) -> None:
        st = self.state[p]
        p32 = merge_fp32(p.detach(), st["remainder"])
        beta1, beta2 = group["betas"]
        adamw_update_(p32, grad.float(), st["exp_avg"], st["exp_avg_sq"], st["step"], lr=group["lr"],
                      beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])
        split_fp32_into_(p32, p.detach(), st["remainder"])  # p32 is scratch from here on

    def _make_hook(self, group: dict):
        def hook(p: torch.Tensor) -> None:
            if p.grad is None:
                return
            self._update(p, group, p.grad)
            p.grad = None  # freed at once: the full gradient buffer never exists
        return hook

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient (a no-op with ``step_in_backward``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.step_in_backward:
            return loss
        todo = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if self.max_grad_norm is not None and todo:
            torch.nn.utils.clip_grad_norm_([p for p, _ in todo], self.max_grad_norm, foreach=False)
        for p, group in todo:
            if p.grad.is_sparse:
                raise RuntimeError("RemainderAdamW does not support sparse gradients")
            self._update(p, group, p.grad)
        return loss

    def remove_hooks(self) -> None:
        """Detach the in-backward hooks (e.g. before handing the model to another optimizer)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    # -- (de)serialisation ------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        """As ``Optimizer.load_state_dict``, but keeps ``exp_avg``/``exp_avg_sq`` in float32 and the remainder
        in int16 (the base class casts every state tensor to the parameter's dtype, bfloat16 here)."""
        state_dict = copy.deepcopy(state_dict)
        kept = {k: {n: v for n, v in s.items() if n in ("exp_avg", "exp_avg_sq", "remainder")}
                for k, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for k, tensors in kept.items():
            p = params[int(k)]
            for n, v in tensors.items():
                self.state[p][n] = v.to(p.device)
