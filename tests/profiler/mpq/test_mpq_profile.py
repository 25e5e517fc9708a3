"""MPQ-Diff end to end on tiny untrained pixel-space models (a UNet and a PixArt DiT, MiniLM text encoder)."""
import copy
import json

import numpy as np
import pytest
import torch

from finetune.model import T2IModel
from finetune.quant import QuantLayer, load_quantized_, mark_only_scales_trainable_, scale_parameters
from finetune.zoo.builder import new_pipeline
from finetune.zoo.specs import ZooSpec, dit, unet
from profiler.mpq import (Budget, InfeasibleBudgetError, MPQConfig, calibration_batch, layer_grams,
                          profile_bits, profile_importance, quantized_copy, run_quantize)
from profiler.mpq.baselines import baseline_plan, sensitivity_profile
from profiler.mpq.profile import plan_from_profile, with_denoiser


@pytest.fixture(scope="module")
def tiny_unet():
    spec = ZooSpec("tiny-unet", "unet", unet((8, 16), groups=4, head_dim=8), {"gradients": 1}, 1, 4, 1e-3, 0, "test")
    return T2IModel(new_pipeline(spec))


@pytest.fixture(scope="module")
def tiny_dit():
    spec = ZooSpec("tiny-dit", "dit", dit(32, 1, heads=2, patch=4), {"gradients": 1}, 1, 4, 1e-3, 0, "test")
    return T2IModel(new_pipeline(spec))


@pytest.fixture(scope="module")
def unet_profile(tiny_unet, data):
    batch = calibration_batch(tiny_unet, data.train, 8, seed=0)
    return batch, profile_importance(tiny_unet, batch, 3)


