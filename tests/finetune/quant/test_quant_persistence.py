"""save_quantized / load_quantized_, trainable scales, real storage size."""
import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from finetune.quant import (QuantLinear, load_quantized_, load_trainable_scales_, quantize_,
                            quantized_weight_bytes, save_quantized, scale_parameters, set_timestep_,
                            trainable_scale_state_dict)


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(4, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, stride=2, padding=1),
                         nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.SiLU(), nn.Linear(128, 8, bias=False))


def _state_bytes(m):
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


def test_four_bit_model_is_smaller_in_memory_and_on_disk(tmp_path):
    fp = model()
    n_weights = sum(l.weight.numel() for l in fp if isinstance(l, (nn.Linear, nn.Conv2d)))
    q = quantize_(copy.deepcopy(fp), bits=4)
    # half a byte per weight plus per-channel zero point (1 B), scale (4 B) and trainable offset (4 B)
    n_rows = 64 + 64 + 128 + 8
    assert quantized_weight_bytes(q) <= n_weights // 2 + n_rows * (1 + 4 + 4) + n_rows  # + odd-row padding
    assert _state_bytes(q) < 0.2 * _state_bytes(fp)
    save_file({k: v.contiguous() for k, v in fp.state_dict().items()}, str(tmp_path / "fp.safetensors"))
    path = save_quantized(q, tmp_path / "q.safetensors")
    assert path.stat().st_size < 0.2 * (tmp_path / "fp.safetensors").stat().st_size


def test_save_load_roundtrip_into_fresh_float_model(tmp_path):
    q = quantize_(model(), bits=4, separable=True, n_timestep_sets=2, plan={"re:.*": 4, "4": {"w_bits": 6, "a_bits": 8}})
    q[4].bias.requires_grad_(True)
    with torch.no_grad():
        for p in scale_parameters(q):
            p.add_(0.01 * torch.randn_like(p))
        q[4].a_scale.fill_(0.05)
    path = save_quantized(q, tmp_path / "sub" / "q.safetensors")
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([5, 700, 300])
    expected = set_timestep_(q, t)(x)

    fresh = model(seed=1)  # different float weights: everything must come from the file
    load_quantized_(fresh, path)
    assert isinstance(fresh[4], QuantLinear) and fresh[4].bits == 6 and fresh[4].a_bits == 8
    assert fresh[4].bias.requires_grad and not fresh[0].bias.requires_grad
    torch.testing.assert_close(set_timestep_(fresh, t)(x), expected, rtol=0, atol=0)
    # loading again into the now-quantized model overwrites in place
    load_quantized_(fresh, path)
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_load_errors(tmp_path):
    q = quantize_(model(), bits=4)
    path = save_quantized(q, tmp_path / "q.safetensors")
    other = nn.Sequential(nn.Conv2d(4, 32, 3))
    with pytest.raises(ValueError, match="weight shape"):
        load_quantized_(other, path)
    with pytest.raises(ValueError, match="does not exist in Sequential"):
        load_quantized_(nn.Sequential(nn.Conv2d(4, 64, 3, padding=1)), path)
    differently = quantize_(model(), bits=3)
    with pytest.raises(ValueError, match="w_bits"):
        load_quantized_(differently, path)
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="not written by save_quantized"):
        load_quantized_(model(), plain)
    with pytest.raises(ValueError, match="no quantized layer"):
        save_quantized(model(), tmp_path / "x.safetensors")


def test_trainable_scale_state_dict_roundtrip():
    q = quantize_(model(), bits=4, separable=True)
    with torch.no_grad():
        for p in scale_parameters(q):
            p.add_(torch.randn_like(p))
    sd = trainable_scale_state_dict(q)
    assert set(sd) == {f"{i}.{k}" for i in (0, 2, 4, 6) for k in ("delta_s_out", "s_in")}
    outs, ins = (64 + 64 + 128 + 8), (4 + 64 + 1024 + 128)  # delta_s_out over outputs, s_in over inputs
    assert sum(v.numel() for v in sd.values()) == outs + ins
    fresh = quantize_(model(), bits=4, separable=True)
    x = torch.randn(2, 4, 8, 8)
    assert not torch.allclose(fresh(x), q(x))
    load_trainable_scales_(fresh, sd)
    torch.testing.assert_close(fresh(x), q(x))
    with pytest.raises(ValueError, match="lacks"):
        load_trainable_scales_(fresh, {"9.delta_s_out": torch.zeros(1)})
