"""The memory estimator: against the real meter on a small model for every method, from a folder whose
weights are absent, and the bit plan's effect on the weight term."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune.estimate import MemoryEstimate, describe_components, describe_model, estimate_memory
from finetune.estimate.describe import read_safetensors_header
from finetune.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]
STEPS, BATCH, N_TRAIN = 2, 8, 8
MiB = 2**20

# A pixel UNet big enough that the step (weights, optimizer state, activations at batch 8) and not the
# process's noise dominates each method's peak, small enough to train 2 steps in a second or two.
BUILD = """
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, BertModel
from data.text import minilm_path
from finetune.memory import materialize_
from finetune.model import T2IModel
from finetune.pipeline import MandcPixelPipeline
from finetune.zoo.specs import PROMPT_TOKENS, SCHEDULER_CONFIG, unet

def build():
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.model_max_length = PROMPT_TOKENS
    te = materialize_(BertModel.from_pretrained(minilm_path()))
    den = UNet2DConditionModel(**unet((32, 64), attention=(False, True), layers=1, head_dim=32, groups=32))
    return T2IModel(MandcPixelPipeline(scheduler=DDPMScheduler(**SCHEDULER_CONFIG), text_encoder=te, tokenizer=tok, unet=den))
"""

# One fresh process for all methods, glibc's mmap threshold pinned (RSS tracks live tensors); for each
# method the meter is entered before its model is built and read after every step: the measurement of
# benchmarks/finetune_memory.py's worker (which takes a process per method; one here keeps the test short).
MEASURE = BUILD + """
import gc, json, sys, tempfile
from data import SplitDataset, load_dataset
from finetune.memory import PeakMemory
from finetune.runner import run

ds = load_dataset("builtin:shapes_circles")
ds = SplitDataset(name=ds.name, train=ds.train.subset(range(%d)), heldout=ds.heldout.subset(range(2)), ref="t")
import finetune.quant, finetune.qta, peft  # libraries are not the model
out, cfgs = {}, json.loads(sys.argv[1])
# the first run pays the process's one-time growth (thread pools, kernels: the estimate's CPU offset, which
# the benchmark measures in fresh processes); run it once unmetered so every method here is measured alike
for method, cfg in [next(iter(cfgs.items()))] + list(cfgs.items()):
    gc.collect()
    with PeakMemory("cpu") as outer:
        model = build()
        readings = []
        with tempfile.TemporaryDirectory() as d:
            run(model, ds, method, cfg, d, evaluate_loss=False, force=True,
                progress=lambda *a: readings.append(outer.sample()))
    out[method] = readings[-1]
    del model
