"""Bad command-line input (issue 14): ``--set`` values typed by the method's config, keys given twice,
``--steps 0``. Each is refused with one line before any model is loaded."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from finetune.methods import get_method
from finetune.methods.base import MethodConfig
from mandc.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def finetune(tmp_path, *extra, method="peqa"):
    return invoke("finetune", "--model", tmp_path / "never-loaded", "--data", "builtin:shapes_circles",
                  "--method", method, "--out", tmp_path / "out", *extra)


def test_parse_overrides_types_each_value_by_its_field():
    cfg = get_method("peqa").Config
    got = cfg.parse_overrides(["lr=1e-3", "steps=7", "separable=true", "init=minmax", "plan=none",
                               "batch-size=2"])
    assert got == {"lr": 1e-3, "steps": 7, "separable": True, "init": "minmax", "plan": None, "batch_size": 2}
    assert type(got["steps"]) is int and type(got["lr"]) is float
    assert cfg.parse_overrides(["plan=bits.json"]) == {"plan": "bits.json"}


@pytest.mark.parametrize("item,words", [
    ("lr=abc", ["option lr takes float", "'abc'", "learning rate"]),
    ("steps=abc", ["option steps takes int", "optimisation steps"]),
    ("steps=1.5", ["option steps takes int"]),
    ("separable=maybe", ["option separable takes true or false", "per-input-channel"]),
    ("lr=nan", ["option lr takes float"]),
    ("nosuch=1", ["has no option 'nosuch'", "options:"]),
    ("lr", ["--set takes KEY=VALUE"]),
])
def test_parse_overrides_refuses_with_field_type_and_help(item, words):
    with pytest.raises(ValueError) as e:
        get_method("peqa").Config.parse_overrides([item])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_key_given_twice_refused_unless_equal():
    c = MethodConfig
    assert c.parse_overrides(["lr=0.001", "lr=1e-3"]) == {"lr": 1e-3}
    with pytest.raises(ValueError, match="option lr given twice with different values"):
        c.parse_overrides(["lr=0.001", "lr=0.002"])
    assert c.parse_overrides(["steps=5"], {"steps": 5}) == {"steps": 5}
    assert c.parse_overrides([], {"steps": None}) == {}
    with pytest.raises(ValueError, match=r"option steps given twice .*--set steps=5.*7"):
        c.parse_overrides(["steps=5"], {"steps": 7})


def test_cli_set_errors_are_one_line_before_loading(tmp_path):
    r = finetune(tmp_path, "--set", "lr=abc")
    assert r.exit_code == 2 and "option lr takes float" in r.output and "Traceback" not in r.output
    r = finetune(tmp_path, "--steps", 3, "--set", "steps=abc")  # was ignored when --steps was given
    assert r.exit_code == 2 and "option steps takes int" in r.output
    r = finetune(tmp_path, "--steps", 3, "--set", "steps=4")
    assert r.exit_code == 2 and "given twice" in r.output
    r = finetune(tmp_path, "--bits", 4, "--set", "bits=3")
    assert r.exit_code == 2 and "option bits given twice" in r.output
    (tmp_path / "p.json").write_text("{}")
    r = finetune(tmp_path, "--plan", tmp_path / "p.json", "--set", "plan=other.json")
    assert r.exit_code == 2 and "option plan given twice" in r.output
    assert not (tmp_path / "out").exists()


def test_steps_zero_refused(tmp_path):
    r = finetune(tmp_path, "--steps", 0)
    assert r.exit_code == 2 and "steps must be ≥ 1" in r.output
    with pytest.raises(ValueError, match="steps must be ≥ 1"):
        MethodConfig(steps=0).validate()
    assert not (tmp_path / "out").exists()


def test_sigint_during_finetune_prints_one_line(tmp_path, monkeypatch):
    import importlib

    runner_mod = importlib.import_module("finetune.runner")

    def fake_run(*a, progress=None, **k):
        for d in range(1, 8):
            progress(d, 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_mod, "run", fake_run)
    r = finetune(tmp_path, "--steps", 10, "--set", "checkpoint_every=5", method="lora")
    assert r.exit_code == 130
    assert "interrupted at step 7; rerun the same command to resume from step 5" in r.output
    assert "Traceback" not in r.output and "KeyboardInterrupt" not in r.output


def test_graph_zero_byte_file_refused_and_random_json_named(tmp_path):
    empty = tmp_path / "g.sqlite"
    empty.touch()
    r = invoke("recommend", "builtin:shapes_circles", "--graph", empty)
    assert r.exit_code == 2 and f"{empty} is an empty file, not a mandc graph store" in " ".join(r.output.split())
    assert empty.stat().st_size == 0  # nothing was seeded into it
    junk = tmp_path / "g.json"
    junk.write_bytes(bytes(range(128, 256)) * 4)
    r = invoke("recommend", "builtin:shapes_circles", "--graph", junk)
    assert r.exit_code == 2 and str(junk) in " ".join(r.output.split()) and "not UTF-8" in r.output


def test_sigint_during_profile_prints_one_line(tmp_path, monkeypatch):
    import importlib

    cmd = importlib.import_module("profiler.profile_cmd")
    monkeypatch.setattr(cmd, "run_profile", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    r = invoke("profile", "--models", "zoo:unet-xs-gradients", "--datasets", "builtin:shapes_circles",
               "--seeds", "0,1", "--campaign-dir", tmp_path)
    assert r.exit_code == 130, r.output
    assert "interrupted with 0 of 2 jobs recorded" in " ".join(r.output.split()) and "Traceback" not in r.output
