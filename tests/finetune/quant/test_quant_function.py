"""The recompute-in-backward matmul: gradients (gradcheck, naive formula) and what it keeps alive."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from finetune.quant import QuantConv2d, QuantLinear, quant_matmul
from finetune.quant.functional import ConvArgs, WeightLayout
from finetune.quant.packing import pack_codes


def _setup(shape, bits, separable, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    o, c = shape[0], shape[1]
    k = int(torch.tensor(shape[1:]).prod())
    codes = torch.randint(0, 2**bits, (o, k), generator=g, dtype=torch.uint8)
    zero = torch.randint(0, 2**bits, (o,), generator=g, dtype=torch.uint8)
    s_out = (torch.rand(o, generator=g, dtype=dtype) + 0.5) * 0.1
    delta = (torch.randn(o, generator=g, dtype=dtype) * 0.01).requires_grad_()
    s_in = (1 + 0.1 * torch.randn(c, generator=g, dtype=dtype)).requires_grad_() if separable else None
    bias = torch.randn(o, generator=g, dtype=dtype).requires_grad_()
    return pack_codes(codes, bits), codes, zero, s_out, delta, s_in, bias


def _naive_weight(codes, zero, s_out, delta, s_in, shape):
    """Plain-autograd Ŵ (the memory-hungry formulation the Function replaces)."""
    w = (s_out + delta)[:, None] * (codes.to(s_out.dtype) - zero.to(s_out.dtype)[:, None])
    w = w.view(shape[0], shape[1], -1)
    if s_in is not None:
        w = w * s_in[None, :, None]
    return w.view(shape)


CASES = [
    ("linear", (6, 5), None),
    ("conv", (4, 3, 3, 3), ConvArgs((1, 1), (1, 1), (1, 1), 1)),
    ("conv-stride-groups", (4, 2, 3, 2), ConvArgs((2, 1), (0, 1), (1, 2), 2)),
]


@pytest.mark.parametrize("name,shape,conv", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("bits", [3, 8])
def test_gradcheck_and_naive_formula(name, shape, conv, separable, bits):
    packed, codes, zero, s_out, delta, s_in, bias = _setup(shape, bits, separable)
    layout = WeightLayout(bits, shape)
    g = torch.Generator().manual_seed(1)
    if conv is None:
        x = torch.randn(2, 3, shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    else:
        x = torch.randn(2, shape[1] * conv.groups, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x, delta, s_in, bias):
        return quant_matmul(x, packed, zero, s_out, delta, s_in, bias, layout, conv)

    inputs = (x, delta, s_in, bias)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)

    # Same values and gradients as differentiating the naive Ŵ = (s_out + Δs)(W_q − z)s_in.
    w = _naive_weight(codes, zero, s_out, delta, s_in, shape)
    ref = F.linear(x, w, bias) if conv is None else F.conv2d(x, w, bias, conv.stride, conv.padding,
                                                             conv.dilation, conv.groups)
    out = fn(*inputs)
    torch.testing.assert_close(out, ref)
    up = torch.randn(out.shape, generator=g, dtype=out.dtype)
    params = [t for t in inputs if t is not None]
    torch.testing.assert_close(torch.autograd.grad(out, params, up), torch.autograd.grad(ref, params, up))


def test_only_requested_gradients_are_computed():
    packed, codes, zero, s_out, delta, _, bias = _setup((4, 3), 4, False)
    x = torch.randn(5, 3, dtype=torch.float64)  # no grad wanted for x or bias
    bias.requires_grad_(False)
    out = quant_matmul(x, packed, zero, s_out, delta, None, bias, WeightLayout(4, (4, 3)))
    (gd,) = torch.autograd.grad(out.sum(), [delta])
    assert gd.shape == (4,)


def _saved_bytes(model, x):
    """Bytes of tensors autograd keeps for backward that are not parameters or buffers of ``model``."""
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen, total = set(), [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own and ptr not in seen:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return total[0]


def _naive_tuneqdm_forward(layer: QuantLinear, x):
    """What a straightforward TuneQDM layer does: materialise Ŵ with autograd."""
    codes = torch.stack((layer.qweight & 0xF, layer.qweight >> 4), -1).view(layer.out_features, -1)
    w = _naive_weight(codes[:, :layer.in_features], layer.zero_point, layer.s_out, layer.delta_s_out[0],
                      layer.s_in[0], layer.layout.shape)
    return F.linear(x, w, layer.bias)


def test_saved_memory_tuneqdm_equals_peqa_and_beats_naive():
    torch.manual_seed(0)
    width, tokens = 256, 8
    fp = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])
    x = torch.randn(tokens, width)

    def quantized(separable):
        return nn.Sequential(*[QuantLinear.from_float(l, 4, init="minmax", separable=separable) for l in fp])

    peqa, tuneqdm = quantized(False), quantized(True)
    b_peqa, b_tune = _saved_bytes(peqa, x), _saved_bytes(tuneqdm, x)
    # Only the inputs (tokens x width floats per layer) and O(width) scale vectors are kept.
    assert b_peqa <= 4 * (tokens * width * 4 + 4 * width * 4)
    assert b_tune <= 1.10 * b_peqa

    class Naive(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            for l in self.layers:
                x = _naive_tuneqdm_forward(l, x)
            return x

    b_naive = _saved_bytes(Naive(tuneqdm), x)
    assert b_naive > 4 * width * width * 4  # it keeps at least one full-precision weight-sized tensor per layer
    torch.testing.assert_close(Naive(tuneqdm)(x), tuneqdm(x))


def test_bf16_input_and_conv_padding_modes():
    torch.manual_seed(0)
    for conv in [nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")]:
        q = QuantConv2d.from_float(conv, 8, init="minmax")
        x = torch.randn(2, 3, 6, 6)
        torch.testing.assert_close(q(x), conv(x), atol=2e-2, rtol=0)
        out = q(x.bfloat16())
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        assert q.delta_s_out.grad is not None and q.delta_s_out.grad.dtype == torch.float32


@pytest.mark.parametrize("name,shape,conv", CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_per_sample_scale_sets_match_naive_and_gradcheck(name, shape, conv):
    """TuneQDM's mixed-interval batch: sample b uses scale set sets[b] ([N, O] and [N, C] scales)."""
    packed, codes, zero, s_out, _, _, bias = _setup(shape, 4, True)
    o, c = shape[0], shape[1]
    g = torch.Generator().manual_seed(2)
    delta = (torch.randn(2, o, generator=g, dtype=torch.float64) * 0.01).requires_grad_()
    s_in = (1 + 0.1 * torch.randn(2, c, generator=g, dtype=torch.float64)).requires_grad_()
    sets = torch.tensor([1, 0, 1])
    layout = WeightLayout(4, shape)
    x = (torch.randn(3, 2, c, generator=g, dtype=torch.float64) if conv is None else
         torch.randn(3, c, 4, 5, generator=g, dtype=torch.float64)).requires_grad_()

    def fn(x, delta, s_in, bias):
        return quant_matmul(x, packed, zero, s_out, delta, s_in, bias, layout, conv, sets=sets)

    assert torch.autograd.gradcheck(fn, (x, delta, s_in, bias), eps=1e-6, atol=1e-6)
    out = fn(x, delta, s_in, bias)
    for b, k in enumerate(sets.tolist()):
        w = _naive_weight(codes, zero, s_out, delta[k], s_in[k], shape)
        xb = x[b:b + 1]
        ref = F.linear(xb, w, bias) if conv is None else F.conv2d(xb, w, bias, conv.stride, conv.padding,
                                                                 conv.dilation, conv.groups)
        torch.testing.assert_close(out[b:b + 1], ref)


def test_mixed_timestep_sets_keep_no_more_activations_than_one_set():
    from finetune.quant import set_timestep_

    torch.manual_seed(0)
    width, batch = 128, 8
    fp = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])
    q = nn.Sequential(*[QuantLinear.from_float(l, 4, init="minmax", separable=True, n_timestep_sets=2) for l in fp])
    x = torch.randn(batch, width)
    set_timestep_(q, torch.full((batch,), 100))
    one = _saved_bytes(q, x)
    set_timestep_(q, torch.tensor([100, 900] * (batch // 2)))
    mixed = _saved_bytes(q, x)
    assert mixed <= one + 1024  # + the [B] set-index tensor per layer; no per-group input copies
