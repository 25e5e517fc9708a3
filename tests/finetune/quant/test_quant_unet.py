"""TuneQDM on a tiny diffusers UNet built from a config (no weights downloaded)."""
import copy

import pytest
import torch

from finetune.quant import (QuantConv2d, QuantLinear, load_quantized_, mark_only_scales_trainable_,
                            quant_summary, quantize_, save_quantized, scale_parameters, timestep_scales)

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()


def test_tuneqdm_on_tiny_unet(unet, tmp_path):
    torch.manual_seed(1)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 32)
    with torch.no_grad():
        ref = unet(x, t, cond).sample

    q8 = quantize_(copy.deepcopy(unet), bits=8)
    with torch.no_grad():
        assert (q8(x, t, cond).sample - ref).norm() / ref.norm() < 0.02

    q = quantize_(copy.deepcopy(unet), bits=4, separable=True, n_timestep_sets=2)
    n_fp = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in unet.modules())
    assert quant_summary(q).n_layers == n_fp
    assert q.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.__class__ is QuantLinear
    assert q.conv_in.__class__ is QuantConv2d
    mark_only_scales_trainable_(q)
    with timestep_scales(q, t):
        out = q(x, t, cond).sample
    assert (out - ref).norm() / ref.norm() < 0.5
    out.pow(2).mean().backward()
    scales = scale_parameters(q)
    assert all(p.grad is not None for p in scales)
    assert {id(p) for p in q.parameters() if p.grad is not None} == {id(p) for p in scales}
    # each sample used its own interval's set: both sets received gradient
    g = q.conv_in.delta_s_out.grad
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0

    path = save_quantized(q, tmp_path / "unet_q.safetensors")
    loaded = load_quantized_(copy.deepcopy(unet), path)
    with torch.no_grad(), timestep_scales(loaded, t), timestep_scales(q, t):
        torch.testing.assert_close(loaded(x, t, cond).sample, q(x, t, cond).sample, rtol=0, atol=0)
