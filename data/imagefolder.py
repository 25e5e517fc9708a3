"""Reading and writing datasets in the Hugging Face *imagefolder* layout, and wrapping
``datasets.Dataset``-like objects.

Layouts read by :func:`read_imagefolder`::

    my_data/                          my_data/
      metadata.jsonl                    train/
      0001.png                            metadata.jsonl
      0002.jpg                            0001.png ...
      ...                               test/            (or validation/)
                                          metadata.jsonl
                                          0101.png ...

Each ``metadata.jsonl`` line is a JSON object ``{"file_name": "0001.png", "text": "a caption"}``
(``file_name`` relative to the folder holding the metadata file; ``caption`` is accepted for ``text``;
a ``metadata.csv`` with the same columns is read when there is no ``metadata.jsonl``). A flat folder's
held-out split is ``split_heldout(ds, 0.2, seed=0)``; ``test/`` becomes the held-out split.

Validation collects every problem and raises one :class:`~data.dataset.DatasetError` naming each
offending file by its path relative to the folder. Reading never writes into the folder.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from data.dataset import DatasetError, ImageTextDataset, SplitDataset, split_heldout
from data.pixels import ImageModeError, array_to_image, to_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA = "metadata.jsonl"
HELDOUT_FRACTION = 0.2  # of a flat folder or a single records object

LAYOUT_HELP = """expected layout (Hugging Face imagefolder):
    my_data/
      metadata.jsonl    one JSON object per line: {"file_name": "0001.png", "text": "a caption"}
      0001.png
      ...
  or with splits: my_data/train/ and my_data/test/, each with its own metadata.jsonl and images"""


# ----------------------------------------------------------------------------- pixels


def _open_image(source, notes=None) -> Image.Image:
    """Decode a path or file-like object fully (first frame of animations) and return it as RGB."""
    with Image.open(source) as im:
        im.load()
        return to_rgb(im, notes)


# ----------------------------------------------------------------------------- reading a folder


def read_imagefolder(path) -> SplitDataset:
    """Load a folder in the imagefolder layout (flat, or ``train/`` + ``test/``) as a :class:`SplitDataset`.

    Images are converted to RGB by :func:`data.pixels.to_rgb` (16-bit scaled, transparency on white,
    EXIF orientation applied; ``meta["converted"]`` counts each conversion) and kept at their own
    size. Raises one :class:`DatasetError` listing every problem found (corrupt images, images without
    captions, metadata rows naming missing files, malformed JSON lines, a missing ``metadata.jsonl``,
    an empty folder, a symbolic link that resolves outside the folder). A ``metadata.jsonl`` may start
    with a UTF-8 byte-order mark. A one-image flat folder warns (:class:`UserWarning`) that its held-out
    split reuses the training image.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{path}: no such folder\n{LAYOUT_HELP}")
    if not root.is_dir():
        raise DatasetError(f"{path}: not a directory; a dataset folder is a directory of images with a "
                           f"metadata.jsonl\n{LAYOUT_HELP}")
    problems: list[str] = []
    notes: Counter = Counter()
    split_dirs = [d for d in ("train", "test", "validation") if (root / d).is_dir()]
    if "train" in split_dirs:
        layout = "split"
        held_dir = "test" if "test" in split_dirs else "validation" if "validation" in split_dirs else None
        problems += [f"{_rel(p, root)}: image outside train/ and {held_dir or 'test'}/ would be ignored; "
                     f"move it into one of them" for p in _image_files(root, recursive=False)]
        train = _read_split(root, root / "train", problems, notes)
        heldout = _read_split(root, root / held_dir, problems, notes) if held_dir else None
    elif split_dirs:
        layout = "split"
        problems.append(f"{split_dirs[0]}/: a {split_dirs[0]}/ folder needs a train/ folder beside it")
        train = heldout = None
    else:
        layout = "flat"
        train, heldout = _read_split(root, root, problems, notes), None
    if problems:
        raise DatasetError(f"{root}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in the dataset "
                           f"folder:\n" + "\n".join(f"  - {p}" for p in problems))
    if heldout is None:
        if len(train) == 1:
            warnings.warn(f"{root}: only one image, so the held-out split reuses the training image (held-out "
                          f"loss then measures memorisation); add images or a test/ folder", UserWarning,
                          stacklevel=2)
        train, heldout = split_heldout(train, HELDOUT_FRACTION, seed=0)
    return SplitDataset(name=root.resolve().name, train=train, heldout=heldout, ref=str(root.resolve()),
                        family=None, meta={"source": "imagefolder", "path": str(root.resolve()), "layout": layout,
                                           "converted": dict(sorted(notes.items()))})


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix() if p != root else "."


