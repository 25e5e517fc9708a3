"""Every fine-tuning method on a tiny seeded pixel model: a training step, save/load round trips, resume,
bad input."""
from __future__ import annotations

import json
from pathlib import Path

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
        base.update(subspace=True, tau=2)  # exercise the paper's PCA refresh within a few steps
    base.update(kw)
    return base


def _tensors(model: T2IModel) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the model's parts, by name, copied."""
    parts = {"denoiser": model.denoiser, "text_encoder": model.text_encoder, "vae": getattr(model, "vae", None)}
    return {f"{part}.{k}": v.detach().clone() for part, module in parts.items() if module is not None
            for k, v in module.state_dict().items()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_only_its_tensors_and_saves(method, small_data, tmp_path, monkeypatch):
    """The held-out loss falls; every tensor the method trains changes, and once those are put back the
    whole model (denoiser, text encoder, VAE: parameters and buffers) equals the prepared model before the
    first step, so nothing else moved."""
    cls = get_method(method)
    prepared = {}
    make_optimizer = cls.make_optimizer

    def spy(self):  # called once, after setup_ and before the first step
        prepared["tensors"] = _tensors(self.model)
        prepared["trained"] = [(t, t.detach().clone()) for t in self.trainable()]
        return make_optimizer(self)

    monkeypatch.setattr(cls, "make_optimizer", spy)
    model = tiny_model()
    res = run(model, small_data, method, cfg_for(method), tmp_path)
    assert res.steps == STEPS and len(res.losses) == STEPS
    assert all(torch.isfinite(torch.tensor(res.losses)))
    assert res.heldout_loss_after < res.heldout_loss_before
    trained = prepared["trained"]
    assert res.trainable_params == sum(t.numel() for t, _ in trained) > 0
    with torch.no_grad():
        for i, (t, t0) in enumerate(trained):
            assert not torch.equal(t, t0), f"trainable tensor {i} {tuple(t.shape)} did not change"
            t.copy_(t0)  # put back (a view, e.g. a token's embedding row, restores its table's row)
    after = _tensors(model)
    assert after.keys() == prepared["tensors"].keys()
    moved = [k for k, v in prepared["tensors"].items() if not torch.equal(v, after[k])]
    assert not moved, f"frozen tensors changed: {moved[:5]}"
    assert res.artefacts and all(Path(p).exists() and tmp_path in Path(p).parents for p in res.artefacts.values())
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["method"] == method and saved["losses"] == res.losses


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


def _sampled_timesteps(model: T2IModel) -> list[int]:
    """Record every timestep the denoiser is called with (training only: run with evaluate_loss=False)."""
    seen, denoise = [], model.denoise

    def recording(x_t, t, cond):
        seen.extend(torch.as_tensor(t).flatten().tolist())
        return denoise(x_t, t, cond)

    model.denoise = recording
    return seen


def test_zo_ti_samples_the_snr_matched_window_by_default(small_data, tmp_path):
    """The tiny model has the zoo's cosine schedule: by default zo-ti samples the paper's SD 1.5 window mapped by
    ᾱ_t (644–922), records it in the run's config, and leaves the caller's config as given."""
    from finetune.methods.zo_ti import ZOTIConfig, ZeroOrderTI

    model = tiny_model()
    seen = _sampled_timesteps(model)
    cfg = ZOTIConfig(**cfg_for("zo-ti", steps=8))
    res = run(model, small_data, "zo-ti", cfg, tmp_path, evaluate_loss=False)
    assert (res.config["timestep_min"], res.config["timestep_max"]) == (644, 923)
    assert json.loads((tmp_path / "result.json").read_text())["config"]["timestep_max"] == 923
    assert cfg.timestep_min is None and cfg.timestep_max is None
    assert len(seen) == 8 * 3 and all(644 <= t < 923 for t in seen)   # n + 1 = 3 passes per step, one t each
    method = ZeroOrderTI(tiny_model(), ZOTIConfig(**cfg_for("zo-ti")))
    method.setup_()
    t = method.sample_timesteps(4000, torch.Generator().manual_seed(0))
    assert int(t.min()) == 644 and int(t.max()) == 922
    with pytest.raises(ValueError, match="timestep window .* empty"):  # 950 by hand, above the matched end
        run(tiny_model(), small_data, "zo-ti", cfg_for("zo-ti", timestep_min=950), tmp_path / "bad")


def test_zo_ti_projects_only_when_asked(small_data, tmp_path, monkeypatch):
    """The subspace projection is off by default (it cost quality on the zoo): a default run keeps no θ
    history and never projects; ``subspace=True`` (the paper's) refreshes every τ steps and projects."""
    from finetune.methods.zo_ti import SubspaceProjector, ZOTIConfig, ZeroOrderTI

    assert ZOTIConfig().subspace is False
    refreshes = []
    orig = SubspaceProjector.refresh
    monkeypatch.setattr(SubspaceProjector, "refresh", lambda self: refreshes.append(1) or orig(self))
    for sub in (False, True):
        cfg = {k: v for k, v in cfg_for("zo-ti", steps=4).items() if k != "subspace" or sub}
        method = ZeroOrderTI(tiny_model(), ZOTIConfig(**cfg))
        method.setup_()
        assert (method.projector is not None) is sub
        run(tiny_model(), small_data, "zo-ti", cfg, tmp_path / str(sub), evaluate_loss=False)
        assert len(refreshes) == (2 if sub else 0)   # τ = 2: refreshes at steps 2 and 4


@pytest.mark.parametrize("given, window", [({"timestep_min": 0, "timestep_max": 1000}, (0, 1000)),
                                           ({"timestep_min": 500, "timestep_max": 900}, (500, 900)),
                                           ({"timestep_min": 700}, (700, 923))])
def test_zo_ti_window_by_hand(given, window, small_data, tmp_path):
    """An end given by hand is used as is (here: the full range, the paper's steps unmapped); an end left None is
    still SNR-matched."""
    model = tiny_model()
    seen = _sampled_timesteps(model)
    res = run(model, small_data, "zo-ti", cfg_for("zo-ti", **given), tmp_path, evaluate_loss=False)
    assert (res.config["timestep_min"], res.config["timestep_max"]) == window
    assert seen and all(window[0] <= t < window[1] for t in seen)


def test_subspace_projector_removes_low_variance_directions():
    """θ's history moves in 3 directions only: PCA (on the per-feature standardised history) keeps those 3
    and P is exactly the other 13, orthogonal to them; projecting leaves a high-variance direction alone
    and removes a low-variance one."""
    from finetune.methods.zo_ti import SubspaceProjector

    torch.manual_seed(0)
    d = 16
    p = SubspaceProjector(tau=32, nu=1e-3)
    basis = torch.linalg.qr(torch.randn(d, d))[0]
    for i in range(32):  # history moves in 3 directions only
        p.push(basis[:3].T @ torch.randn(3) * 5)
    i_star = p.refresh()
    assert i_star == 2 and p.P.shape == (d - 3, d) and p.n_projected == d - 3
    torch.testing.assert_close(p.P @ p.P.T, torch.eye(d - 3), atol=1e-5, rtol=0)  # orthonormal rows
    # the history's directions in the standardised coordinates PCA sees: x ↦ x / std
    std = torch.stack(p.history).std(0, unbiased=False)
    high = basis[:3] / std                                                        # [3, d]
    high = torch.linalg.qr(high.T)[0].T                                           # orthonormal, same span
    assert (p.P @ high.T).abs().max() < 1e-4                                      # P ⟂ every kept direction
    g = high.T @ torch.randn(3)
    torch.testing.assert_close(p.project(g), g, atol=1e-5, rtol=0)               # kept as is
    low = p.P.T @ torch.randn(d - 3)
    assert p.project(low).norm() < 1e-5 * low.norm()                              # removed
    mixed = p.project(g + low)
    torch.testing.assert_close(mixed, g, atol=1e-4, rtol=0)


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
