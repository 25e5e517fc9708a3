"""Corrupt or truncated weight files and checkpoints (issue 14 item 3), and the smaller fine-tuning items
(item 7): one line naming the file and what to do; a bad checkpoint is set aside and the run restarts."""
from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from typer.testing import CliRunner

from finetune.refs import ModelRefError
from finetune.runner import CHECKPOINT, load_checkpoint, run
from finetune.weightfiles import WeightsFileError, load_safetensors
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(path)
    return path


def _truncate(path, keep=0.5):
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * keep)] if keep < 1 else b[:4])


@pytest.mark.parametrize("rel", ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"])
@pytest.mark.parametrize("keep", [0.5, 1])  # half the file, or 4 bytes (header too small)
def test_truncated_weights_in_model_folder_is_one_line_naming_it(model_dir, tmp_path, rel, keep):
    from finetune.load import load_model

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    _truncate(folder / rel, keep)
    with pytest.raises(ModelRefError) as e:
        load_model(str(folder))
    msg = str(e.value)
    assert "\n" not in msg and str(folder / rel) in msg and "truncated or corrupt" in msg
    assert "download the model again" in msg


def test_corrupt_config_json_in_model_folder_names_the_folder(model_dir, tmp_path):
    from finetune.model import T2IModel

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    (folder / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ModelRefError) as e:
        T2IModel.from_pretrained(folder)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)


def test_truncated_lora_and_embedding_files(tmp_path):
    from finetune.methods.lora import LORA_FILE, load_lora_
    from finetune.methods.tokens import load_embedding_, save_embedding

    emb = save_embedding("<tok>", torch.ones(384), tmp_path / "ti")
    _truncate(emb)
    with pytest.raises(WeightsFileError, match=rf"{emb}: textual-inversion embedding truncated or corrupt"):
        load_embedding_(tiny_model(), emb)
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / LORA_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    (lora / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2, "target_modules": ["to_q"]}))
    model = tiny_model()
    n_before = sum(1 for _ in model.denoiser.modules())
    with pytest.raises(WeightsFileError, match=rf"{lora / LORA_FILE}: LoRA adapter truncated or corrupt"):
        load_lora_(model, lora)
    assert sum(1 for _ in model.denoiser.modules()) == n_before  # the model was left unchanged
    with pytest.raises(WeightsFileError, match="does not exist"):
        load_safetensors(tmp_path / "missing.safetensors")


class _Boom:
    def __reduce__(self):  # what an untrusted pickle can do on load
        return (open, (str(_Boom.marker), "w"))


def _interrupted_run(out, **cfg):
    class Stop(Exception):
        pass

    def stop(done, total):
        if done == 1:
            raise Stop

    with pytest.raises(Stop):
        run(tiny_model(), "builtin:shapes_circles", "lora", {"steps": 2, "checkpoint_every": 1, **cfg}, out,
            evaluate_loss=False, progress=stop)


def test_checkpoint_loads_with_weights_only(tmp_path):
    _interrupted_run(tmp_path, optimizer="remainder")  # custom optimizer state too
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 1 and load_checkpoint(tmp_path / CHECKPOINT)["step"] == 1
    res = run(tiny_model(), "builtin:shapes_circles", "lora",
              {"steps": 2, "checkpoint_every": 1, "optimizer": "remainder"}, tmp_path, evaluate_loss=False)
    assert res.resumed_from == 1


@pytest.mark.parametrize("content", ["truncated", "garbage", "pickle"])
def test_corrupt_checkpoint_is_set_aside_and_run_restarts(tmp_path, content):
    ckpt = tmp_path / CHECKPOINT
    if content == "truncated":
        _interrupted_run(tmp_path)
        _truncate(ckpt)
    elif content == "garbage":
        ckpt.write_bytes(b"\x00\x01 not a checkpoint")
    else:
        _Boom.marker = tmp_path / "pwned"
        ckpt.write_bytes(pickle.dumps({"fingerprint": "x", "step": 1, "evil": _Boom()}))
    with pytest.warns(UserWarning, match=r"checkpoint.pt: unreadable checkpoint .*set aside as checkpoint.pt.corrupt"):
        res = run(tiny_model(), "builtin:shapes_circles", "lora", {"steps": 2, "checkpoint_every": 1}, tmp_path,
                  evaluate_loss=False)
    assert res.resumed_from == 0 and res.steps == 2 and (tmp_path / "checkpoint.pt.corrupt").exists()
    assert not (tmp_path / "pwned").exists()


def test_dataset_error_before_model_load_and_failed_run_leaves_no_out(tmp_path, monkeypatch):
    from finetune.model import T2IModel
    from mandc.cli import app

    loads = []
    monkeypatch.setattr(T2IModel, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a)))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metadata.jsonl").write_text("")
    r = CliRunner().invoke(app, ["finetune", "--model", "zoo:unet-xs-gradients", "--data", str(tmp_path / "data"),
                                 "--method", "lora", "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 2 and "data" in r.output and loads == []  # the dataset was checked first
    assert not (tmp_path / "out").exists()  # the failed run removed the folder it created
    (tmp_path / "mine").mkdir()
    r = CliRunner().invoke(app, ["finetune", "--model", "zoo:unet-xs-gradients", "--data", str(tmp_path / "data"),
                                 "--method", "lora", "--out", str(tmp_path / "mine")], catch_exceptions=False)
    assert r.exit_code == 2 and (tmp_path / "mine").is_dir()  # a folder that was there stays
