"""Every fine-tuning method on a tiny seeded pixel model: a training step, save/load round trips, resume,
bad input."""
from __future__ import annotations

import json

import pytest
import torch

from data import SplitDataset, load_dataset
from finetune.methods import METHODS, get_method
from finetune.model import T2IModel
from finetune.runner import run
from tiny_models import tiny_model

STEPS = 3


@pytest.fixture(scope="module")
def small_data() -> SplitDataset:
    ds = load_dataset("builtin:shapes_circles")
    return SplitDataset(name=ds.name, train=ds.train.subset(range(8)), heldout=ds.heldout.subset(range(2)),
                        ref="builtin:shapes_circles[:8]")


def cfg_for(method: str, **kw) -> dict:
    base = {"steps": STEPS, "lr": 1e-3, "checkpoint_every": 0}
    if method in ("ti", "zo-ti"):
        base["initializer"] = "circle"
    if method == "zo-ti":
        base["tau"] = 2  # exercise the PCA refresh within a few steps
    base.update(kw)
    return base


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_and_saves(method, small_data, tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    res = run(model, small_data, method, cfg_for(method), tmp_path)
    assert res.steps == STEPS and len(res.losses) == STEPS
    assert all(torch.isfinite(torch.tensor(res.losses)))
    assert res.trainable_params > 0 and res.peak_mem_bytes >= 0
    assert res.heldout_loss_before is not None and res.heldout_loss_after is not None
    for path in res.artefacts.values():
        assert (tmp_path / path).exists() or __import__("pathlib").Path(path).exists()
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["method"] == method and saved["losses"] == res.losses
    if method in ("lora", "qta-lora", "ti", "zo-ti"):
        # only adapters / the new token train: every original denoiser weight is untouched
        after = model.denoiser.state_dict()
        kept = [k for k in before if k in after]
        assert kept and all(torch.equal(before[k], after[k]) for k in kept)


def _outputs(model: T2IModel, prompts=("a red circle",)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        return model.denoise(x, torch.tensor([500]), model.encode_prompt(list(prompts)))


def test_lora_round_trip(small_data, tmp_path):
    from finetune.methods.lora import load_lora_

    model = tiny_model()
    res = run(model, small_data, "lora", cfg_for("lora", lr=1e-2), tmp_path)
    fresh = tiny_model()
    assert not torch.allclose(_outputs(fresh), _outputs(model))  # training changed the output
    load_lora_(fresh, res.artefacts["lora"])
    torch.testing.assert_close(_outputs(fresh), _outputs(model))
    # diffusers reads the same file for a UNet
    other = tiny_model()
    other.denoiser.load_lora_adapter(res.artefacts["lora"], prefix="unet", weight_name="pytorch_lora_weights.safetensors")
    torch.testing.assert_close(_outputs(other), _outputs(model), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["ti", "zo-ti"])
def test_embedding_round_trip(method, small_data, tmp_path):
    from safetensors.torch import load_file

    from finetune.methods.tokens import load_embedding_

    model = tiny_model()
    res = run(model, small_data, method, cfg_for(method, lr=1e-2), tmp_path)
    sd = load_file(res.artefacts["embedding"])
    assert list(sd) == ["<mandc>"] and sd["<mandc>"].shape == (1, 384)
    fresh = tiny_model()
    init = fresh.text_encoder.get_input_embeddings().weight[fresh.tokenizer.convert_tokens_to_ids("circle")]
    assert not torch.allclose(sd["<mandc>"][0], init)  # it learned something
    token = load_embedding_(fresh, res.artefacts["embedding"])
    row = lambda m: m.text_encoder.get_input_embeddings().weight[m.tokenizer.convert_tokens_to_ids(token)]
    torch.testing.assert_close(row(fresh), row(model))
    ids = fresh.tokenize(["<mandc> circle"])["input_ids"][0].tolist()
    assert fresh.tokenizer.convert_tokens_to_ids("<mandc>") in ids  # the prompt really uses the new token


@pytest.mark.parametrize("method", ["peqa", "tuneqdm"])
def test_quantized_round_trip(method, small_data, tmp_path):
    from finetune.quant import load_quantized_, set_timestep_

    model = tiny_model()
    res = run(model, small_data, method, cfg_for(method, lr=1e-2), tmp_path)
    fresh = tiny_model()
    load_quantized_(fresh.denoiser, res.artefacts["quantized_denoiser"])
    torch.testing.assert_close(_outputs(fresh), _outputs(model))


def test_full_round_trip(small_data, tmp_path):
    from diffusers import UNet2DConditionModel

    model = tiny_model()
    res = run(model, small_data, "full", cfg_for("full"), tmp_path)
    fresh = tiny_model()
    fresh.pipeline.unet = fresh.denoiser = UNet2DConditionModel.from_pretrained(res.artefacts["denoiser"]).eval()
    torch.testing.assert_close(_outputs(fresh), _outputs(model))


def test_tuneqdm_uses_one_scale_set_per_timestep_interval(small_data, tmp_path):
    from finetune.quant import QuantLayer

    model = tiny_model()
    run(model, small_data, "tuneqdm", cfg_for("tuneqdm", lr=1e-2, steps=8), tmp_path)
    layer = next(m for m in model.denoiser.modules() if isinstance(m, QuantLayer))
    assert layer.n_timestep_sets == 2 and layer.s_in is not None
    x = torch.randn(1, 3, 32, 32)
    c = model.encode_prompt(["a circle"])
    with torch.no_grad():  # t=100 and t=300 share set 0; t=900 uses set 1 — different weights
        a, b, d = (model.denoise(x, torch.tensor([t]), c) for t in (100, 300, 900))
    base = tiny_model()
    with torch.no_grad():
        ref = [base.denoise(x, torch.tensor([t]), c) for t in (100, 300, 900)]
    # the change a scale set makes differs between the two intervals
    assert not torch.allclose(a - ref[0], d - ref[2], atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "zo-ti"])
def test_resume_matches_uninterrupted(method, small_data, tmp_path):
    cfg = cfg_for(method, steps=6, checkpoint_every=2)
    full = run(tiny_model(), small_data, method, cfg, tmp_path / "a")

    class Stop(Exception):
        pass

    def die(done, total):
        if done == 5:
            raise Stop

    with pytest.raises(Stop):
        run(tiny_model(), small_data, method, cfg, tmp_path / "b", progress=die)
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = run(tiny_model(), small_data, method, cfg, tmp_path / "b")
    assert resumed.resumed_from == 4
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)
    assert resumed.heldout_loss_after == pytest.approx(full.heldout_loss_after, rel=1e-5)
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    # a finished run is not repeated
    again = run(tiny_model(), small_data, method, cfg, tmp_path / "b")
    assert again.losses == resumed.losses and again.resumed_from == 4


