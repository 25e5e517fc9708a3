"""apply_qta_lora_, peft-compatible state dicts, training, and a tiny diffusers UNet."""
import copy

import pytest
import torch
from torch import nn

from finetune.qta import QTALoRALinear, apply_qta_lora_, qta_lora_parameters, qta_lora_state_dict


class Attn(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.to_out = nn.ModuleList([nn.Linear(d, d), nn.Dropout(0.0)])
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        a = torch.softmax(q @ k.transpose(-1, -2) / 4, -1)
        return self.to_out[1](self.to_out[0](a @ v)) + self.norm(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Attn(), Attn()])
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.proj(x)


def test_apply_replaces_targets_only_and_state_dict_matches_peft_keys():
    torch.manual_seed(0)
    net = Net()
    ref_net = copy.deepcopy(net)
    apply_qta_lora_(net, r=4, alpha=4)
    assert all(isinstance(b.to_q, QTALoRALinear) and isinstance(b.to_out[0], QTALoRALinear) for b in net.blocks)
    assert type(net.proj) is nn.Linear and type(net.blocks[0].norm) is nn.LayerNorm
    sd = qta_lora_state_dict(net)
    assert sd["blocks.0.to_q.lora_A.weight"].shape == (4, 16) and sd["blocks.1.to_out.0.lora_B.weight"].shape == (16, 4)

    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    peft_net = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
                                       ref_net)
    peft_sd = get_peft_model_state_dict(peft_net)
    assert set(sd) == set(peft_sd)
    assert all(sd[k].shape == peft_sd[k].shape for k in sd)
    # Loading the peft adapter's weights into the QTA model gives (up to int8 error) peft's function.
    with torch.no_grad():
        for k, v in peft_sd.items():
            if "lora_B" in k:
                v.normal_(0, 0.1)
    net.load_state_dict(peft_sd, strict=False)
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), peft_net(x), atol=0.05, rtol=0.05)


def test_apply_errors():
    with pytest.raises(ValueError, match="match no module.*'blocks.0.to_q'"):
        apply_qta_lora_(Net(), target_modules=("query",))
    with pytest.raises(ValueError, match="LayerNorm; QTA LoRA applies to nn.Linear only"):
        apply_qta_lora_(Net(), target_modules=("norm",))
    net = apply_qta_lora_(Net())
    with pytest.raises(ValueError, match="already carries"):
        apply_qta_lora_(net)
    with pytest.raises(ValueError, match="no QTA LoRA layer"):
        qta_lora_state_dict(Net())
    assert isinstance(apply_qta_lora_(Net(), target_modules=r"blocks\.1\.to_v").blocks[1].to_v, QTALoRALinear)


def test_qta_lora_learns_a_low_rank_update_like_fp32_lora():
    """Teacher = base + rank-2 delta on the attention projections; QTA LoRA (int8 GEMMs) and fp32 LoRA
    both recover it from the same init."""
    torch.manual_seed(0)
    base = Net().requires_grad_(False)
    teacher = copy.deepcopy(base)
    with torch.no_grad():
        for name, m in teacher.named_modules():
            if name.split(".")[-1] in ("to_q", "to_v"):
                m.weight += 0.3 * torch.randn(16, 2) @ torch.randn(2, 16) / 4
    x = torch.randn(64, 8, 16)
    y = teacher(x).detach()
    finals = {}
    for kind in ("qta", "fp32"):
        torch.manual_seed(1)
        model = copy.deepcopy(base)
        if kind == "qta":
            apply_qta_lora_(model, r=2, alpha=2)
            params = qta_lora_parameters(model)
        else:
            from peft import LoraConfig, inject_adapter_in_model

            model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), model)
            params = [p for n, p in model.named_parameters() if "lora_" in n]
            for p in params:
                p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
        for step in range(150):
            loss = (model(x) - y).pow(2).mean()
            if step == 0:
                first = loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        finals[kind] = loss.item()
        assert finals[kind] < 0.1 * first, (kind, first, finals[kind])
        assert all(p.grad is None or not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert finals["qta"] < 1.5 * finals["fp32"] + 1e-4, finals


def test_qta_lora_on_tiny_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 32)
    with torch.no_grad():
        ref = unet(x, t, c).sample
    targets = [n for n, m in unet.named_modules()
               if isinstance(m, nn.Linear) and n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]
    unet.requires_grad_(False)
    apply_qta_lora_(unet, r=4, alpha=4)
    assert [n for n, m in unet.named_modules() if isinstance(m, QTALoRALinear)] == targets
    assert len(targets) == 4 * 2 * 4  # 4 transformer blocks (down, mid, 2 up) × (attn1, attn2) × (q, k, v, out)
    out = unet(x, t, c).sample
    assert (out - ref).norm() / ref.norm() < 0.05  # B = 0: only the int8 error of the base weights
    out.pow(2).mean().backward()
    params = qta_lora_parameters(unet)
    assert all(p.grad is not None for p in params)
    assert {id(p) for p in unet.parameters() if p.grad is not None} == {id(p) for p in params}
