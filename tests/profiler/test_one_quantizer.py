"""One quantizer: the model MPQ-Diff scored (``run_quantize`` / ``apply_bitplan``) is the model every quantized
method starts training from when given the same BitPlan, and every quantized method goes through ``quantize_``."""
from __future__ import annotations

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import finetune.quant.quantize as quantize_module
from finetune.methods import get_method
from finetune.quant import BitPlan, QuantConfig, QuantLayer, resolve_quant_config, unpack_codes
from finetune.qta import QTALoRALinear, QTALoRAQuantConfig
from finetune.runner import run
from profiler.mpq import MPQConfig, run_quantize
from profiler.mpq.profile import quantized_copy, with_denoiser
from tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[2]
DATA = "builtin:shapes_circles"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """``(base model, plan path, the denoiser mandc quantize built and saved)``."""
    base = tiny_model()
    model = with_denoiser(base, copy.deepcopy(base.denoiser))
    res = run_quantize(model, DATA, tmp_path_factory.mktemp("q") / "plan", avg_bits=3, timesteps=1, n_calib=4,
                       config=MPQConfig(time_limit=2.0))
    return base, res.plan_path, model.denoiser, res.weights_path


def quant_state(module) -> dict:
    """``{layer: (qweight, zero_point, s_out, w_bits, a_bits, a_scale, symmetric)}`` of every quantized layer."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, QuantLayer):
            a_scale = None if m.a_scale is None else float(m.a_scale)
            out[name] = (m.qweight.clone(), m.zero_point.clone(), m.s_out.clone(), m.bits, m.a_bits, a_scale,
                         m.symmetric)
    return out


def assert_same_model(got: dict, want: dict) -> None:
    assert list(got) == list(want) and want
    for name, (g, w) in ((n, (got[n], want[n])) for n in want):
        assert torch.equal(g[0], w[0]) and torch.equal(g[1], w[1]) and torch.equal(g[2], w[2]), name
        assert g[3:5] == w[3:5] and g[6] == w[6], name
        assert g[5] == w[5] and (g[5] is None or math.isfinite(g[5])), name  # fixed (calibrated) scales


def started(method: str, base, cfg: dict):
    """The model ``method`` starts training from: a fresh copy after ``setup_``."""
    model = with_denoiser(base, copy.deepcopy(base.denoiser))
    cls = get_method(method)
    config = cls.Config.from_dict(cfg)
    config.validate()
    m = cls(model, config)
    m.setup_()
    return model, m


def test_the_scored_model_is_mpq_diffs_recipe(scored):
    base, path, den, _ = scored
    plan = BitPlan.load(path)
    state = quant_state(den)
    assert set(state) == set(plan.layers)
    assert all(s[6] for s in state.values())  # symmetric codes
    assert all(s[4] == plan.layers[n]["a_bits"] for n, s in state.items())
    # calibrated: a = act_range / (2^(a-1) - 1), not per-call ranges
    n = next(iter(plan.layers))
    assert state[n][5] == pytest.approx(plan.act_ranges[n] / (2 ** (plan.layers[n]["a_bits"] - 1) - 1))
    # MPQ-Diff's validation scores quantized_copy: the same model
    assert_same_model(quant_state(quantized_copy(base, plan).denoiser), state)


@pytest.mark.parametrize("method", ["peqa", "tuneqdm"])
@pytest.mark.parametrize("form", ["path", "dict", "object"])
def test_scale_methods_start_from_the_scored_model(scored, method, form):
    base, path, den, _ = scored
    plan = {"path": str(path), "dict": BitPlan.load(path).to_dict(), "object": BitPlan.load(path)}[form]
    model, m = started(method, base, {"plan": plan})
    assert m.config.to_dict()["plan"] == (str(path) if form == "path" else BitPlan.load(path).to_dict())
    assert_same_model(quant_state(model.denoiser), quant_state(den))
    layers = [m for m in model.denoiser.modules() if isinstance(m, QuantLayer)]
    assert all(not m.delta_s_out.any() for m in layers)  # the trainable scales start as the identity ...
    if method == "tuneqdm":
        assert all(m.n_timestep_sets == 2 and bool((m.s_in == 1).all()) for m in layers)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    cond = base.encode_prompt(["a circle", "a red circle"])
    # ... so the output is the scored model's, at either of TuneQDM's intervals (the set follows t by itself;
    # a batch mixing intervals is split per set, which changes float rounding, not the model)
    for t in (torch.tensor([100, 100]), torch.tensor([900, 900])):
        with torch.no_grad():
            want = with_denoiser(base, den).denoise(x, t, cond)
            torch.testing.assert_close(model.denoise(x, t, cond), want, rtol=0, atol=0)


def test_finetune_run_keeps_the_scored_models_frozen_parts(scored, tmp_path):
    """Through the runner (one step: only the scale deltas train): the saved quantized denoiser's frozen parts
    (integer codes, zero points, base scales, activation scales, biases) equal mandc quantize's."""
    base, path, _, weights = scored
    model = with_denoiser(base, copy.deepcopy(base.denoiser))
    res = run(model, DATA, "tuneqdm", {"plan": str(path), "steps": 1, "checkpoint_every": 0}, tmp_path,
              evaluate_loss=False)
    with safe_open(weights, "pt") as a, safe_open(res.artefacts["quantized_denoiser"], "pt") as b:
        shared = [k for k in a.keys() if k.rsplit(".", 1)[1] in ("qweight", "zero_point", "s_out", "a_scale", "bias")]
        assert shared and set(shared) <= set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in shared)


