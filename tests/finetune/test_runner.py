"""finetune.run directly: the result and result.json, progress, evaluation off, the saved-result shortcut
(same inputs), retraining on other inputs or ``force``, model references, bad datasets."""
from __future__ import annotations

import json

import pytest
import torch

from data import SplitDataset, load_dataset
from finetune.runner import RESULT, FinetuneResult, run
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def small_data() -> SplitDataset:
    ds = load_dataset("builtin:shapes_circles")
    return SplitDataset(name=ds.name, train=ds.train.subset(range(4)), heldout=ds.heldout.subset(range(2)),
                        ref="builtin:shapes_circles[:4]")


CFG = {"steps": 3, "lr": 1e-3, "batch_size": 2, "checkpoint_every": 0}


def test_run_reports_progress_and_writes_its_result(small_data, tmp_path):
    calls = []
    res = run(tiny_model(), small_data, "lora", CFG, tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert isinstance(res, FinetuneResult) and res.method == "lora" and res.steps == 3 and len(res.losses) == 3
    assert res.dataset == "builtin:shapes_circles[:4]" and res.device == "cpu" and res.config["lr"] == 1e-3
    assert res.train_s <= res.wall_s and res.step_s > 0 and res.resumed_from == 0
    assert res.peak_mem_bytes > 0 and res.mem_method.startswith("cpu_peak_rss")
    saved = json.loads((tmp_path / RESULT).read_text())
    assert saved.pop("fingerprint") and FinetuneResult.from_dict(saved) == res
    assert not (tmp_path / "checkpoint.pt").exists()  # removed once the run finished


def test_same_inputs_return_the_saved_result_other_inputs_retrain(small_data, tmp_path):
    first = run(tiny_model(), small_data, "lora", CFG, tmp_path)
    calls = []
    again = run(tiny_model(), small_data, "lora", CFG, tmp_path, progress=lambda *a: calls.append(a))
    assert calls == [] and again == first  # nothing trained: the saved result
    other = run(tiny_model(), small_data, "lora", {**CFG, "lr": 2e-3}, tmp_path, progress=lambda *a: calls.append(a))
    assert len(calls) == 3 and other.config["lr"] == 2e-3 and other.losses != first.losses
    calls.clear()
    forced = run(tiny_model(), small_data, "lora", {**CFG, "lr": 2e-3}, tmp_path, force=True,
                 progress=lambda *a: calls.append(a))
    assert len(calls) == 3 and forced.losses == other.losses  # retrained, and deterministic


def test_evaluation_off_and_a_model_reference(small_data, tmp_path):
    folder = tmp_path / "model"
    tiny_model().save_pretrained(folder)
    res = run(str(folder), small_data, "full", CFG, tmp_path / "out", evaluate_loss=False, device="cpu")
    assert res.heldout_loss_before is None and res.heldout_loss_after is None
    assert res.model == str(folder) and len(res.losses) == 3 and all(torch.isfinite(torch.tensor(res.losses)))


def test_bad_dataset_and_method(small_data, tmp_path):
    empty = SplitDataset(name="empty", train=small_data.train.subset([]), heldout=small_data.heldout, ref="empty")
    with pytest.raises(ValueError, match="dataset empty has no training images"):
        run(tiny_model(), empty, "lora", CFG, tmp_path)
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        run(tiny_model(), small_data, "no-such-method", CFG, tmp_path)
    assert not (tmp_path / RESULT).exists()


def test_trained_hook_gets_the_trained_model_and_is_skipped_for_a_saved_result(small_data, tmp_path):
    model = tiny_model()
    seen = []
    run(model, small_data, "lora", CFG, tmp_path, trained=seen.append)
    assert seen == [model] and any("lora" in n for n, _ in model.denoiser.named_parameters())  # adapted in place
    again = []
    run(tiny_model(), small_data, "lora", CFG, tmp_path, trained=again.append)
    assert again == []  # result.json answered: nothing was trained, so there is no trained model to hand over


# ------------------------------------------------------------------ the one training loop's schedule options
def test_warmup_lr_is_linear_then_constant():
    from finetune.train import warmup_lr_

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1.0}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5}])
    base = [g["lr"] for g in opt.param_groups]
    seen = []
    for step in range(6):
        warmup_lr_(opt, base, step, 4)
        seen.append([g["lr"] for g in opt.param_groups])
    assert seen == [[0.25, 0.125], [0.5, 0.25], [0.75, 0.375], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5]]
    warmup_lr_(None, [], 0, 4)  # a gradient-free method has no optimizer: nothing to do


