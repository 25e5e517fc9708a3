"""Imagefolder reading/writing and datasets-like objects: good input loads, every bad input is named."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import DatasetError, from_records, read_imagefolder, write_imagefolder
from data.catalog import load_builtin


def _img(seed: int, size=(12, 10), mode="RGB") -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def _folder(root: Path, files: dict, rows=None, raw_lines=None) -> Path:
    """Write images ``{name: (seed, fmt)}`` and a metadata.jsonl (rows, or raw lines) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, (seed, fmt) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _img(seed, mode="RGBA" if fmt == "PNG" and seed % 2 else "RGB").save(root / name, format=fmt)
    if rows is not None or raw_lines is not None:
        lines = raw_lines if raw_lines is not None else [json.dumps(r) for r in rows]
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_flat_folder_loads_all_formats_and_is_not_modified(tmp_path):
    files = {"a.png": (1, "PNG"), "b.jpg": (2, "JPEG"), "c.webp": (3, "WEBP"), "d.bmp": (4, "BMP"),
             "e.tiff": (5, "TIFF"), "sub/f.png": (6, "PNG")}
    rows = [{"file_name": k, "text": f"caption {k}"} for k in files]
    # a two-frame GIF: only the first frame is used
    frames = [_img(7), _img(8)]
    frames[0].save(tmp_path / "g.gif", save_all=True, append_images=frames[1:])
    rows.append({"file_name": "g.gif", "caption": "an animated gif"})  # 'caption' accepted for 'text'
    root = _folder(tmp_path, files, rows)
    (root / "README.md").write_text("not an image, ignored")
    before = _snapshot(root)

    ds = read_imagefolder(root)

    assert _snapshot(root) == before
    assert len(ds) == 7 and len(ds.heldout) == round(0.2 * 7)
    assert set(ds.train.captions) | set(ds.heldout.captions) == {r.get("text", r.get("caption")) for r in rows}
    assert all(im.mode == "RGB" and im.size == (12, 10) for im in ds.train.images + ds.heldout.images)
    assert ds.meta["layout"] == "flat" and ds.family is None
    png = dict(zip(ds.train.captions + ds.heldout.captions, ds.train.images + ds.heldout.images))["caption b.jpg"]
    assert png.size == (12, 10)