print(json.dumps(out))
""" % N_TRAIN


def _config(method: str) -> dict:
    cfg = {"steps": STEPS, "batch_size": BATCH, "checkpoint_every": 0, "lr": 1e-3}
    if method in ("peqa", "tuneqdm"):
        cfg["init"] = "minmax"  # the clipping search changes scale values, not bytes, and takes seconds
    return cfg


@pytest.fixture(scope="module")
def bench_model():
    ns: dict = {}
    exec(BUILD, ns)
    return ns["build"]()


@pytest.fixture(scope="module")
def measured() -> dict[str, int]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cfgs = {m: _config(m) for m in sorted(METHODS)}
    p = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(cfgs)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_estimate_matches_the_meter(method, bench_model, measured):
    """Expected within 15% of the measured peak (the README's target at both benchmark sizes), and the
    high bound at or above it. Measured like the benchmark (peak RSS above the footprint before the model
    was built) in a process past its first run, so without the per-process CPU offset, which is left out of
    the estimate here too (``benchmarks/memory_estimate.py`` checks it in fresh processes)."""
    from finetune.estimate import DEVICE_OFFSET

    est = estimate_memory(describe_model(bench_model), method, _config(method), n_images=N_TRAIN)
    measured = measured[method]
    off = DEVICE_OFFSET["cpu"]
    est = MemoryEstimate(**{**est.to_dict(), "low_bytes": est.low_bytes - off, "expected_bytes": est.expected_bytes - off,
                            "high_bytes": est.high_bytes - off})
    ratio = est.expected_bytes / measured
    detail = f"{method}: expected {est.expected_bytes / MiB:.1f} MiB, measured {measured / MiB:.1f} MiB, terms " + \
             json.dumps({k: round(v / MiB, 1) for k, v in est.terms.items()})
    assert 0.85 <= ratio <= 1.15, detail
    assert est.high_bytes >= measured, detail
    assert est.low_bytes <= est.expected_bytes <= est.high_bytes


def _truncate_weights(folder: Path) -> None:
    """Keep each safetensors file's header, drop its data: a file no loader can read."""
    for st in folder.rglob("*.safetensors"):
        raw = st.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        st.write_bytes(raw[: 8 + n])


def test_folder_estimate_reads_no_weights(sd_folder, tmp_path):
    folder = tmp_path / "headers-only"
    shutil.copytree(sd_folder, folder)
    full = estimate_memory(sd_folder, "lora", {"batch_size": 2})
    _truncate_weights(folder)
    from safetensors.torch import load_file

    st = next(folder.rglob("*.safetensors"))
    with pytest.raises(Exception):
        load_file(st)  # the weights really are gone
    assert read_safetensors_header(st)  # the header still describes them
    desc = describe_components(folder)
    assert desc["components"]["unet"]["tensors"]
    est = estimate_memory(folder, "lora", {"batch_size": 2})
    assert est.expected_bytes == full.expected_bytes > 0
    assert est.terms["vae"] > 0 and est.terms["text_encoder"] > 0
    assert any("stored weights" in n for n in est.notes)


def test_bitplan_bits_set_the_weight_term(sd_folder):
    """8-bit against 4-bit codes on every layer: the weight term grows by the packed codes' difference,
    which is what finetune.quant stores (``QuantLayer.weight_bytes``)."""
    from finetune.model import T2IModel
    from finetune.quant import quantize_, quantized_weight_bytes

    model = T2IModel.from_pretrained(sd_folder)
    names = [n for n, m in model.denoiser.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    plan = lambda b: {"layers": {n: {"w_bits": b, "a_bits": None} for n in names}}  # noqa: E731
    e4 = estimate_memory(sd_folder, "peqa", {"batch_size": 1}, bitplan=plan(4))
    e8 = estimate_memory(sd_folder, "peqa", {"batch_size": 1}, bitplan=plan(8))
    real = {}
    for b in (4, 8):
        den = T2IModel.from_pretrained(sd_folder).denoiser
        quantize_(den, plan=plan(b)["layers"], init="minmax")
        real[b] = quantized_weight_bytes(den)
    assert e8.terms["weights"] - e4.terms["weights"] == real[8] - real[4] > 0
    # a method that does not quantize by a plan says so and is unchanged
    lo = estimate_memory(sd_folder, "lora", {"batch_size": 1})
    lb = estimate_memory(sd_folder, "lora", {"batch_size": 1}, bitplan=plan(4))
    assert lb.expected_bytes == lo.expected_bytes and any("bitplan not applied" in n for n in lb.notes)


def test_estimate_round_trip_and_bad_input(sd_folder, tmp_path, mandc_home):
    est = estimate_memory(sd_folder, "zo-ti", None, resolution=16)
    assert MemoryEstimate.from_dict(json.loads(json.dumps(est.to_dict()))) == est
    with pytest.raises(ValueError, match="missing field"):
        MemoryEstimate.from_dict({"method": "x"})
    with pytest.raises(ValueError, match="not a folder"):
        estimate_memory(str(tmp_path / "nope"), "lora")
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        estimate_memory(sd_folder, "lorra")
    with pytest.raises(ValueError, match="is not built yet"):
        estimate_memory("zoo:unet-xs-gradients", "lora")
    bad = tmp_path / "bad"
    shutil.copytree(sd_folder, bad)
    (bad / "unet" / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        estimate_memory(bad, "lora")
