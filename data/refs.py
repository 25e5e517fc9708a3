"""Resolving a dataset reference into a :class:`~data.dataset.SplitDataset`.

A reference is ``"builtin:NAME"`` (the offline catalog), a path to a folder in the imagefolder layout,
or an in-memory object: a ``datasets.Dataset``-like object, a mapping of splits, an
:class:`~data.dataset.ImageTextDataset` or an already resolved :class:`~data.dataset.SplitDataset`.
"""
from __future__ import annotations

import os
from pathlib import Path

from data.catalog import BUILTIN_PREFIX, load_builtin
from data.dataset import DatasetError, ImageTextDataset, SplitDataset, split_heldout
from data.imagefolder import HELDOUT_FRACTION, from_records, read_imagefolder


def load_dataset(ref, seed: int = 0) -> SplitDataset:
    """Resolve ``ref`` into a :class:`SplitDataset`.

    ``seed`` picks the sample of a built-in dataset (0 is the canonical one); folders and objects are
    split with the fixed seed 0 so a user's held-out split never changes between runs.
    """
    if isinstance(ref, SplitDataset):
        return ref
    if isinstance(ref, ImageTextDataset):
        train, heldout = split_heldout(ref, HELDOUT_FRACTION, seed=0)
        return SplitDataset(name=ref.name or "dataset", train=train, heldout=heldout, ref=f"records:{ref.name}",
                            meta={"source": "records", "layout": "records"})
    if isinstance(ref, str) and ref.startswith(BUILTIN_PREFIX):
        return load_builtin(ref[len(BUILTIN_PREFIX):], seed=seed)
    if isinstance(ref, (str, os.PathLike)):
        path = Path(ref).expanduser()
        if path.exists():
            return read_imagefolder(path)
        raise DatasetError(
            f"dataset reference {str(ref)!r} is neither 'builtin:NAME' nor an existing folder. Use "
            f"'builtin:NAME' for a built-in dataset (`mandc data list` shows them), a path to a folder of "
            f"images with a metadata.jsonl, or pass a datasets.Dataset object "
            f"(e.g. datasets.load_dataset(...)['train']) from Python"
        )
    if hasattr(ref, "__len__") and hasattr(ref, "__getitem__"):
        return from_records(ref)
    raise DatasetError(f"cannot use a {type(ref).__name__} as a dataset reference; give 'builtin:NAME', a folder "
                       f"path, or a datasets.Dataset-like object")
