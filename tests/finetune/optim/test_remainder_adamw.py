"""RemainderAdamW: exact split, bit-identical to fp32-master AdamW, step-in-backward, guards."""
import copy

import pytest
import torch
from torch import nn

from finetune.optim import Fp32MasterAdamW, RemainderAdamW, merge_fp32, round_to_bf16, split_fp32


def test_split_is_exact_and_rounds_to_nearest():
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-2**31, 2**31 - 1, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    # exact ties (low half 0x8000) below an even and an odd upper half, and a subnormal one
    bits[:3] = torch.tensor([0x3F808000, 0x3F818000, 0x00008000], dtype=torch.int32)
    x = bits.view(torch.float32)
    x = x[torch.isfinite(x)]
    hi, rem = split_fp32(x)
    assert hi.dtype == torch.bfloat16 and rem.dtype == torch.int16
    assert torch.equal(merge_fp32(hi, rem).view(torch.int32), x.view(torch.int32))
    # nearest: |x − hi| <= half a bfloat16 ulp, and only exact ties differ from PyTorch's ties-to-even
    rne = x.to(torch.bfloat16)
    differs = hi.view(torch.int16) != rne.view(torch.int16)
    ties = (x.view(torch.int32) & 0xFFFF) == 0x8000
    assert differs.any() and not (differs & ~ties).any()
    assert torch.equal(round_to_bf16(x), hi)
    with pytest.raises(TypeError, match="float32"):
        split_fp32(x.double())


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 5))


def _train(model, opt, steps=300, in_backward=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 12, generator=g).bfloat16()
        y = torch.randn(16, 5, generator=g)
        loss = (model(x).float() - y).pow(2).mean()
        loss.backward()
        if in_backward:
            assert all(p.grad is None for p in model.parameters())  # updated and freed during backward
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("in_backward", [False, True])
def test_bit_identical_to_fp32_master_adamw(in_backward):
    ref_model, model = _model(), _model()
    hp = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05)
    ref = Fp32MasterAdamW(ref_model.parameters(), **hp)
    opt = RemainderAdamW(model.parameters(), step_in_backward=in_backward, **hp)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    start = [p.detach().clone() for p in model.parameters()]
    _train(ref_model, ref)
    _train(model, opt, in_backward=in_backward)
    for p, q, p0 in zip(ref_model.parameters(), model.parameters(), start):
        assert not torch.equal(q, p0)  # it did train
        assert torch.equal(p.view(torch.int16), q.view(torch.int16))  # bf16 params bit-identical
    for m, f in zip(ref.fp32_params(), opt.fp32_params()):
        assert torch.equal(m.view(torch.int32), f.view(torch.int32))  # rebuilt fp32 == fp32 master, exactly


def test_plain_bf16_adamw_drifts_from_the_master_that_remainders_track():
    """Without remainders (AdamW straight on bf16 params) small updates are lost to rounding."""
    ref_model, naive_model = _model(), _model()
    ref = Fp32MasterAdamW(ref_model.parameters(), lr=1e-4)
    naive_model.bfloat16()
    naive = torch.optim.AdamW(naive_model.parameters(), lr=1e-4, foreach=False)
    _train(ref_model, ref, steps=50)
    _train(naive_model, naive, steps=50)
    diff = sum(int((p.view(torch.int16) != q.view(torch.int16)).sum())
               for p, q in zip(ref_model.parameters(), naive_model.parameters()))
    assert diff > 0


def test_guards_and_noop_step():
    m = _model()
    with pytest.raises(ValueError, match="gradient accumulation"):
        RemainderAdamW(m.parameters(), step_in_backward=True, gradient_accumulation_steps=4)
    with pytest.raises(ValueError, match="global-norm gradient clipping"):
        RemainderAdamW(m.parameters(), step_in_backward=True, max_grad_norm=1.0)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        RemainderAdamW([nn.Parameter(torch.zeros(2, dtype=torch.float64))])
    # frozen parameters get no hook and stay untouched
    m[0].weight.requires_grad_(False)
    opt = RemainderAdamW(m.parameters(), step_in_backward=True)
    w0 = m[0].weight.detach().clone()
    _train(m, opt, steps=3, in_backward=True)
    assert torch.equal(m[0].weight, w0)
    before = [p.detach().clone() for p in m.parameters()]
    opt.step()  # no gradients exist: nothing changes
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    opt.remove_hooks()
    loss = m(torch.randn(2, 12).bfloat16()).float().sum()
    loss.backward()
    assert m[3].weight.grad is not None  # hooks gone: gradients accumulate as usual


def test_max_grad_norm_clips_in_step():
    m = _model()
    opt = RemainderAdamW(m.parameters(), lr=1e-2, max_grad_norm=1e-3)
    m(torch.randn(4, 12).bfloat16()).float().pow(2).sum().backward()

    def total_norm():
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float())
                                                           for p in m.parameters()])))

    assert total_norm() > 1e-2
    opt.step()  # clips the gradients in place, then updates
    assert total_norm() == pytest.approx(1e-3, rel=0.02)


def test_state_dict_roundtrip_keeps_fp32_moments():
    m = _model()
    opt = RemainderAdamW(m.parameters(), lr=1e-3)
    _train(m, opt, steps=5)
    sd = copy.deepcopy(opt.state_dict())
    m2 = copy.deepcopy(m)
    opt2 = RemainderAdamW(m2.parameters(), lr=1e-3)  # bf16 params: zero remainders for now
    opt2.load_state_dict(sd)
    for p in m2.parameters():
        st = opt2.state[p]
        assert st["exp_avg"].dtype == torch.float32 and st["remainder"].dtype == torch.int16
    _train(m, opt, steps=5, seed=3)
    _train(m2, opt2, steps=5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))