def test_run_applies_the_warmup_to_the_optimizer(small_data, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    lrs = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    try:
        run(tiny_model(), small_data, "full", {**CFG, "warmup_steps": 2}, tmp_path, evaluate_loss=False)
    finally:
        handle.remove()
    assert lrs == pytest.approx([CFG["lr"] / 2, CFG["lr"], CFG["lr"]])


def _encoded(model, n=4, weights=None):
    """TrainData for ``model``: ``n`` random images, two distinct captions shared through ``cond_index``."""
    from finetune.methods import TrainData

    g = torch.Generator().manual_seed(0)
    x0 = model.encode_images(torch.rand(n, 3, model.resolution, model.resolution, generator=g) * 2 - 1)
    prompts = ["a red circle", "a blue square"] * (n // 2)
    with torch.no_grad():
        cond = model.encode_prompt(prompts[:2])
    return TrainData(x0=x0, prompts=prompts, cond=cond, cond_index=torch.tensor([0, 1] * (n // 2)), weights=weights)


def test_weighted_batches_never_draw_a_zero_weight_image():
    from finetune.methods import get_method

    model = tiny_model()
    data = _encoded(model, weights=torch.tensor([0.0, 1.0, 0.0, 3.0], dtype=torch.float64))
    m = get_method("full")(model, get_method("full").Config(batch_size=4000))
    idx = m.batch_indices(data, torch.Generator().manual_seed(0))
    counts = torch.bincount(idx, minlength=4)
    assert counts[0] == 0 and counts[2] == 0 and 0.2 < counts[1] / 4000 < 0.3  # w/Σw = 1/4
    uniform = m.batch_indices(_encoded(model), torch.Generator().manual_seed(0))
    assert set(uniform.tolist()) == {0, 1, 2, 3}


def test_dropped_prompts_get_the_empty_prompt_and_cond_index_picks_rows():
    from finetune.methods import get_method

    model = tiny_model()
    data = _encoded(model)
    m = get_method("full")(model, get_method("full").Config())
    idx = torch.tensor([0, 1, 2, 3])
    cond = m.conditioning(data, idx, drop=torch.tensor([False, True, False, False]))
    empty = model.empty_prompt_embedding()
    assert torch.equal(cond[1], empty[0]) and torch.equal(cond[0], data.cond[0]) and torch.equal(cond[3], data.cond[1])
    assert not torch.equal(cond[0], empty[0])


def test_the_loop_trains_on_a_weighted_mixture_deterministically():
    """What zoo pretraining does: the full method through ``finetune.train.train_`` on encoded, weighted data."""
    from finetune.zoo.builder import pretrain_

    cfg = {**CFG, "p_uncond": 0.5, "snr_gamma": 5.0, "warmup_steps": 2, "max_grad_norm": 1.0}
    model, twin = tiny_model(), tiny_model()
    before = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    calls = []
    losses = pretrain_(model, _encoded(model, weights=torch.ones(4, dtype=torch.float64)), cfg,
                       progress=lambda *a: calls.append(a))
    again = pretrain_(twin, _encoded(twin, weights=torch.ones(4, dtype=torch.float64)), cfg)
    assert len(losses) == 3 and calls == [(1, 3), (2, 3), (3, 3)] and again == losses
    assert any(not torch.equal(before[k], v) for k, v in model.denoiser.state_dict().items())
    assert not model.denoiser.training  # left in eval mode, ready to sample


def test_bad_schedule_options_and_a_diverging_loss(small_data, tmp_path):
    for bad, msg in [({"warmup_steps": -1}, "warmup_steps"), ({"p_uncond": 1.0}, "p_uncond"),
                     ({"snr_gamma": 0.0}, "snr_gamma")]:
        with pytest.raises(ValueError, match=msg):
            run(tiny_model(), small_data, "full", {**CFG, **bad}, tmp_path)
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at step [12]; lower the lr"):
        run(tiny_model(), small_data, "full", {**CFG, "lr": 1e30}, tmp_path, evaluate_loss=False)