def test_zo_ti_builds_no_graph_and_quantizes_everything(small_data, tmp_path):
    from finetune.quant import QuantLayer

    model = tiny_model()
    run(model, small_data, "zo-ti", cfg_for("zo-ti"), tmp_path)
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert all(p.grad is None for p in model.denoiser.parameters())
    for module in (model.denoiser, model.text_encoder):
        assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in module.modules())
        assert any(isinstance(m, QuantLayer) and m.bits == 8 for m in module.modules())


def test_subspace_projector_removes_low_variance_directions():
    from finetune.methods.zo_ti import SubspaceProjector

    torch.manual_seed(0)
    d = 16
    p = SubspaceProjector(tau=32, nu=1e-3)
    basis = torch.linalg.qr(torch.randn(d, d))[0]
    for i in range(32):  # history moves in 3 directions only
        p.push(basis[:3].T @ torch.randn(3) * 5)
    i_star = p.refresh()
    assert i_star <= 3 and p.P.shape[1] == d
    g = torch.randn(d)
    out = p.project(g)
    assert torch.allclose(out @ p.P.T, torch.zeros(p.P.shape[0]), atol=1e-5)


def test_bad_input(small_data, tmp_path):
    with pytest.raises(ValueError, match="unknown fine-tuning method 'loraa'.*lora"):
        get_method("loraa")
    with pytest.raises(ValueError, match="bits"):
        run(tiny_model(), small_data, "peqa", {"bits": 9}, tmp_path)
    with pytest.raises(ValueError, match="re:nothing_here"):
        run(tiny_model(), small_data, "peqa", {"plan": {"re:nothing_here": 4}}, tmp_path)
    with pytest.raises(ValueError, match="no option"):
        run(tiny_model(), small_data, "lora", {"rnak": 3}, tmp_path)
    with pytest.raises(ValueError, match="remainder-in-backward"):
        run(tiny_model(), small_data, "full", {"optimizer": "remainder-in-backward", "max_grad_norm": 1.0}, tmp_path)


@pytest.mark.parametrize("optimizer", ["adamw", "remainder-in-backward"])
def test_gradient_checkpointing_recomputes_and_keeps_the_losses(optimizer, small_data, tmp_path):
    def train(gc: bool):
        model = tiny_model()
        calls = []
        # a pre-hook: recomputation stops early, once it has what backward needs, so a post-hook never fires
        model.denoiser.down_blocks[0].resnets[0].register_forward_pre_hook(lambda *a: calls.append(1))
        res = run(model, small_data, "full", cfg_for("full", steps=2, optimizer=optimizer, gradient_checkpointing=gc),
                  tmp_path / str(gc), evaluate_loss=False)
        return res, len(calls), model

    plain, plain_calls, _ = train(False)
    ckpt, ckpt_calls, model = train(True)
    assert model.denoiser.is_gradient_checkpointing
    assert (plain_calls, ckpt_calls) == (2, 4)  # each step's block forward runs again in backward
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-5)
