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