def _image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Files with an image extension under ``folder`` (hidden files and folders skipped), sorted."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    out = []
    for p in it:
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)
    return sorted(out)


def _outside(p: Path, root: Path) -> str | None:
    """Where ``p`` resolves to when that is outside the dataset folder ``root`` (symlinks followed)."""
    real = p.resolve()
    return None if real.is_relative_to(root.resolve()) else str(real)


def _metadata_rows(meta: Path, root: Path, problems: list[str]) -> list[tuple[int, dict]] | None:
    """``(line number, row)`` for every well-formed row of a ``metadata.jsonl`` / ``metadata.csv``;
    None when the file cannot be read at all (its one problem is then recorded)."""
    where = _rel(meta, root)
    target = _outside(meta, root)
    if target:
        problems.append(f"{where}: symbolic link to {target}, outside the dataset folder; refusing to read it "
                        f"(copy the file into the folder)")
        return None
    try:
        raw = meta.read_bytes()
    except OSError as e:
        problems.append(f"{where}: cannot be read ({e.strerror or e})")
        return None
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark (Windows editors) is not part of the text
    except UnicodeDecodeError as e:
        bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
        line = raw[:e.start + bom].count(b"\n") + 1
        problems.append(f"{where} line {line}: not UTF-8 text (byte {raw[e.start + bom]:#04x}); save the file "
                        f"as UTF-8")
        return None
    rows = []
    if meta.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            rows.append((reader.line_num, dict(row)))
        return rows
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where} line {lineno}: malformed JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where} line {lineno}: expected a JSON object with 'file_name' and 'text', "
                            f"got {type(row).__name__}")
            continue
        rows.append((lineno, row))
    return rows


