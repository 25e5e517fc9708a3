"""The allocator registry, the combined allocator and its gradient-estimated sensitivity (tiny seeded models)."""
import numpy as np
import pytest
from scipy.stats import spearmanr

from profiler.mpq import Budget, MPQConfig, calibration_batch, profile_bits, profile_importance
from profiler.mpq.allocate import allocate, plan_bops, plan_weight_bytes
from profiler.mpq.allocators import (ALLOCATORS, DEFAULT_ALLOCATOR, Allocator, combined_values, get_allocator,
                                     register_allocator)
from profiler.mpq.baselines import Sensitivity, sensitivity_profile
from profiler.mpq.capture import LayerInfo
from profiler.mpq.gradient_sensitivity import gradient_sensitivity
from profiler.mpq.profile import measure_sensitivity, plan_from_profile, sensitivity_timesteps


@pytest.fixture(scope="module")
def tiny_unet():
    from tiny_models import tiny_model

    return tiny_model("unet")


def _layers(n=6, width=16):
    return [LayerInfo(f"l{i}", "linear", (width, width), width, width * width, width * width, width) for i in range(n)]


def _sensitivity(layers, scale):
    """Errors of a quantizer's noise power per layer times ``scale[i]`` (choices W 2..8, A 4..16)."""
    ws, as_ = [2, 3, 4, 6, 8], [4, 6, 8, 16]
    d = lambda b: 1.0 / (2.0 ** (b - 1) - 1) ** 2  # noqa: E731
    w_err = np.array([[s * d(w) for w in ws] for s in scale])
    a_err = np.array([[0.0 if a >= 16 else s * d(a) for a in as_] for s in scale])
    return Sensitivity(layers, ws, as_, w_err, a_err, [500], 4, 0.0)


def test_combined_respects_the_budget_and_gives_the_sensitive_layer_more_bits():
    layers = _layers()
    scale = np.ones(len(layers))
    scale[2] = 1000.0  # one layer's quantization error reaches the output 1000x more strongly
    sens = _sensitivity(layers, scale)
    budget = Budget.from_avg_bits(layers, 3)
    alloc = allocate(layers, combined_values(np.ones(len(layers)), sens), budget)
    assert plan_weight_bytes(layers, alloc.w_bits) <= budget.weight_bytes * (1 + 1e-9)
    assert plan_bops(layers, alloc.w_bits, alloc.a_bits) <= budget.bops * (1 + 1e-9)
    others = [w for i, w in enumerate(alloc.w_bits) if i != 2]
    assert alloc.w_bits[2] > max(others)
    # importance enters as a weight: the same errors, one layer 1000x more important, gets the bits too
    theta = np.full(len(layers), 1e-3)
    theta[4] = 1.0
    alloc = allocate(layers, combined_values(theta, _sensitivity(layers, np.ones(len(layers)))), budget)
    assert alloc.w_bits[4] > max(w for i, w in enumerate(alloc.w_bits) if i != 4)


