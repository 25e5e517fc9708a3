"""The shipped-reference loader: stdlib-only reading of the three JSONL files, clear errors, a content hash."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from data.reference import FILES, load_reference, reference_hash


def _write(folder, records, models, datasets):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(FILES, (records, models, datasets)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


REC = {"job_id": "0123456789abcdef", "job": {"model": "zoo:a", "dataset": "builtin:b", "method": "full",
                                             "config": {"steps": 30}, "seed": 0},
       "status": "ok", "error": None, "metrics": {"heldout_loss": 0.1, "zero_shot_loss": 0.2}}
MODEL = {"ref": "zoo:a", "name": "a", "features": {"is_dit": 0.0}, "info": {}}
DATASET = {"ref": "builtin:b", "name": "b", "family": "shapes", "profiled": True, "vector": [0.0] * 45,
           "feature_names": [f"f{i}" for i in range(45)]}


def test_load_reference_from_a_folder(tmp_path):
    _write(tmp_path / "ref", [REC, REC], [MODEL], [DATASET])
    (tmp_path / "ref" / "records.jsonl").write_text((tmp_path / "ref" / "records.jsonl").read_text() + "\n")
    records, models, datasets = load_reference(tmp_path / "ref")
    assert records == [REC, REC] and models == [MODEL] and datasets == [DATASET]  # blank lines are skipped


def test_errors_name_the_file(tmp_path):
    _write(tmp_path / "ref", [REC], [MODEL], [DATASET])
    (tmp_path / "ref" / "models.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"models\.jsonl is missing.*python -m profiler\.reference"):
        load_reference(tmp_path / "ref")
    _write(tmp_path / "ref", [REC], [MODEL], [DATASET])
    (tmp_path / "ref" / "datasets.jsonl").write_text(json.dumps(DATASET) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"datasets\.jsonl:2: not valid JSON"):
        load_reference(tmp_path / "ref")
    _write(tmp_path / "ref", [{"job_id": "x"}], [MODEL], [DATASET])
    with pytest.raises(ValueError, match=r"records\.jsonl:1: a record needs"):
        load_reference(tmp_path / "ref")


def test_reference_hash_follows_the_content(tmp_path):
    _write(tmp_path / "ref", [REC], [MODEL], [DATASET])
    h = reference_hash(tmp_path / "ref")
    assert reference_hash(tmp_path / "ref") == h and len(h) == 16
    _write(tmp_path / "ref", [REC, REC], [MODEL], [DATASET])
    assert reference_hash(tmp_path / "ref") != h


def test_loader_needs_only_the_standard_library(tmp_path):
    _write(tmp_path / "ref", [REC], [MODEL], [DATASET])
    code = ("import sys, importlib.util; spec = importlib.util.spec_from_file_location('ref', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "r, _, _ = m.load_reference(sys.argv[2]); "
            "assert not {'torch', 'numpy', 'PIL'} & set(sys.modules), sorted(sys.modules); print(len(r))")
    import data.reference as ref

    out = subprocess.run([sys.executable, "-c", code, ref.__file__, str(tmp_path / "ref")], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "1"
