"""Fuzz pass over every file type the product reads (issue 14 item 10).

Seeded random corruptions of: images, ``metadata.jsonl``, BitPlan JSON, graph-store JSON exports,
safetensors weight files, and model-folder configs (``model_index.json`` and component ``config.json``).
Each case must give a correct result or one of the project's error types with a message naming the
file (or its folder) — never another exception, a hang, or a write into the input folder. The plan
JSON (``mandc.plan.Plan``) is not fuzzed here: its file format belongs to the planner's own tests.
"""
from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CASES = {"image": 60, "metadata": 60, "bitplan": 40, "store_json": 30, "safetensors": 40, "model_config": 16}
SEED = 14


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """One random corruption: truncate, flip bytes, insert or delete a run, splice garbage, or empty."""
    kind = rng.choice(["truncate", "flip", "insert", "delete", "garbage", "empty", "head"])
    b = bytearray(data)
    if kind == "truncate":
        return bytes(b[: rng.randrange(0, max(1, len(b)))])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256)
        return bytes(b)
    if kind == "insert":
        i = rng.randrange(len(b) + 1)
        return bytes(b[:i]) + rng.randbytes(rng.randint(1, 32)) + bytes(b[i:])
    if kind == "delete":
        i = rng.randrange(len(b))
        return bytes(b[:i] + b[i + rng.randint(1, 32):])
    if kind == "garbage":
        return rng.randbytes(rng.randint(1, 200))
    if kind == "head":  # keep the magic, lose the rest
        return bytes(b[:16]) + rng.randbytes(rng.randint(0, 64))
    return b""


def json_mutation(obj, rng: random.Random):
    """A structurally wrong but parseable variant: a value replaced by another type, a key dropped."""
    obj = json.loads(json.dumps(obj))
    junk = [None, 0, -1, 1e308, "x", [], {}, [1, 2], True, "NaN"]
    path, node = [], obj
    for _ in range(rng.randint(1, 3)):
        if isinstance(node, dict) and node:
            k = rng.choice(sorted(node))
        elif isinstance(node, list) and node:
            k = rng.randrange(len(node))
        else:
            break
        path.append((node, k))
        node = node[k]
    if not path:
        return rng.choice(junk)
    parent, k = path[-1]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[k]
    else:
        parent[k] = rng.choice(junk)
    return obj


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _expect(fn, errors, names, tally, cls):
    """Run ``fn``: a result is fine; an error must be one of ``errors`` and name one of ``names``."""
    try:
        fn()
        tally[cls]["ok"] += 1
    except errors as e:
        msg = str(e)
        assert any(str(n) in msg for n in names), f"{cls}: {type(e).__name__} does not name the file: {msg[:300]}"
        tally[cls]["error"] += 1


@pytest.fixture(scope="module")
def tally():
    t = {k: {"ok": 0, "error": 0} for k in CASES}
    yield t
    total = sum(v["ok"] + v["error"] for v in t.values())
    print(f"\nfuzz: {total} cases over {len(t)} input classes: {json.dumps(t)}")


def test_fuzz_images_and_metadata(tmp_path, tally):
    from data import DatasetError, read_imagefolder

    rng = random.Random(SEED)
    arr = np.random.default_rng(SEED).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    seeds = {}
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff"),
                     ("WEBP", "webp")):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        seeds[ext] = buf.getvalue()
    meta_ok = "".join(json.dumps({"file_name": f"{i}.png", "text": f"caption {i}"}) + "\n" for i in range(3))
    for case in range(CASES["image"] + CASES["metadata"]):
        root = tmp_path / f"c{case}"
        root.mkdir()
        for i in range(3):
            (root / f"{i}.png").write_bytes(seeds["png"])
        cls = "image" if case < CASES["image"] else "metadata"
        if cls == "image":
            ext = rng.choice(sorted(seeds))
            (root / "1.png").unlink()
            (root / f"1.{ext}").write_bytes(corrupt(seeds[ext], rng))
            (root / "metadata.jsonl").write_text(meta_ok.replace("1.png", f"1.{ext}"))
            names = [f"1.{ext}"]
        else:
            raw = meta_ok.encode()
            if rng.random() < 0.5:
                raw = corrupt(raw, rng)
            else:
                lines = meta_ok.splitlines()
                i = rng.randrange(len(lines))
                lines[i] = json.dumps(json_mutation(json.loads(lines[i]), rng))
                raw = ("\n".join(lines) + "\n").encode()
            (root / "metadata.jsonl").write_bytes(raw)
            names = ["metadata.jsonl", ".png", str(root)]
        before = _snapshot(root)

        def load():
            ds = read_imagefolder(root)
            assert len(ds) >= 1 and all(im.mode == "RGB" for im in ds.train.images + ds.heldout.images)

        _expect(load, DatasetError, names, tally, cls)
        assert _snapshot(root) == before, f"case {case} wrote into the dataset folder"