def test_default_allocator_is_the_registered_default():
    assert DEFAULT_ALLOCATOR == "grad-sensitivity"  # the best measured one (README "Bits per layer")
    assert {"grad-sensitivity", "combined", "mpq", "sensitivity"} <= set(ALLOCATORS)
    assert MPQConfig().allocator == DEFAULT_ALLOCATOR
    assert MPQConfig().k == get_allocator(DEFAULT_ALLOCATOR).timesteps and MPQConfig(allocator="mpq").k == 10
    with pytest.raises(ValueError, match="unknown bit allocator 'nope'; choose one of combined, grad-sensitivity, mpq, sensitivity, validated"):
        MPQConfig(allocator="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_allocator(Allocator("mpq", "again", None, lambda *a: None))


def test_gradient_sensitivity_agrees_with_the_measured_one(tiny_unet, data):
    batch = calibration_batch(tiny_unet, data.train, 4, seed=0)
    prof = profile_importance(tiny_unet, batch, 2)
    before = {n: p.requires_grad for n, p in tiny_unet.denoiser.named_parameters()}
    layers, ranges = prof.layers[::3], prof.input_max[::3]  # a third of the layers keeps the exact profile quick
    kw = dict(n_samples=4, w_choices=(2, 8), a_choices=(4, 16))
    est = gradient_sensitivity(tiny_unet, batch, layers, [500], ranges, probes=4, **kw)
    exact = sensitivity_profile(tiny_unet, batch, layers, [500], **kw)
    assert {n: p.requires_grad for n, p in tiny_unet.denoiser.named_parameters()} == before
    assert est.w_error.shape == exact.w_error.shape and (est.a_error[:, 1] == 0).all()
    # same quantity, same units: the per-layer ranking agrees and the magnitudes are alike
    assert spearmanr(est.w_error[:, 0], exact.w_error[:, 0]).statistic > 0.9
    assert spearmanr(est.a_error[:, 0], exact.a_error[:, 0]).statistic > 0.9
    ratio = np.median(est.w_error[:, 0] / exact.w_error[:, 0])
    assert 0.5 < ratio < 2.0


def test_profile_bits_uses_the_default_allocator_and_names_it(tiny_unet, data):
    plan = profile_bits(tiny_unet, data, avg_bits=3, n_calib=4, sens_samples=2, sens_probes=1, time_limit=2.0)
    # (the tiny scheduler has T = 1000, like the zoo's)
    b, u = plan.budget, plan.usage
    assert u["weight_bytes"] <= b["weight_bytes"] and u["bops"] <= b["bops"]
    assert plan.settings["allocator"] == DEFAULT_ALLOCATOR and plan.to_json()["settings"]["allocator"] == DEFAULT_ALLOCATOR
    assert plan.settings["k"] == 3 and len(plan.settings["timesteps"]) == 3 and plan.timing["sensitivity_s"] > 0
    assert plan.settings["sensitivity_timesteps"] == [333, 667]


def test_sensitivity_timesteps_are_interior_and_distinct():
    assert sensitivity_timesteps(1000, 2) == [333, 667] and sensitivity_timesteps(1000, 1) == [500]
    assert sensitivity_timesteps(4, 10) == [1, 2, 3]


def test_mpq_stays_selectable_and_needs_no_sensitivity(tiny_unet, data):
    batch = calibration_batch(tiny_unet, data.train, 4, seed=0)
    prof = profile_importance(tiny_unet, batch, 2)
    budget = Budget.from_avg_bits(prof.layers, 4)
    with pytest.raises(ValueError, match="'grad-sensitivity' allocator needs a sensitivity profile"):
        plan_from_profile(prof, budget, MPQConfig(time_limit=2.0))
    mpq = plan_from_profile(prof, budget, MPQConfig(allocator="mpq", time_limit=2.0))
    assert mpq.settings["allocator"] == "mpq" and "sensitivity_s" not in mpq.timing
    cfg = MPQConfig(time_limit=2.0, sens_samples=2, sens_probes=1)
    measure_sensitivity(tiny_unet, batch, prof, cfg)
    for name in ("grad-sensitivity", "combined"):
        plan = plan_from_profile(prof, budget, cfg.replace(allocator=name))
        assert plan.settings["allocator"] == name and plan.usage["weight_bytes"] <= budget.weight_bytes
    # the combined values are the estimated errors weighted by the orthogonality importance
    theta = prof.importance(prof.beta(cfg), cfg.alpha)
    np.testing.assert_allclose(combined_values(theta, prof.sensitivity), theta[:, None, None] * prof.sensitivity.values())


def test_range_pass_extends_the_activation_ranges_over_the_schedule(tiny_unet, data):
    from profiler.mpq.capture import input_ranges
    from profiler.mpq.importance import sample_timesteps

    batch = calibration_batch(tiny_unet, data.train, 4, seed=0)
    plain = profile_importance(tiny_unet, batch, 2)
    # the forward-only pass measures what the Gram capture records, at the same steps and images
    np.testing.assert_allclose(input_ranges(tiny_unet, batch, plain.timesteps, plain.layers).numpy(), plain.input_max,
                               rtol=1e-6)
    wide = profile_importance(tiny_unet, batch, 2, range_timesteps=5, range_samples=2)
    assert wide.range_timesteps == [t for t in sample_timesteps(1000, 5) if t not in plain.timesteps]
    np.testing.assert_array_equal(wide.gamma, plain.gamma)  # the importance is untouched
    extra = input_ranges(tiny_unet, batch.subset(2), wide.range_timesteps, plain.layers).numpy()
    np.testing.assert_allclose(wide.input_max, np.maximum(plain.input_max, extra), rtol=1e-6)
    assert (wide.input_max >= plain.input_max).all() and (wide.input_max > plain.input_max).any()
    # steps the profile already holds are not run again
    assert profile_importance(tiny_unet, batch, 5, range_timesteps=5).range_timesteps is None


def test_profile_bits_plans_with_the_range_pass(tiny_unet, data):
    plan = profile_bits(tiny_unet, data, avg_bits=4, n_calib=4, sens_samples=2, sens_probes=1, time_limit=2.0,
                        range_timesteps=4, range_samples=2)
    assert plan.settings["range_timesteps"] == 4 and plan.settings["range_samples"] == 2
    batch = calibration_batch(tiny_unet, data.train, 4, seed=0)
    ref = profile_importance(tiny_unet, batch, 3, range_timesteps=4, range_samples=2)
    np.testing.assert_allclose([plan.act_ranges[n] for n in ref.names], ref.input_max, rtol=1e-6)
    with pytest.raises(ValueError, match="range_samples must be an integer >= 1"):
        MPQConfig(range_samples=0)


def test_validated_keeps_the_candidate_plan_with_the_lower_validation_loss(tiny_unet, data):
    from finetune.metrics import heldout_loss
    from profiler.mpq.profile import VALIDATION_TIMESTEPS, pick_by_validation, quantized_copy, validation_images

    assert get_allocator("validated").candidates == ("grad-sensitivity", "combined")
    batch = calibration_batch(tiny_unet, data.train, 4, seed=0)
    prof = profile_importance(tiny_unet, batch, 2)
    cfg = MPQConfig(allocator="validated", time_limit=2.0, sens_samples=2, sens_probes=1, pick_samples=3)
    measure_sensitivity(tiny_unet, batch, prof, cfg)
    budget = Budget.from_avg_bits(prof.layers, 3)
    val = validation_images(data.train, batch, 8)
    plan = pick_by_validation(tiny_unet, prof, budget, val, cfg)
    scores = {}
    for name in ("grad-sensitivity", "combined"):  # each candidate's plan, scored independently on 3 images
        cand = plan_from_profile(prof, budget, cfg.replace(allocator=name))
        scores[name] = heldout_loss(quantized_copy(tiny_unet, cand), val.subset(range(3)), timesteps=VALIDATION_TIMESTEPS,
                                    noise_seeds=(0,)).mean
        if name == plan.settings["candidate"]:
            assert plan.layers == cand.layers
    assert plan.settings["allocator"] == "validated" and plan.settings["n_validation"] == 3
    assert plan.settings["candidate"] == min(scores, key=lambda n: (scores[n], n != "grad-sensitivity"))
    assert {r["allocator"]: r["validation_loss"] for r in plan.settings["candidates"]} == pytest.approx(scores)
    assert plan.timing["validation_s"] > 0 and plan.usage["weight_bytes"] <= budget.weight_bytes


def test_validated_without_validation_images_is_grad_sensitivity(tiny_unet, data):
    kw = dict(avg_bits=4, n_calib=len(data.train), sens_samples=2, sens_probes=1, time_limit=2.0, range_timesteps=3)
    plan = profile_bits(tiny_unet, data, allocator="validated", **kw)
    assert plan.settings["allocator"] == "validated" and plan.settings["candidate"].startswith("none")
    assert plan.layers == profile_bits(tiny_unet, data, allocator="grad-sensitivity", **kw).layers


def test_plans_at_several_budgets_pick_per_budget(tiny_unet, data):
    from profiler.mpq import profile_bits_at

    cfg = MPQConfig(allocator="validated", n_calib=4, n_validation=4, pick_samples=2, sens_samples=2, sens_probes=1,
                    time_limit=2.0, range_timesteps=3)
    plans = profile_bits_at(tiny_unet, data, [3, 8], config=cfg)
    assert set(plans) == {3, 8}
    for p in plans.values():  # each budget's plan says which candidate won there and what both scored
        assert p.settings["allocator"] == "validated" and p.settings["n_validation"] == 2
        assert [r["allocator"] for r in p.settings["candidates"]] == ["grad-sensitivity", "combined"]
        assert p.settings["candidate"] in ("grad-sensitivity", "combined")
    assert plans[3].usage["weight_bytes"] < plans[8].usage["weight_bytes"]
