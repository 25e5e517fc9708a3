"""A dataset's content fingerprint: equal images and captions, equal hash, whatever the folder is called."""
from __future__ import annotations

import hashlib


def dataset_fingerprint(ds) -> str:
    """``sha256`` (first 16 hex digits) over both splits of a :class:`~data.SplitDataset`, in order: each
    image's mode, size and decoded pixels, and each caption (UTF-8). Decoded pixels, not file bytes, so a
    re-encoded PNG of the same image keeps the fingerprint, and built-in datasets hash like folders."""
    h = hashlib.sha256()
    for split, part in (("train", ds.train), ("heldout", ds.heldout)):
        h.update(f"{split}:{len(part)}\n".encode())
        for img, cap in zip(part.images, part.captions):
            h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}\n".encode())
            h.update(img.tobytes())
            h.update(cap.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def folder_content_hash(path) -> str:
    """``sha256`` (64 hex digits) over a folder's files: every regular file below it (hidden ones and
    symbolic links to files included; linked folders are not walked, as the reader does not), in sorted
    relative-path order, as its path, size and bytes. Standard library only and no decoding (about 10 ms
    for 100 PNGs of 256×256), so it can key a cache of what was computed from the folder: change, add,
    remove or rename any file and the hash changes. Unlike
    :func:`dataset_fingerprint`, a re-encoded image changes it (that only costs a recomputation)."""
    import os
    from pathlib import Path

    root = Path(path)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):  # symlinked folders are not read (nor walked)
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            if p.is_file():
                files.append((p.relative_to(root).as_posix(), p))
    h = hashlib.sha256()
    for rel, p in sorted(files):
        with open(p, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        h.update(f"{rel}\0{p.stat().st_size}\0{digest}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()
