"""quantize_: plans, errors, summary, timestep sets, activation quantization, training the scales."""
import copy
import json

import pytest
import torch
from torch import nn

from finetune.quant import (QuantConv2d, QuantLinear, calibrate_activations, mark_only_scales_trainable_,
                            quant_summary, quantize_, scale_parameters, set_timestep_, timestep_scales,
                            timestep_set_index)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.block = nn.ModuleDict({"to_q": nn.Linear(8, 8), "to_k": nn.Linear(8, 8, bias=False),
                                    "to_out": nn.ModuleList([nn.Linear(8, 8), nn.Dropout(0.0)])})
        self.conv_out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        h = self.norm(self.conv_in(x))
        b, c, hh, ww = h.shape
        t = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        t = self.block["to_out"][0](torch.tanh(self.block["to_q"](t)) + self.block["to_k"](t))
        return self.conv_out(t.reshape(b, hh, ww, c).permute(0, 3, 1, 2))


def tiny(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def test_quantize_all_layers_in_place_and_summary():
    m = tiny()
    x = torch.randn(2, 3, 6, 6)
    ref = m(x)
    out = quantize_(m, bits=8)
    assert out is m
    assert isinstance(m.conv_in, QuantConv2d) and isinstance(m.block["to_out"][0], QuantLinear)
    assert isinstance(m.norm, nn.GroupNorm)
    s = quant_summary(m)
    assert s.n_layers == 5 and s.layers_by_bits == {8: 5}
    assert s.bytes_before == 4 * s.n_weights and s.bytes_after < s.bytes_before / 2
    assert (m(x) - ref).norm() / ref.norm() < 0.02
    # Only scales (and nothing frozen) are new parameters; codes are buffers.
    names = {n for n, _ in m.named_parameters()}
    assert "conv_in.delta_s_out" in names and "conv_in.qweight" not in names
    assert not m.conv_in.bias.requires_grad


def test_plan_mapping_regex_override_and_untouched_layers(tmp_path):
    m = tiny()
    plan = {"re:block\\..*": 4, "block.to_k": {"w_bits": 6, "a_bits": 8}}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"budget": 123, "layers": plan}))
    quantize_(m, plan=str(path))
    assert m.block["to_q"].bits == 4 and m.block["to_out"][0].bits == 4
    assert m.block["to_k"].bits == 6 and m.block["to_k"].a_bits == 8
    assert type(m.conv_in) is nn.Conv2d and type(m.conv_out) is nn.Conv2d  # not in the plan


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=9), "2..8"),
    (dict(bits=1), "2..8"),
    (dict(plan={"conv_in": 12}), "w_bits of 'conv_in'"),
    (dict(plan={"block.to_v": 4}), "matches no layer.*'conv_in'"),
    (dict(plan={"re:.*nothing.*": 4}), "matches no layer"),
    (dict(plan={"norm": 4}), "names a GroupNorm, which is not quantizable"),
    (dict(plan={"re:no.*": 4}), "matches only modules that cannot be quantized"),
    (dict(plan={"conv_in": {"bits": 4}}), "must be bits or"),
    (dict(plan={"re:[": 4}), "not a valid regex"),
    (dict(skip=["nope"]), "skip entry 'nope' matches no layer"),
    (dict(init="mse"), "init must be one of"),
    (dict(a_bits=1), "a_bits"),
])
def test_plan_errors_are_clear(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize_(tiny(), **kwargs)


def test_plan_file_errors_and_already_quantized(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        quantize_(tiny(), plan=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        quantize_(tiny(), plan=bad)
    m = quantize_(tiny(), bits=4)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(m, plan={"conv_in": 4})


def test_skip_keeps_full_precision():
    m = quantize_(tiny(), bits=4, skip=["conv_in", "re:block\\.to_[qk]"])
    assert type(m.conv_in) is nn.Conv2d and type(m.block["to_q"]) is nn.Linear
    assert isinstance(m.block["to_out"][0], QuantLinear) and isinstance(m.conv_out, QuantConv2d)


def test_timestep_set_index():
    assert timestep_set_index(0, 4) == 0 and timestep_set_index(249, 4) == 0 and timestep_set_index(250, 4) == 1
    assert timestep_set_index(999, 4) == 3 and timestep_set_index(1000, 4) == 3
    assert timestep_set_index(torch.tensor([10]), 2) == 0
    assert torch.equal(timestep_set_index(torch.tensor([10, 500, 999]), 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="lie in"):
        timestep_set_index(-1, 2)


def test_timestep_sets_select_scales_per_sample():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 25, 5))
    quantize_(m, bits=4, separable=True, n_timestep_sets=2)
    with torch.no_grad():  # make the two sets differ
        for p in scale_parameters(m):
            p[1].mul_(1.5)
    x = torch.randn(3, 3, 5, 5)
    with pytest.raises(RuntimeError, match="set_timestep_"):
        m(x)
    t = torch.tensor([100, 900, 400])
    with timestep_scales(m, t):
        mixed = m(x)
    ref = torch.cat([set_timestep_(m, int(ti))(x[i:i + 1]) for i, ti in enumerate(t)])
    torch.testing.assert_close(mixed, ref)
    assert not torch.allclose(ref[1], set_timestep_(m, 0)(x[1:2])[0])
    with pytest.raises(RuntimeError, match="batch size"):
        set_timestep_(m, torch.tensor([1, 900]))(x)
    # the context manager restored the previous selection (here: the last set_timestep_)
    with timestep_scales(m, 999):
        pass
    with pytest.raises(RuntimeError, match="batch size"):
        m(x)
    # gradients reach only the sets used by the batch
    m.zero_grad()
    with timestep_scales(m, torch.tensor([10, 20, 30])):
        m(x).sum().backward()
    d = m[0].delta_s_out.grad
    assert d[0].abs().sum() > 0 and d[1].abs().sum() == 0


def test_activation_quantization_calibrate_and_straight_through():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    fp = [l for l in m if isinstance(l, nn.Linear)]
    x = torch.randn(64, 16) * 3
    quantize_(m, bits=8, init="minmax", a_bits=4)
    assert torch.isnan(m[0].a_scale)
    with calibrate_activations(m):
        m(x)
    torch.testing.assert_close(m[0].a_scale, x.abs().max() / 7)
    x_req = x.clone().requires_grad_()
    y = m[0](x_req)
    y.sum().backward()
    # straight-through: d(sum y)/dx = Σ_o Ŵ[o, :] for every row
    torch.testing.assert_close(x_req.grad, m[0].dequantized_weight().sum(0).expand(64, 16))
    # 4-bit activations change the output much more than 8-bit weights alone
    assert (y - fp[0](x)).abs().max() > 0.05


def test_training_scales_recovers_rescaled_teacher():
    """PEQA and TuneQDM students (4-bit) of a teacher whose weights are the students' source rescaled per
    output and per input channel: separable scales can represent that, output scales only half of it."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    teacher = copy.deepcopy(base)
    with torch.no_grad():
        for l in teacher[0], teacher[2]:
            a = 1 + 0.3 * torch.randn(l.out_features, 1)
            b = 1 + 0.3 * torch.randn(1, l.in_features)
            l.weight.mul_(a * b)
    x = torch.randn(256, 32)
    target = teacher(x).detach()
    losses = {}
    for separable in (False, True):
        student = quantize_(copy.deepcopy(base), bits=4, separable=separable)
        mark_only_scales_trainable_(student)
        frozen = {k: v.clone() for k, v in student.state_dict().items() if "delta_s_out" not in k and "s_in" not in k}
        opt = torch.optim.Adam(scale_parameters(student), lr=1e-2)
        first = None
        for _ in range(150):
            loss = (student(x) - target).pow(2).mean()
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[separable] = loss.item()
        assert loss.item() < 0.5 * first
        for k, v in student.state_dict().items():
            if k in frozen:
                assert torch.equal(v, frozen[k]), k
    assert losses[True] < 0.5 * losses[False], losses
