"""Bad input a user's folder can hold (issue 14): every image mode converted without clipping, symlinks
confined to the folder, metadata encodings, the one-image held-out warning, and the resize account."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from data import DatasetError, ImageTextDataset, from_records, read_imagefolder
from data.pixels import array_to_image, resize_summary, to_rgb


def _meta(root, names):
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": f"cap {n}"}) + "\n"
                                                 for n in names))


def _load_one(tmp_path, name, save):
    """Write one image with ``save(path)`` plus a second plain one, read the folder, return the first."""
    save(tmp_path / name)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "plain.png")
    _meta(tmp_path, [name, "plain.png"])
    ds = read_imagefolder(tmp_path)
    by_cap = dict(zip(ds.train.captions + ds.heldout.captions, ds.train.images + ds.heldout.images))
    return by_cap[f"cap {name}"], ds


def test_16bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1024).astype(np.uint16)  # 0 .. 64512
    img, ds = _load_one(tmp_path, "g16.png", lambda p: Image.fromarray(ramp).save(p))
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    got = np.asarray(img)[..., 0].astype(int)
    np.testing.assert_allclose(got, np.round(ramp / 257.0), atol=1)
    assert len(np.unique(got)) == 64  # before: everything above 255 clipped to white
    assert ds.meta["converted"] == {"16-bit greyscale scaled to 8 bits": 1}


@pytest.mark.parametrize("arr,mode,want", [
    (np.array([[0, 100], [200, 255]], dtype=np.int32), "I", [[0, 100], [200, 255]]),          # 0–255 kept
    (np.array([[0, 65535], [257, 32896]], dtype=np.int32), "I", [[0, 255], [1, 128]]),        # 16-bit range
    (np.array([[-10, 0], [10, 90]], dtype=np.int32), "I", [[0, 26], [51, 255]]),              # min–max
    (np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32), "F", [[0, 128], [64, 255]]),      # [0, 1]
    (np.array([[0.0, 1000.0], [500.0, 250.0]], dtype=np.float32), "F", [[0, 255], [128, 64]]),  # min–max
])
def test_32bit_and_float_greyscale_scaled_by_range(tmp_path, arr, mode, want):
    img, _ = _load_one(tmp_path, "x.tiff", lambda p: Image.fromarray(arr).save(p, format="TIFF"))
    assert Image.open(tmp_path / "x.tiff").mode == mode
    np.testing.assert_array_equal(np.asarray(img)[..., 0], np.array(want))


def test_palette_with_transparency_and_la_composited_on_white(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    p.putpixel((1, 1), 1)
    img, ds = _load_one(tmp_path, "p.png", lambda f: p.save(f, transparency=0))
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (200, 0, 0)
    la = Image.merge("LA", [Image.new("L", (4, 4), 40), Image.new("L", (4, 4), 128)])
    img2, _ = _load_one(tmp_path / "la", "la.png", lambda f: (f.parent.mkdir(), la.save(f)))
    assert img2.getpixel((0, 0)) == (147,) * 3  # 40·128/255 + 255·127/255
    assert any("transparency composited on white" in k for k in ds.meta["converted"])


def test_cmyk_jpeg_converted(tmp_path):
    img, ds = _load_one(tmp_path, "c.jpg", lambda f: Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(f))
    r, g, b = img.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # cyan-free, full magenta+yellow = red
    assert ds.meta["converted"] == {"CMYK converted to RGB": 1}


def test_exif_orientation_applied(tmp_path):
    src = Image.new("RGB", (48, 16), (0, 0, 0))
    src.paste((255, 0, 0), (0, 0, 16, 16))  # red left third
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img, ds = _load_one(tmp_path, "o.jpg", lambda f: src.save(f, exif=exif, quality=100))
    assert img.size == (16, 48)
    assert img.getpixel((8, 4))[0] > 200 and img.getpixel((8, 44))[0] < 60  # red third is now the top
    assert ds.meta["converted"] == {"EXIF orientation applied": 1}


def test_records_uint16_array_scaled_not_clipped():
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    img = array_to_image(arr)
    assert img.getpixel((0, 0)) == (0, 0, 0) and img.getpixel((1, 1)) == (255, 255, 255)
    arr[1, 1] = 32896
    assert array_to_image(arr).getpixel((1, 1)) == (128,) * 3
    ds = from_records([{"image": np.full((3, 3), 1000, dtype=np.uint16), "text": "x"}] * 2)
    assert ds.train.images[0].getpixel((0, 0)) == (4, 4, 4)  # 1000·255/65535, not clipped to 255


def test_unknown_mode_refused_with_its_name():
    img = Image.new("RGB", (2, 2))
    img._mode = "XYZ"  # every mode Pillow 13 decodes is handled; a future one must not pass silently
    with pytest.raises(ValueError, match="mode 'XYZ' is not supported"):
        to_rgb(img)


# ------------------------------------------------------------------------------------------ symlinks


def test_symlink_to_image_outside_folder_is_refused_naming_link_and_target(tmp_path):
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (4, 4)).save(outside)
    root = tmp_path / "ds"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(root / "ok.png")
    os.symlink(outside, root / "link.png")
    _meta(root, ["ok.png", "link.png"])
    with pytest.raises(DatasetError) as e:
        read_imagefolder(root)
    msg = str(e.value)
    assert "'link.png' is a symbolic link to" in msg and str(outside) in msg and "outside the dataset folder" in msg


def test_symlink_to_non_image_outside_is_never_opened(tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    root = tmp_path / "ds"
    root.mkdir()
    os.symlink(secret, root / "a.png")
    Image.new("RGB", (4, 4)).save(root / "b.png")
    _meta(root, ["a.png", "b.png"])
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    with pytest.raises(DatasetError) as e:
        read_imagefolder(root)
    assert "corrupt image" not in str(e.value) and str(secret) in str(e.value)
    assert not any("a.png" in f for f in opened)


def test_symlink_inside_folder_and_symlinked_metadata_outside(tmp_path):
    root = tmp_path / "ds"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "sub" / "real.png")
    Image.new("RGB", (4, 4)).save(root / "b.png")
    os.symlink(root / "sub" / "real.png", root / "alias.png")  # resolves inside: fine
    _meta(root, ["alias.png", "b.png", "sub/real.png"])
    assert len(read_imagefolder(root)) == 3
    meta_out = tmp_path / "meta.jsonl"
    (root / "metadata.jsonl").rename(meta_out)
    os.symlink(meta_out, root / "metadata.jsonl")
    with pytest.raises(DatasetError, match="metadata.jsonl: symbolic link to .*outside the dataset folder"):
        read_imagefolder(root)


# ------------------------------------------------------------------------------------------ encodings


def test_metadata_with_utf8_bom_is_accepted(tmp_path):
    for i in range(2):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
    lines = "".join(json.dumps({"file_name": f"{i}.png", "text": f"café {i}"}, ensure_ascii=False) + "\n"
                    for i in range(2))
    (tmp_path / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.encode("utf-8"))
    ds = read_imagefolder(tmp_path)
    assert sorted(ds.train.captions + ds.heldout.captions) == ["café 0", "café 1"]


def test_bom_csv_metadata_is_accepted(tmp_path):
    for i in range(2):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
    (tmp_path / "metadata.csv").write_bytes(b"\xef\xbb\xbffile_name,text\n0.png,zero\n1.png,one\n")
    assert sorted(read_imagefolder(tmp_path).train.captions + read_imagefolder(tmp_path).heldout.captions) == \
        ["one", "zero"]


def test_non_utf8_metadata_reported_once_by_line(tmp_path):
    for i in range(4):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
    lines = [json.dumps({"file_name": f"{i}.png", "text": f"c{i}"}).encode() for i in range(4)]
    lines[2] = '{"file_name": "2.png", "text": "caf\u00e9"}'.encode("latin-1")
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DatasetError) as e:
        read_imagefolder(tmp_path)
    msg = str(e.value)
    assert "1 problem in" in msg and "metadata.jsonl line 3: not UTF-8" in msg and "no caption" not in msg


# ------------------------------------------------------------------------------------------ what was done


def test_one_image_folder_warns_heldout_reuses_it(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "only.png")
    _meta(tmp_path, ["only.png"])
    with pytest.warns(UserWarning, match="only one image, so the held-out split reuses the training image"):
        ds = read_imagefolder(tmp_path)
    assert ds.heldout.images[0] is ds.train.images[0]


def test_resize_summary_counts_resized_cropped_upscaled():
    imgs = [Image.new("RGB", (64, 64))] * 5 + [Image.new("RGB", (48, 40)), Image.new("RGB", (25, 25)),
                                                Image.new("RGB", (32, 32))]
    s = resize_summary(imgs, 32)
    assert (s["resized"], s["cropped"], s["upscaled"], s["images"]) == (7, 1, 1, 8)
    assert s["from"] == {"64x64": 5, "48x40": 1, "25x25": 1}
    assert s["line"] == ("7 of 8 images resized from 64×64, 25×25, 48×40 to 32×32; 1 non-square images "
                         "centre-cropped; 1 upscaled")
    assert resize_summary([Image.new("RGB", (32, 32))], 32)["line"] == "1 images already 32×32; none resized"
    assert ImageTextDataset(imgs, ["c"] * 8).to_tensor(32).shape == (8, 3, 32, 32)
