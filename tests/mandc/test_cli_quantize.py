"""``mandc quantize`` in-process on a tiny seeded model: plan, plot and weights written, bytes against the budget."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mandc.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tiny_models import tiny_model

    path = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(path)
    return path


def test_quantize_help():
    r = invoke("quantize", "--help")
    assert r.exit_code == 0 and "--budget-mb" in r.output and "--avg-bits" in r.output


def test_quantize_writes_plan_plot_and_weights(tiny_model_dir, tmp_path):
    r = invoke("quantize", "--model", tiny_model_dir, "--data", "builtin:gradients_linear", "--budget-mb", 0.09,
               "--timesteps", 2, "--n-calib", 8, "--out", tmp_path / "q" / "plan.json")
    assert r.exit_code == 0, r.output
    plan = json.loads((tmp_path / "q" / "plan.json").read_text())
    assert plan["format"] == "mandc.bitplan" and plan["budget"]["weight_bytes"] == 90_000
    assert plan["usage"]["weight_bytes"] <= 90_000 and len(plan["settings"]["timesteps"]) == 2
    assert set(plan["layers"]["conv_in"]) == {"w_bits", "a_bits"}
    assert (tmp_path / "q" / "plan.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "q" / "plan.safetensors").stat().st_size > 0
    # the report states the budget, the plan's bytes and what the quantized layers take in memory and on disk
    text = r.stdout
    assert "weight budget 90,000 B (packed)" in text and "in memory" in text and "on disk" in text


def test_quantize_avg_bits_json(tiny_model_dir, tmp_path):
    r = invoke("quantize", "--model", tiny_model_dir, "--data", "builtin:gradients_linear", "--avg-bits", 4,
               "--timesteps", 1, "--n-calib", 4, "--no-save-weights", "--json", "--out", tmp_path / "p")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["plan_path"].endswith("p.json") and res["weights_path"] is None and res["storage"] == "nominal"
    assert res["plan_bytes"] <= res["budget_bytes"] and res["memory_bytes"] < res["float_bytes"]
    assert res["plan"]["usage"]["avg_bits"] <= 4 + 1e-9


def test_quantize_bad_input(tiny_model_dir, tmp_path):
    r = invoke("quantize", "--model", tiny_model_dir, "--data", "builtin:gradients_linear", "--out", tmp_path / "a.json")
    assert r.exit_code == 2 and "exactly one budget" in r.output
    r = invoke("quantize", "--model", tiny_model_dir, "--data", "builtin:gradients_linear", "--budget-mb", 1,
               "--avg-bits", 4, "--out", tmp_path / "a.json")
    assert r.exit_code == 2 and "exactly one budget" in r.output
    # an infeasible budget fails before profiling, naming the smallest feasible one
    r = invoke("quantize", "--model", tiny_model_dir, "--data", "builtin:gradients_linear", "--budget-mb", 0.001,
               "--n-calib", 4, "--out", tmp_path / "a.json")
    assert r.exit_code == 2 and "smallest feasible budget" in r.output
    assert not (tmp_path / "a.json").exists()
    r = invoke("quantize", "--model", tmp_path / "missing", "--data", "builtin:gradients_linear", "--avg-bits", 4,
               "--out", tmp_path / "a.json")
    assert r.exit_code == 2 and "missing" in r.output
