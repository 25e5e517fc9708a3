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
