"""data.io: the shared atomic write, $MANDC_HOME rule and canonical JSON."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import data.io as io_mod
from data.io import atomic_output, atomic_write, canonical_json, mandc_home


def test_atomic_write_is_all_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "records" / "abc.json"
    atomic_write(target, '{"old": true}')
    seen = {}
    real_fsync = os.fsync

    def spy(fd):  # called after the data is written, before the rename
        seen["target"] = target.read_text()
        seen["visible"] = sorted(p.name for p in target.parent.glob("*.json"))
        real_fsync(fd)

    monkeypatch.setattr(io_mod.os, "fsync", spy)
    assert atomic_write(target, json.dumps({"new": "x" * 100_000}).encode()) == target
    assert seen["target"] == '{"old": true}'  # while writing, readers still see the whole old file
    assert seen["visible"] == ["abc.json"]  # the temporary file is hidden from *.json readers
    assert json.loads(target.read_text())["new"] == "x" * 100_000
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # an ordinary file, not mkstemp's 0600

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io_mod.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, '{"partial": ')
    assert json.loads(target.read_text())["new"]  # the old file survives a failed write
    assert [p.name for p in target.parent.iterdir()] == ["abc.json"]  # and no temporary file is left


def test_atomic_output_gives_a_writer_a_sibling_path(tmp_path):
    target = tmp_path / "a" / "w.bin"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and not target.exists()
        tmp.write_bytes(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and list(target.parent.iterdir()) == [target]
    with pytest.raises(ValueError, match="writer failed"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("writer failed")
    assert target.read_bytes() == b"\x00\x01" and list(target.parent.iterdir()) == [target]


def test_mandc_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MANDC_HOME", str(tmp_path / "h"))
    assert mandc_home() == tmp_path / "h"
    monkeypatch.setenv("MANDC_HOME", "")
    assert mandc_home() == Path("~/.cache/mandc").expanduser()
    monkeypatch.delenv("MANDC_HOME")
    assert mandc_home() == Path("~/.cache/mandc").expanduser()


def test_canonical_json_is_one_text_per_value():
    assert canonical_json({"b": [1, 2.5], "a": "é"}) == '{"a":"\\u00e9","b":[1,2.5]}'
    assert canonical_json({"a": 1, "b": 2}) == canonical_json({"b": 2, "a": 1})
    with pytest.raises(ValueError):
        canonical_json({"x": math.nan})


def test_importing_data_is_light():
    """``import data`` (and ``data.io``) import neither torch nor numpy; the names still resolve, and reading
    datasets and their (cached) features does not import torch either: only computing caption embeddings does."""
    code = ("import sys, data, data.io; assert not {'torch', 'numpy', 'PIL'} & set(sys.modules), sys.modules.keys(); "
            "from data import load_dataset, DatasetFeatures, read_imagefolder; assert 'torch' not in sys.modules; "
            "assert sorted(data.__all__) == data.__all__ and 'load_dataset' in dir(data)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).parents[2]))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
