"""Datasets: imagefolder I/O, the built-in offline catalog, dataset features.

The names are re-exported lazily (PEP 562), so ``import data`` (and ``data.io``) does not import torch,
numpy or PIL; a name's module is imported when the name is first used.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CatalogEntry": "data.catalog", "families": "data.catalog", "get_entry": "data.catalog",
    "list_catalog": "data.catalog", "load_builtin": "data.catalog",
    "DatasetError": "data.dataset", "ImageTextDataset": "data.dataset", "SplitDataset": "data.dataset",
    "center_square": "data.dataset", "split_heldout": "data.dataset",
    "DatasetFeatures": "data.features", "similarity_matrix": "data.features",
    "from_records": "data.imagefolder", "read_imagefolder": "data.imagefolder", "write_imagefolder": "data.imagefolder",
    "load_dataset": "data.refs",
    "embed_captions": "data.text", "minilm_path": "data.text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