def test_fuzz_bitplan_json(tmp_path, tally):
    from profiler.mpq.bitplan import BitPlan, BitPlanError

    rng = random.Random(SEED + 1)
    good = BitPlan(layers={"down.0.conv": {"w_bits": 4, "a_bits": 8}, "mid.attn.to_q": {"w_bits": 8, "a_bits": 8}},
                   budget={"weight_bytes": 1000.0}, usage={"avg_bits": 6.0}).to_dict()
    for case in range(CASES["bitplan"]):
        p = tmp_path / f"plan{case}.json"
        raw = json.dumps(good).encode()
        p.write_bytes(corrupt(raw, rng) if case % 2 else json.dumps(json_mutation(good, rng)).encode())
        _expect(lambda: BitPlan.load(p), (BitPlanError, ValueError), [p], tally, "bitplan")


def test_fuzz_store_json(tmp_path, tally):
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "mandc"))
    from planner_reference import make_reference

    from mandc.planner import Planner
    from mandc.store import Store, StoreError

    rng = random.Random(SEED + 2)
    store = Store(":memory:", reference=make_reference())
    good = store.to_json()
    for case in range(CASES["store_json"]):
        p = tmp_path / f"store{case}.json"
        p.write_bytes(corrupt(json.dumps(good).encode(), rng) if case % 2 else
                      json.dumps(json_mutation(good, rng)).encode())

        def load():
            Planner(p, cache_dir=False).graph()

        _expect(load, (StoreError, ValueError), [p], tally, "store_json")


def test_fuzz_safetensors(tmp_path, tally):
    import torch
    from safetensors.torch import save_file

    from finetune.weightfiles import WeightsFileError, load_safetensors

    rng = random.Random(SEED + 3)
    src = tmp_path / "good.safetensors"
    save_file({"a": torch.randn(4, 3), "b": torch.arange(5)}, str(src), metadata={"format": "pt"})
    good = src.read_bytes()
    for case in range(CASES["safetensors"]):
        p = tmp_path / f"w{case}.safetensors"
        p.write_bytes(corrupt(good, rng))
        _expect(lambda: load_safetensors(p), WeightsFileError, [p], tally, "safetensors")


def test_fuzz_model_folder_configs(tmp_path, tally):
    from tiny_models import tiny_model

    from finetune.model import T2IModel
    from finetune.refs import ModelRefError

    rng = random.Random(SEED + 4)
    base = tmp_path / "base"
    tiny_model().save_pretrained(base)
    targets = ["model_index.json", "unet/config.json", "scheduler/scheduler_config.json", "text_encoder/config.json"]
    for case in range(CASES["model_config"]):
        folder = tmp_path / f"m{case}"
        shutil.copytree(base, folder)
        rel = targets[case % len(targets)]
        good = json.loads((folder / rel).read_text())
        (folder / rel).write_bytes(corrupt(json.dumps(good).encode(), rng) if case % 2 else
                                   json.dumps(json_mutation(good, rng)).encode())
        _expect(lambda: T2IModel.from_pretrained(folder), (ModelRefError, ValueError), [folder], tally,
                "model_config")