def _read_split(root: Path, folder: Path, problems: list[str], notes: Counter | None = None) -> ImageTextDataset | None:
    """Read one folder holding a metadata file and images; append problems instead of raising."""
    name = _rel(folder, root)
    label = "folder" if folder == root else f"{name}/"
    images = _image_files(folder)
    meta = folder / METADATA
    if not meta.is_file() and (folder / "metadata.csv").is_file():
        meta = folder / "metadata.csv"
    if not meta.is_file():
        if not images:
            problems.append(f"{label}: empty, no images and no {METADATA}\n{LAYOUT_HELP}")
        else:
            problems.append(f"{_rel(meta, root)}: missing, so none of the {len(images)} images in {label} has a "
                            f"caption\n{LAYOUT_HELP}")
        return None

    listed: dict[Path, int] = {}  # file (folder / normalised file_name) -> line it was listed on
    items: list[tuple[Path, str]] = []
    where = _rel(meta, root)
    rows = _metadata_rows(meta, root, problems)
    if rows is None:  # unreadable: its one problem says so; no follow-on "no caption" lines
        return None
    for lineno, row in rows:
        fn = row.get("file_name")
        if not isinstance(fn, str) or not fn.strip():
            problems.append(f"{where} line {lineno}: missing 'file_name'")
            continue
        norm = Path(os.path.normpath(fn))
        if norm.is_absolute() or norm.parts[0] == "..":
            problems.append(f"{where} line {lineno}: file_name {fn!r} points outside {label}")
            continue
        file = folder / norm
        shown = _rel(file, root)
        target = _outside(file, root)
        if target:  # checked before anything opens it
            problems.append(f"{where} line {lineno}: {shown!r} is a symbolic link to {target}, outside the dataset "
                            f"folder; copy the file into the folder instead")
            continue
        if not file.is_file():
            problems.append(f"{where} line {lineno}: {shown!r} does not exist")
            continue
        if file in listed:
            problems.append(f"{where} line {lineno}: {shown!r} is already listed on line {listed[file]}")
            continue
        listed[file] = lineno
        text = row.get("text", row.get("caption"))
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{shown}: no caption ('text' is empty or missing on {where} line {lineno})")
            continue
        items.append((file, text.strip()))

    for p in images:
        if p not in listed:
            target = _outside(p, root)
            problems.append(f"{_rel(p, root)}: symbolic link to {target}, outside the dataset folder" if target
                            else f"{_rel(p, root)}: no caption (not listed in {where})")

    pil, captions = [], []
    for p, text in items:
        try:
            pil.append(_open_image(p, notes))
            captions.append(text)
        except ImageModeError as e:
            problems.append(f"{_rel(p, root)}: {e}")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            kind = "unsupported file type" if p.suffix.lower() not in IMAGE_EXTENSIONS else "corrupt image"
            problems.append(f"{_rel(p, root)}: {kind}, PIL cannot open it ({type(e).__name__}: {e})")
    if not images and not listed:
        problems.append(f"{label}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files and for "
                        f"files listed in {where})")
    return ImageTextDataset(pil, captions, name=root.resolve().name)


# ----------------------------------------------------------------------------- writing


