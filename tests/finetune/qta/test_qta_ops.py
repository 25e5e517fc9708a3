"""INT8 GEMM helpers and the QTA LoRA autograd function."""
import pytest
import torch
from torch import nn

from finetune.qta import QTALoRALinear, int_mm, quantize_rowwise
from finetune.qta.int8_ops import _int_mm_cuda


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 7), (17, 16, 8), (33, 70, 9)])
def test_int_mm_exact_for_any_shape_and_layout(m, k, n):
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    ref = a.long() @ b.long()
    assert torch.equal(int_mm(a, b).long(), ref)
    assert torch.equal(int_mm(a, b.t().contiguous().t()).long(), ref)  # column-major mat2
    assert torch.equal(int_mm(a.t().contiguous().t(), b).long(), ref)
    # the padding used to meet cuBLAS's constraints (M > 16, K and N multiples of 8) leaves sums unchanged
    assert torch.equal(_int_mm_cuda(a, b).long(), ref)


def test_int_mm_rejects_bad_operands():
    with pytest.raises(ValueError, match="int8"):
        int_mm(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="int8"):
        int_mm(torch.zeros(2, 3, dtype=torch.int8), torch.zeros(2, 2, dtype=torch.int8))


def test_quantize_rowwise_error_bound():
    x = torch.randn(9, 33, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 2, 9)[:, None]
    x[4] = 0
    q, s = quantize_rowwise(x)
    assert q.dtype == torch.int8 and s.shape == (9, 1)
    assert int(q.abs().max()) == 127
    assert ((q.float() * s - x).abs() <= s / 2 * (1 + 1e-5)).all()
    assert (q[4] == 0).all()


def _reference(layer: QTALoRALinear, base: nn.Linear, x):
    """Full-precision LoRA on the original weight: y = x Wᵀ + b + σ (x Aᵀ) Bᵀ."""
    a = layer.lora_A.weight.detach().clone().requires_grad_()
    b = layer.lora_B.weight.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y = nn.functional.linear(xr, base.weight, base.bias) + layer.scaling * (xr @ a.t()) @ b.t()
    return y, (xr, a, b)


@pytest.mark.parametrize("weight_grad", ["int8", "fp32"])
def test_forward_and_gradients_match_full_precision_lora(weight_grad):
    torch.manual_seed(0)
    base = nn.Linear(96, 80)
    layer = QTALoRALinear(base, r=4, alpha=8, weight_grad=weight_grad)
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.2)
    x = torch.randn(2, 64, 96, requires_grad=True)
    y = layer(x)
    y_ref, (xr, a, b) = _reference(layer, base, x)
    assert y.shape == (2, 64, 80)
    up = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, layer.lora_A.weight, layer.lora_B.weight], up)
    ref = torch.autograd.grad(y_ref, [xr, a, b], up)

    def rel(u, v):
        return float((u - v).detach().norm() / v.detach().norm())

    assert rel(y, y_ref) < 0.02
    for name, gg, rr in zip(("x", "A", "B"), got, ref):
        assert rel(gg, rr) < 0.03, name


def test_init_like_peft_and_bias_frozen_unless_asked():
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    layer = QTALoRALinear(base, r=2, alpha=4)
    assert layer.scaling == 2.0 and torch.count_nonzero(layer.lora_B.weight) == 0
    assert abs(float(layer.lora_A.weight.std()) - 1 / 2) < 0.15  # peft's "gaussian": A ~ N(0, 1/r²)
    assert not layer.bias.requires_grad and layer.qweight.dtype == torch.int8
    x = torch.randn(10, 32)
    torch.testing.assert_close(layer(x), base(x), atol=0.02, rtol=0)  # B = 0: just the int8 base layer
    layer.bias.requires_grad_(True)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.bias.grad, torch.full((16,), 10.0))
    with pytest.raises(ValueError, match="weight_grad"):
        QTALoRALinear(base, weight_grad="bf16")
    with pytest.raises(ValueError, match="rank"):
        QTALoRALinear(base, r=0)


def test_bf16_activations():
    torch.manual_seed(0)
    layer = QTALoRALinear(nn.Linear(16, 8), r=2)
    x = torch.randn(4, 16, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and layer.lora_A.weight.grad.dtype == torch.float32


def _saved_bytes(fn):
    seen, total = set(), [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_activations_kept_for_backward_are_int8():
    torch.manual_seed(0)
    n, width, r = 512, 128, 4
    base = nn.Linear(width, width, bias=False)
    layer = QTALoRALinear(base, r=r)
    x = torch.randn(n, width, requires_grad=True)
    qta = _saved_bytes(lambda: layer(x))
    # x_q (1 B/elt) + s_x + h, and the existing int8 weight, A_q and B
    activations = n * width + 4 * n + 4 * n * r
    assert qta <= activations + width * width + 8 * (width * r) + 4 * width + 64
    a = layer.lora_A.weight.detach().clone().requires_grad_()
    b = layer.lora_B.weight.detach().clone().requires_grad_()
    fp = _saved_bytes(lambda: base(x) + (x @ a.t()) @ b.t())
    assert fp >= 4 * n * width  # plain autograd keeps the float input
