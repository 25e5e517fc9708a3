"""The ``mandc`` command line, in-process (typer's CliRunner)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mandc.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_every_command_has_help():
    for cmd in ([], ["data"], ["data", "list"], ["data", "export"], ["zoo"], ["zoo", "list"], ["zoo", "build"],
                ["methods"], ["finetune"]):
        r = invoke(*cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output, cmd


def test_data_list_json_has_the_catalog():
    r = invoke("data", "list", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    assert len(rows) >= 40 and all("name" in row for row in rows)
    assert len({row["family"] for row in rows}) >= 6


def test_data_export_writes_an_imagefolder(tmp_path):
    from data import load_dataset

    r = invoke("data", "export", "digits_low", tmp_path / "out")
    assert r.exit_code == 0, r.output
    ds = load_dataset(tmp_path / "out")
    ref = load_dataset("builtin:digits_low")
    assert ds.train.captions == ref.train.captions and len(ds.heldout) == len(ref.heldout)
    # a second export into the now non-empty folder is refused, nothing overwritten
    r = invoke("data", "export", "digits_low", tmp_path / "out")
    assert r.exit_code == 2 and "out" in r.output


def test_data_bad_names():
    r = invoke("data", "export", "digits_lowx", "/tmp/never-written")
    assert r.exit_code == 2 and "digits_low" in r.output  # suggests the close name
    r = invoke("data", "list", "--family", "nope")
    assert r.exit_code == 2 and "shapes" in r.output


def test_zoo_list_json():
    r = invoke("zoo", "list", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    assert len(rows) >= 10 and sum(row["kind"] == "dit" for row in rows) >= 2
    assert all(not row["built"] for row in rows)  # the test session's MANDC_HOME is empty


def test_zoo_build_rejects_unknown_names():
    r = invoke("zoo", "build", "no-such-model")
    assert r.exit_code == 2 and "no-such-model" in r.output


def test_methods_json_lists_every_method_with_help():
    r = invoke("methods", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert {"full", "lora", "ti", "peqa", "tuneqdm", "zo-ti", "qta-lora"} <= set(rows)
    assert rows["tuneqdm"]["options"]["n_timestep_sets"]["default"] == 2
    assert all(o["help"] for row in rows.values() for o in row["options"].values())


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tiny_models import tiny_model

    path = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(path)
    return path


def test_finetune_runs_and_reports(tiny_model_dir, tmp_path):
    r = invoke("finetune", "--model", tiny_model_dir, "--data", "builtin:shapes_circles", "--method", "peqa",
               "--bits", 4, "--steps", 2, "--set", "lr=0.001", "--set", "batch_size=2", "--out", tmp_path / "ft", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["method"] == "peqa" and res["steps"] == 2 and res["config"]["bits"] == 4
    assert res["config"]["batch_size"] == 2 and (tmp_path / "ft" / "result.json").exists()


def test_finetune_bad_input(tiny_model_dir, tmp_path):
    r = invoke("finetune", "--model", tiny_model_dir, "--data", "builtin:shapes_circles", "--method", "lora",
               "--bits", 4, "--out", tmp_path)
    assert r.exit_code == 2 and "--bits does not apply" in r.output
    r = invoke("finetune", "--model", tiny_model_dir, "--data", "builtin:shapes_circles", "--method", "peqa",
               "--bits", 9, "--out", tmp_path)
    assert r.exit_code == 2 and "bits" in r.output
    r = invoke("finetune", "--model", tmp_path / "missing", "--data", "builtin:shapes_circles", "--method", "lora",
               "--out", tmp_path)
    assert r.exit_code == 2 and "missing" in r.output
    r = invoke("finetune", "--model", tiny_model_dir, "--data", "builtin:nope", "--method", "lora", "--out", tmp_path)
    assert r.exit_code == 2 and "nope" in r.output


def test_profile_runs_records_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    """``mandc profile`` on a tiny model: one record per job under $MANDC_HOME/profiling, a second call
    skips the finished job, and the records reach the graph store."""
    home = tmp_path / "home"
    monkeypatch.setenv("MANDC_HOME", str(home))
    args = ("profile", "--models", tiny_model_dir, "--datasets", "builtin:shapes_circles", "--steps", 2,
            "--workers", 1, "--json")
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["summary"]["ran"] == 1 and out["summary"]["campaign_dir"] == str(home / "profiling")
    (rec,) = out["records"]
    assert rec["status"] == "ok" and rec["job"]["model"] == str(tiny_model_dir) and rec["job"]["config"]["steps"] == 2
    assert rec["metrics"]["heldout_loss"] > 0 and rec["metrics"]["zero_shot_loss"] > 0
    assert json.loads((home / "profiling" / "records" / f"{rec['job_id']}.json").read_text())["status"] == "ok"
    again = json.loads(invoke(*args).stdout)
    assert again["summary"]["ran"] == 0 and again["summary"]["skipped"] == 1 and again["records"] == out["records"]
    from mandc.store import Store

    assert rec["job_id"] in {r["job_id"] for r in Store(home / "graph.sqlite").records()}


def test_profile_bad_input(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MANDC_HOME", str(tmp_path / "home"))
    base = ("profile", "--models", tiny_model_dir, "--datasets", "builtin:shapes_circles")
    r = invoke(*base, "--executor", "locale")
    assert r.exit_code == 2 and "unknown executor 'locale'" in r.output
    r = invoke(*base, "--seeds", "x")
    assert r.exit_code == 2 and "--seeds" in r.output
    r = invoke(*base, "--method", "nope")
    assert r.exit_code == 2 and "unknown fine-tuning method" in r.output
    assert not (tmp_path / "home" / "profiling").exists()  # nothing ran
