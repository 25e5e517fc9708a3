"""A new placeholder token in the tokenizer and text encoder (textual inversion's only trainable row)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

EMBEDS_FILE = "learned_embeds.safetensors"


def _grow_embeddings_(enc, n_tokens: int) -> None:
    """Make room for ``n_tokens`` rows; never shrink (a small tokenizer over a big table keeps the table)."""
    if n_tokens > enc.get_input_embeddings().weight.shape[0]:
        enc.resize_token_embeddings(n_tokens, mean_resizing=False)  # the new rows are overwritten anyway


def add_placeholder_(model, token: str, initializer: str) -> int:
    """Add ``token`` to ``model.tokenizer`` and a row for it to the text encoder's input embeddings,
    initialised from ``initializer``'s embedding (as diffusers' ``textual_inversion.py`` does). Returns its id.
    """
    tok, enc = model.tokenizer, model.text_encoder
    init_ids = tok.encode(initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        raise ValueError(f"initializer {initializer!r} is {len(init_ids)} tokens for this tokenizer; "
                         "choose a single-token word (e.g. 'object', 'dog', 'style')")
    if tok.convert_tokens_to_ids(token) not in (None, tok.unk_token_id) and token in tok.get_vocab():
        raise ValueError(f"placeholder {token!r} is already in the tokenizer's vocabulary; pick another one")
    tok.add_tokens([token])
    token_id = tok.convert_tokens_to_ids(token)
    _grow_embeddings_(enc, len(tok))
    emb = enc.get_input_embeddings().weight
    with torch.no_grad():
        emb[token_id] = emb[init_ids[0]].clone()
    return token_id


def save_embedding(token: str, vector: torch.Tensor, out_dir: Path) -> Path:
    """diffusers' textual-inversion format: ``{token: [1, D]}`` in ``learned_embeds.safetensors``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / EMBEDS_FILE
    save_file({token: vector.detach().reshape(1, -1).to(torch.float32).contiguous()}, path)
    return path


def load_embedding_(model, path: str | Path) -> str:
    """Add the token(s) of a textual-inversion file to ``model`` with their learned vectors; returns the token."""
    from finetune.weightfiles import load_safetensors

    sd = load_safetensors(Path(path), "textual-inversion embedding", "train or download the embedding again")
    if len(sd) != 1:
        raise ValueError(f"{path}: expected one token, found {list(sd)}")
    (token, vec), = sd.items()
    tok, enc = model.tokenizer, model.text_encoder
    tok.add_tokens([token])
    _grow_embeddings_(enc, len(tok))
    with torch.no_grad():
        enc.get_input_embeddings().weight[tok.convert_tokens_to_ids(token)] = vec.reshape(-1)
    return token
