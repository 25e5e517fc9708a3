"""Say what was done to a user's images (issue 14 item 9): one line per dataset, in the fine-tuning
result JSON, printed by ``mandc finetune``, and in a recommendation's notes (its JSON and report)."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image
from planner_reference import make_reference
from typer.testing import CliRunner

from mandc.cli import app
from mandc.planner import Planner
from mandc.store import Store


def _mixed_folder(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    sizes = [(64, 64)] * 4 + [(48, 40), (25, 25), (32, 32)]
    rows = []
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a red circle number {i}"}))
    Image.fromarray((rng.integers(0, 65536, (32, 32))).astype(np.uint16)).save(root / "g16.png")
    rows.append(json.dumps({"file_name": "g16.png", "text": "a grey circle"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def test_finetune_reports_what_was_done_to_the_images(tmp_path):
    from tiny_models import tiny_model

    model_dir = tmp_path / "m"
    tiny_model().save_pretrained(model_dir)
    data = _mixed_folder(tmp_path / "mine")
    r = CliRunner().invoke(app, ["finetune", "--model", str(model_dir), "--data", str(data), "--method", "lora",
                                 "--steps", "1", "--out", str(tmp_path / "out"), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    want = ("mine: 6 of 8 images resized from 64×64, 25×25, 48×40 to 32×32; 1 non-square images centre-cropped; "
            "1 upscaled; converted: 1 image: 16-bit greyscale scaled to 8 bits")
    assert res["images"]["line"] == want
    assert want in " ".join(r.output.split())  # printed once (rich may wrap it)
    assert res["images"]["resize"]["from"] == {"64x64": 4, "48x40": 1, "25x25": 1}


def test_recommendation_notes_say_what_was_done(tmp_path):
    data = _mixed_folder(tmp_path / "mine")
    rec = Planner(Store(tmp_path / "g.sqlite", reference=make_reference()), cache_dir=tmp_path / "c").recommend(data)
    note = next(n for n in rec.notes if n.startswith("images for the features: mine: 6 of 8 images resized"))
    assert "16-bit greyscale scaled to 8 bits" in note
    assert note in json.dumps(rec.to_json(), ensure_ascii=False) and note in rec.to_markdown()