def write_imagefolder(ds: SplitDataset, out_dir) -> Path:
    """Write ``ds`` as ``out_dir/train`` and ``out_dir/test`` (PNG files ``00000.png``... and a
    ``metadata.jsonl`` each) and return ``out_dir``.

    Refuses an existing non-empty ``out_dir``. Atomic: everything is written into a temporary sibling
    folder that is renamed to ``out_dir`` only when complete, so a failure leaves nothing behind.
    """
    if not isinstance(ds, SplitDataset):
        raise DatasetError(f"write_imagefolder needs a SplitDataset, got {type(ds).__name__}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a directory; refusing to overwrite it")
    if out.is_dir() and any(out.iterdir()):
        raise DatasetError(f"{out}: directory is not empty; refusing to overwrite it (choose a new or empty folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for split, part in (("train", ds.train), ("test", ds.heldout)):
            folder = tmp / split
            folder.mkdir()
            lines = []
            for i, (img, text) in enumerate(zip(part.images, part.captions)):
                fn = f"{i:05d}.png"
                to_rgb(img).save(folder / fn, format="PNG")
                lines.append(json.dumps({"file_name": fn, "text": text}, ensure_ascii=False))
            (folder / METADATA).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if out.is_dir():
            out.rmdir()  # empty, checked above; rename() cannot replace it portably
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- datasets-like objects


def from_records(obj, name: str = "") -> SplitDataset:
    """Wrap a ``datasets.Dataset``-like object as a :class:`SplitDataset`.

    ``obj`` is anything with ``len(obj)`` and ``obj[i] -> {"image": ..., "text": str}`` (``caption``
    is accepted for ``text``; the image may be a PIL image, a ``[H, W(, C)]`` array, a file path, or a
    ``{"bytes": ..., "path": ...}`` dict as in undecoded ``datasets`` images), or a mapping of splits
    ``{"train": ..., "test": ...}`` (``validation`` is used when there is no ``test``), or a mapping of
    columns ``{"image": [...], "text": [...]}``. Without a test split the held-out split is
    ``split_heldout(train, 0.2, seed=0)``. All problems are reported together, each naming its row.
    """
    name = name or type(obj).__name__
    problems: list[str] = []
    heldout = None
    if isinstance(obj, Mapping) and "train" in obj:
        held_key = "test" if "test" in obj else "validation" if "validation" in obj else None
        train = _records_split(obj["train"], "train ", name, problems)
        if held_key:
            heldout = _records_split(obj[held_key], f"{held_key} ", name, problems)
        layout = "splits"
    elif isinstance(obj, Mapping) and "image" in obj:
        train = _records_split(_Columns(obj), "", name, problems)
        layout = "columns"
    elif isinstance(obj, Mapping):
        raise DatasetError(f"{name}: a mapping must hold splits ('train' and optionally 'test') or columns "
                           f"('image' and 'text'); got keys {sorted(map(str, obj))}")
    else:
        train = _records_split(obj, "", name, problems)
        layout = "records"
    if problems:
        raise DatasetError(f"{name}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in the records:\n"
                           + "\n".join(f"  - {p}" for p in problems))
    if heldout is None:
        train, heldout = split_heldout(train, HELDOUT_FRACTION, seed=0)
    return SplitDataset(name=name, train=train, heldout=heldout, ref=f"records:{name}", family=None,
                        meta={"source": "records", "layout": layout})


class _Columns:
    """Row view of a column mapping ``{"image": [...], "text": [...]}``."""

    def __init__(self, cols: Mapping):
        self.cols = cols
        lens = {k: len(v) for k, v in cols.items()}
        if len(set(lens.values())) > 1:
            raise DatasetError(f"columns have different lengths: {lens}")
        self.n = next(iter(lens.values()), 0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.cols.items()}


def _records_split(obj, label: str, name: str, problems: list[str]) -> ImageTextDataset:
    if not (hasattr(obj, "__len__") and hasattr(obj, "__getitem__")) or isinstance(obj, (str, bytes)):
        problems.append(f"{label or 'records'}: a {type(obj).__name__} is not a dataset; need len() and "
                        f"obj[i] -> {{'image': ..., 'text': ...}}")
        return ImageTextDataset([], [], name)
    images, captions = [], []
    if len(obj) == 0:
        problems.append(f"{label}records: empty (no rows)")
    for i in range(len(obj)):
        where = f"{label}row {i}"
        try:
            row = obj[i]
        except Exception as e:  # noqa: BLE001  (a user object may raise anything)
            problems.append(f"{where}: cannot be read ({type(e).__name__}: {e})")
            continue
        if not isinstance(row, Mapping):
            problems.append(f"{where}: expected a mapping with 'image' and 'text', got {type(row).__name__}")
            continue
        text = row.get("text", row.get("caption"))
        bad_text = not isinstance(text, str) or not text.strip()
        if bad_text:
            problems.append(f"{where}: no caption ('text' or 'caption' is empty or missing)")
        if row.get("image") is None:
            problems.append(f"{where}: no 'image'")
            continue
        try:
            img = _record_image(row["image"])
        except FileNotFoundError as e:
            problems.append(f"{where}: image file {str(e.filename or e)!r} does not exist")
            continue
        except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as e:
            problems.append(f"{where}: cannot read image ({type(e).__name__}: {e})")
            continue
        if not bad_text:
            images.append(img)
            captions.append(text.strip())
    return ImageTextDataset(images, captions, name)


def _record_image(value) -> Image.Image:
    if isinstance(value, Image.Image):
        value.load()
        return to_rgb(value)
    if isinstance(value, np.ndarray):
        return array_to_image(value)
    if isinstance(value, (str, os.PathLike)):
        p = Path(value).expanduser()
        if not p.is_file():
            raise FileNotFoundError(2, "no such file", str(value))
        return _open_image(p)
    if isinstance(value, Mapping) and (value.get("bytes") is not None or value.get("path")):
        if value.get("bytes") is not None:
            return _open_image(io.BytesIO(value["bytes"]))
        return _record_image(value["path"])
    raise TypeError(f"unsupported image value of type {type(value).__name__} "
                    f"(want a PIL image, a numpy array, a file path or a {{'bytes', 'path'}} dict)")