def test_a_bitplan_refuses_another_recipe(scored):
    _, path, _, _ = scored
    with pytest.raises(ValueError, match="would quantize another model"):
        resolve_quant_config(QuantConfig(plan=str(path), symmetric=False))
    with pytest.raises(ValueError, match="would quantize another model"):
        get_method("peqa").Config.from_dict({"plan": str(path), "init": "minmax"}).validate()
    # a plain mapping keeps PEQA's recipe (asymmetric, dynamic activations)
    r = resolve_quant_config(QuantConfig(plan=BitPlan.load(path).quant_plan()))
    assert (r.symmetric, r.init, r.act_scales, r.bitplan) == (False, "clip", "dynamic", None)


@pytest.fixture
def handler_calls(monkeypatch):
    """Every (config type, module type) ``quantize_`` dispatches, recorded."""
    calls = []
    for cls, fn in list(quantize_module._HANDLERS.items()):
        def spy(model, config, fn=fn):
            calls.append((type(config), type(model).__name__, config))
            return fn(model, config)
        monkeypatch.setitem(quantize_module._HANDLERS, cls, spy)
    return calls


def test_qta_lora_goes_through_quantize_and_the_plan(scored, handler_calls):
    base, path, den, _ = scored
    model, m = started("qta-lora", base, {"plan": str(path)})
    kinds = [c[0] for c in handler_calls]
    assert QTALoRAQuantConfig in kinds and QuantConfig in kinds  # targeted layers, then the plan's others
    plan, scored_state = BitPlan.load(path), quant_state(den)
    qta = {n: mod for n, mod in model.denoiser.named_modules() if isinstance(mod, QTALoRALinear)}
    assert qta
    for name, layer in qta.items():  # the scored model's codes (signed) and scales, at the plan's bits
        q, zero, s_out, bits = scored_state[name][:4]
        codes = unpack_codes(q, bits, layer.in_features).to(torch.int16) - zero.to(torch.int16)[:, None]
        assert torch.equal(layer.qweight.to(torch.int16), codes) and torch.equal(layer.w_scale, s_out)
        assert layer.bits == bits == plan.layers[name]["w_bits"]
    others = quant_state(model.denoiser)
    assert set(others) == set(plan.layers) - set(qta)
    assert_same_model(others, {n: s for n, s in scored_state.items() if n in others})
    assert set(map(id, m.trainable())) == {id(p) for p in model.denoiser.parameters() if p.requires_grad}


def test_qta_lora_without_a_plan_is_int8_minmax(handler_calls):
    base = tiny_model()
    model, _ = started("qta-lora", base, {})
    assert [c[0] for c in handler_calls] == [QTALoRAQuantConfig]
    name, layer = next((n, mod) for n, mod in model.denoiser.named_modules() if isinstance(mod, QTALoRALinear))
    w = base.denoiser.get_submodule(name).weight.float()
    scale = w.abs().amax(1) / 127  # QTA's per-channel symmetric INT8
    torch.testing.assert_close(layer.w_scale, scale, rtol=0, atol=0)
    assert torch.equal(layer.qweight, torch.round(w / scale[:, None]).to(torch.int8))


def test_zo_ti_quantizes_every_part_through_quantize_(scored, handler_calls):
    base, path, den, _ = scored
    model, _ = started("zo-ti", base, {"plan": str(path), "initializer": "circle"})
    parts = {c[1]: c[2] for c in handler_calls}
    assert set(parts) == {type(base.denoiser).__name__, type(base.text_encoder).__name__}  # no VAE here
    assert_same_model(quant_state(model.denoiser), quant_state(den))
    text = quant_state(model.text_encoder)
    assert text and all(s[3] == 8 and s[6] and s[4] is None for s in text.values())  # INT8, symmetric, float acts


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_method_knowledge_in_the_model_and_no_quant_import_circle():
    assert not any(m.startswith("finetune.quant") for m in _imports(ROOT / "finetune/model.py"))
    assert "finetune.quant.layers" not in _imports(ROOT / "finetune/quant/act_quant.py")


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_tuneqdm_sets_follow_the_forward_timestep(kind):
    """The method's hook reads the UNet's positional timestep and PixArt's ``timestep=`` keyword."""
    base = tiny_model(kind)
    model, _ = started("tuneqdm", base, {})
    layers = [m for m in model.denoiser.modules() if isinstance(m, QuantLayer)]
    x = torch.randn(2, 3, 32, 32)
    cond = base.encode_prompt(["a", "b"])
    with torch.no_grad():
        for t, want in (([900, 900], 1), ([100, 100], 0)):
            model.denoise(x, torch.tensor(t), cond)
            assert all(m._timestep_sets == want for m in layers)
        model.denoise(x, torch.tensor([100, 900]), cond)
        assert all(m._timestep_sets.tolist() == [0, 1] for m in layers)