def test_transparent_png_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgba.save(tmp_path / "t.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "t.png", "text": "clear"}) + "\n")
    ds = read_imagefolder(tmp_path)
    assert ds.train.images[0].getpixel((0, 0)) == (255, 255, 255)


def test_split_layout_uses_test_as_heldout(tmp_path):
    _folder(tmp_path / "train", {f"{i}.png": (i, "PNG") for i in range(3)},
            [{"file_name": f"{i}.png", "text": f"train {i}"} for i in range(3)])
    _folder(tmp_path / "test", {"x.png": (9, "PNG")}, [{"file_name": "x.png", "text": "held"}])
    ds = read_imagefolder(tmp_path)
    assert ds.train.captions == ["train 0", "train 1", "train 2"] and ds.heldout.captions == ["held"]
    assert ds.meta["layout"] == "split"


def test_every_problem_is_reported_with_its_file(tmp_path):
    files = {"ok.png": (1, "PNG"), "orphan.png": (2, "PNG"), "nocap.png": (3, "PNG"), "empty.png": (4, "PNG")}
    root = _folder(tmp_path, files)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.txt").write_text("text, not an image")
    lines = [
        json.dumps({"file_name": "ok.png", "text": "fine"}),
        json.dumps({"file_name": "nocap.png"}),
        json.dumps({"file_name": "empty.png", "text": "   "}),
        json.dumps({"file_name": "missing.png", "text": "gone"}),
        '{"file_name": "broken.png", "text": ',
        json.dumps({"file_name": "corrupt.jpg", "text": "bad bytes"}),
        json.dumps({"file_name": "notes.txt", "text": "not an image"}),
        json.dumps({"file_name": "ok.png", "text": "again"}),
        json.dumps({"file_name": "../outside.png", "text": "escape"}),
    ]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    before = _snapshot(root)
    with pytest.raises(DatasetError) as err:
        read_imagefolder(root)
    msg = str(err.value)
    assert _snapshot(root) == before
    assert "orphan.png: no caption (not listed" in msg
    assert "nocap.png: no caption" in msg and "line 2" in msg
    assert "empty.png: no caption" in msg
    assert "line 4: 'missing.png' does not exist" in msg
    assert "line 5: malformed JSON" in msg
    assert "corrupt.jpg: corrupt image" in msg
    assert "notes.txt: unsupported file type" in msg
    assert "line 8: 'ok.png' is already listed on line 1" in msg
    assert "line 9: file_name '../outside.png' points outside" in msg
    assert "9 problems" in msg


def test_missing_metadata_shows_layout(tmp_path):
    _folder(tmp_path, {"a.png": (1, "PNG"), "b.png": (2, "PNG")})
    with pytest.raises(DatasetError, match=r"metadata.jsonl: missing, so none of the 2 images") as err:
        read_imagefolder(tmp_path)
    assert "expected layout" in str(err.value) and '"file_name"' in str(err.value)


def test_empty_folder_and_not_a_directory(tmp_path):
    with pytest.raises(DatasetError, match="empty, no images and no metadata.jsonl"):
        read_imagefolder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(DatasetError, match="no images found"):
        read_imagefolder(tmp_path)
    f = tmp_path / "file.png"
    _img(0).save(f)
    with pytest.raises(DatasetError, match="file.png: not a directory"):
        read_imagefolder(f)
    with pytest.raises(DatasetError, match="no such folder"):
        read_imagefolder(tmp_path / "nope")


def test_split_layout_problems_name_the_split(tmp_path):
    _folder(tmp_path / "train", {"a.png": (1, "PNG")}, [{"file_name": "a.png", "text": "a"}])
    _folder(tmp_path / "test", {"b.png": (2, "PNG")})  # no metadata in test/
    _img(3).save(tmp_path / "stray.png")
    with pytest.raises(DatasetError) as err:
        read_imagefolder(tmp_path)
    msg = str(err.value)
    assert "test/metadata.jsonl: missing" in msg and "stray.png: image outside train/" in msg


def test_write_read_round_trip_and_refusals(tmp_path):
    ds = load_builtin("shapes_circles", n=12)
    out = write_imagefolder(ds, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]
    assert (out / "train" / "00000.png").is_file()
    back = read_imagefolder(out)
    for a, b in ((ds.train, back.train), (ds.heldout, back.heldout)):
        assert a.captions == b.captions
        assert all(x.tobytes() == y.tobytes() for x, y in zip(a.images, b.images))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir renamed away

    before = _snapshot(out)
    with pytest.raises(DatasetError, match="not empty; refusing"):
        write_imagefolder(ds, out)
    assert _snapshot(out) == before
    (tmp_path / "empty").mkdir()
    assert write_imagefolder(ds, tmp_path / "empty") == tmp_path / "empty"


def test_write_failure_leaves_nothing(tmp_path):
    ds = load_builtin("shapes_circles", n=6)
    ds.train.images[2] = "not an image"  # fails mid-way, after some files were written
    with pytest.raises(Exception):
        write_imagefolder(ds, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_from_records_datasets_like():
    class FakeHF:  # datasets.Dataset-like: len() and obj[i] -> dict
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    rows = [{"image": _img(i), "text": f"pil {i}"} for i in range(4)]
    rows += [{"image": np.full((5, 6), 0.5), "caption": "float gray array"},
             {"image": np.zeros((5, 6, 4), np.uint8), "text": "rgba array"}]
    ds = from_records(FakeHF(rows), name="fake")
    assert len(ds) == 6 and ds.name == "fake" and len(ds.heldout) == 1
    assert all(im.mode == "RGB" for im in ds.train.images + ds.heldout.images)

    splits = from_records({"train": rows[:3], "test": rows[3:]})
    assert splits.train.captions == ["pil 0", "pil 1", "pil 2"] and len(splits.heldout) == 3
    cols = from_records({"image": [r["image"] for r in rows[:4]], "text": [r["text"] for r in rows[:4]]})
    assert len(cols) == 4


def test_from_records_reports_rows(tmp_path):
    p = tmp_path / "x.png"
    _img(1).save(p)
    rows = [{"image": str(p), "text": "path ok"},
            {"image": _img(2), "text": ""},
            {"image": str(tmp_path / "missing.png"), "text": "gone"},
            {"text": "no image"},
            {"image": np.zeros((2, 2, 7)), "text": "bad shape"},
            "not a mapping"]
    with pytest.raises(DatasetError) as err:
        from_records({"train": rows, "test": rows[:1]}, name="mine")
    msg = str(err.value)
    for expected in ("train row 1: no caption", "train row 2: image file", "missing.png' does not exist",
                     "train row 3: no 'image'", "train row 4: cannot read image", "train row 5: expected a mapping"):
        assert expected in msg
    assert "row 0" not in msg


def test_metadata_csv_is_read_when_there_is_no_jsonl(tmp_path):
    _folder(tmp_path, {"a.png": (1, "PNG"), "b.png": (2, "PNG")})
    (tmp_path / "metadata.csv").write_text('file_name,text\na.png,"a caption, with a comma"\nb.png,\n')
    with pytest.raises(DatasetError, match=r"b.png: no caption .*metadata.csv line 3"):
        read_imagefolder(tmp_path)
    (tmp_path / "metadata.csv").write_text('file_name,text\na.png,"a caption, with a comma"\nb.png,second\n')
    ds = read_imagefolder(tmp_path)
    assert sorted(ds.train.captions + ds.heldout.captions) == ["a caption, with a comma", "second"]