def test_probe_finds_every_layer_in_execution_order(tiny_unet, unet_profile):
    batch, prof = unet_profile
    names = [i.name for i in prof.layers]
    all_layers = {n for n, m in tiny_unet.denoiser.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert set(names) == all_layers and len(names) == len(all_layers)
    roles = {i.name: i.role for i in prof.layers if i.role}
    assert roles == {"conv_in": "input", "conv_out": "output"}
    assert names.index("conv_in") < names.index("down_blocks.0.resnets.0.conv1") < names.index("conv_out")
    conv_in = prof.layers[names.index("conv_in")]
    assert conv_in.macs == 32 * 32 * 8 * 3 * 3 * 3  # H·W·C_out · C_in·kh·kw per sample
    assert prof.gamma.shape == (3, len(names)) and np.isfinite(prof.gamma).all()
    # the time-embedding MLP is constant over a batch at one t: flagged, ranked with the most orthogonal layer
    te = names.index("time_embedding.linear_1")
    assert prof.degenerate[:, te].all() and not prof.degenerate[:, names.index("conv_in")].any()
    assert np.allclose(prof.gamma[:, te], prof.gamma[:, ~prof.degenerate[0]].min(1))


def test_micro_batched_capture_matches_one_forward(tiny_unet, unet_profile):
    batch, prof = unet_profile
    full = layer_grams(tiny_unet, batch, 400, prof.layers)
    split = layer_grams(tiny_unet, batch, 400, prof.layers, micro_batch=3, max_feature_bytes=512 * 1024)
    torch.testing.assert_close(split.grams, full.grams, rtol=1e-4, atol=1e-6 * float(full.grams.abs().max()))
    torch.testing.assert_close(split.input_max, full.input_max)


def test_profile_bits_respects_budget_and_pins(tiny_unet, data):
    plan = profile_bits(tiny_unet, data, avg_bits=3, timesteps=3, n_calib=8, time_limit=2.0, allocator="mpq")
    b, u = plan.budget, plan.usage
    assert u["weight_bytes"] <= b["weight_bytes"] and u["bops"] <= b["bops"] and u["avg_bits"] <= 3 + 1e-9
    assert set(plan.w_bits) <= {2, 3, 4, 6, 8} and set(plan.a_bits) <= {4, 6, 8, 16}
    assert plan.layers["conv_in"] == plan.layers["conv_out"] == {"w_bits": 8, "a_bits": 8}
    assert plan.settings["timesteps"] == [166, 500, 833] and plan.settings["allocator"] == "mpq"
    assert max(plan.importance.values()) == 1.0 and len(plan.act_ranges) == len(plan.layers)


def test_bigger_budget_never_costs_quality_in_the_objective(tiny_unet, unet_profile):
    """More memory gives at least as many bits on average (monotone plans over budgets)."""
    _, prof = unet_profile
    cfg = MPQConfig(time_limit=1.0, allocator="mpq")
    avg = [plan_from_profile(prof, Budget.from_avg_bits(prof.layers, b), cfg).usage["avg_bits"] for b in (2.5, 4, 6)]
    assert avg[0] < avg[1] < avg[2]


def test_validation_picks_beta_and_alpha_from_the_grid(tiny_unet, data):
    stages = []
    plan = profile_bits(tiny_unet, data, avg_bits=4, timesteps=2, n_calib=4, validate=True, n_validation=4,
                        contrast_grid=(0.5, 2.0), alpha_grid=(0.0, 3.0), time_limit=2.0,
                        progress=lambda stage, done, total: stages.append((stage, done, total)))
    table = plan.settings["validation"]
    assert [(r["contrast"], r["alpha"]) for r in table] == [(0.5, 0.0), (0.5, 3.0), (2.0, 0.0), (2.0, 3.0)]
    best = min(table, key=lambda r: r["validation_loss"])["validation_loss"]
    chosen = next(r for r in table if (r["contrast"], r["alpha"]) == (plan.settings["contrast"], plan.settings["alpha"]))
    assert chosen["validation_loss"] == best and plan.settings["n_validation"] == 4
    assert ("profile", 2, 2) in stages and ("validate", 4, 4) in stages


def test_infeasible_budget_fails_before_profiling(tiny_unet, data):
    with pytest.raises(InfeasibleBudgetError, match="smallest feasible budget") as e:
        profile_bits(tiny_unet, data, budget=1000, n_calib=8)
    assert e.value.min_weight_bytes > 1000


def test_dit_profile_and_baselines(tiny_dit, data):
    batch = calibration_batch(tiny_dit, data.train, 8, seed=0)
    prof = profile_importance(tiny_dit, batch, 2)
    names = prof.names
    assert {i.name: i.role for i in prof.layers if i.role} == {"pos_embed.proj": "input", "proj_out": "output"}
    budget = Budget.from_avg_bits(prof.layers, 4)
    mpq = plan_from_profile(prof, budget, MPQConfig(time_limit=2.0, allocator="mpq"))
    uni = baseline_plan(prof.layers, "uniform", budget, uniform_bits=(4, 8))
    assert uni.usage["weight_bytes"] == pytest.approx(budget.weight_bytes)  # uniform defines the budget
    rnd = baseline_plan(prof.layers, "random", budget, seed=1, theta=prof.importance(prof.beta(MPQConfig())),
                        pinned={0: (8, 8)})
    sens = sensitivity_profile(tiny_dit, batch, prof.layers, [500], n_samples=2, w_choices=(2, 8), a_choices=(4, 16))
    assert (sens.w_error[:, 0] >= sens.w_error[:, 1]).all() and (sens.a_error[:, 1] == 0).all()
    sp = baseline_plan(prof.layers, "sensitivity", budget, sensitivity=sens)
    for plan in (mpq, rnd, sp):
        assert plan.usage["weight_bytes"] <= budget.weight_bytes and plan.usage["bops"] <= budget.bops
        assert list(plan.layers) == names
    q = quantized_copy(tiny_dit, mpq)
    assert sum(isinstance(m, QuantLayer) for m in q.denoiser.modules()) == len(names)
    assert not any(isinstance(m, QuantLayer) for m in tiny_dit.denoiser.modules())  # original untouched


def test_run_quantize_shrinks_samples_and_finetunes(tiny_unet, data, tmp_path):
    model = with_denoiser(tiny_unet, copy.deepcopy(tiny_unet.denoiser))  # run_quantize quantizes in place
    res = run_quantize(model, data, tmp_path / "plan", budget_mb=0.09, timesteps=2, n_calib=8,
                       config=MPQConfig(time_limit=2.0))
    assert res.plan_path == tmp_path / "plan.json" and res.plot_path.suffix == ".png" and res.plot_path.exists()
    saved = json.loads(res.plan_path.read_text())
    assert saved["budget"]["storage"] == "packed" and saved["budget"]["weight_bytes"] == 90_000
    # packed budgets count what finetune.quant really stores: memory == the plan's accounting <= budget
    assert res.memory_bytes == pytest.approx(res.plan_bytes) and res.memory_bytes <= 90_000
    assert res.memory_bytes < res.float_bytes / 4
    # the file adds biases, activation scales and a JSON header (large next to a 0.1M-parameter model)
    assert res.disk_bytes is not None and res.memory_bytes < res.disk_bytes < res.float_bytes / 2
    assert any("on disk" in line for line in res.lines())

    # the quantized model samples ...
    images = model.sample(["a red to blue gradient"], steps=2, seed=0)
    assert images[0].size == (32, 32)
    # ... fine-tunes (quantization scales get gradients) ...
    mark_only_scales_trainable_(model.denoiser)
    pixels = data.train.to_tensor(32)[:2]
    loss = model.training_loss({"pixel_values": pixels, "prompts": list(data.train.captions[:2])},
                               generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in scale_parameters(model.denoiser))
    # ... and the saved file restores the same layers into a fresh copy
    fresh = copy.deepcopy(tiny_unet.denoiser)
    load_quantized_(fresh, res.weights_path)
    assert sum(isinstance(m, QuantLayer) for m in fresh.modules()) == len(res.plan.layers)


def test_finetune_run_takes_the_plan_file(tiny_unet, data, tmp_path):
    """The product path: ``finetune.run(..., "peqa", {"plan": plan.json})`` quantizes with the plan's bits."""
    from finetune.runner import run

    cfg = MPQConfig(time_limit=2.0)
    plan = profile_bits(tiny_unet, data, avg_bits=3, timesteps=1, n_calib=4, config=cfg)
    path = plan.save(tmp_path / "plan.json")
    model = with_denoiser(tiny_unet, copy.deepcopy(tiny_unet.denoiser))
    res = run(model, data, "peqa", {"plan": str(path), "steps": 2, "batch_size": 2, "lr": 1e-3,
                                    "checkpoint_every": 0}, tmp_path / "ft", evaluate_loss=False)
    assert res.steps == 2 and all(np.isfinite(res.losses))
    bits = {n: (m.bits, m.a_bits) for n, m in model.denoiser.named_modules() if isinstance(m, QuantLayer)}
    assert bits == {n: (v["w_bits"], v["a_bits"]) for n, v in plan.layers.items()}
    assert res.trainable_params == sum(p.numel() for p in scale_parameters(model.denoiser))
