"""finetune package: the T2I model adapter, the reference zoo, quantized layers, optimizers, fine-tuning methods.

The main names are re-exported lazily (PEP 562), so ``import finetune`` stays cheap and diffusers is only
imported when one of them is first used::

    from finetune import load_model
    model = load_model("zoo:unet-xs-gradients")   # a T2IModel
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "T2IModel": "finetune.model",
    "MandcPixelPipeline": "finetune.pipeline",
    "load_model": "finetune.load",
    "ModelRefError": "finetune.refs",
    "parse_model_ref": "finetune.refs",
    "save_grid": "finetune.images",
    "run": "finetune.runner",
    "FinetuneResult": "finetune.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")
