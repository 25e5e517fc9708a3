"""Saving and loading quantized layers with safetensors.

``save_quantized`` writes, for every quantized layer ``<name>``, the tensors ``<name>.qweight`` (packed
codes at their real width), ``.zero_point``, ``.s_out``, ``.delta_s_out`` (all timestep sets), ``.s_in``,
``.bias`` and ``.a_scale`` where present, plus the per-layer configuration (bits, shape, conv
hyper-parameters, …) as JSON in the file's metadata. Layers that are not quantized are not written: they
come from the base model. ``load_quantized_`` turns the matching layers of a full-precision model of the
same architecture into quantized layers and fills them from the file, without re-quantizing. A model
with timestep scale sets (TuneQDM) follows its forward's timestep once loaded (:func:`follow_timesteps_`,
with the ``num_train_timesteps`` saved from a model that followed it, else 1000).

``trainable_scale_state_dict`` holds only what fine-tuning changes (``delta_s_out``, ``s_in``, and
biases left trainable), keyed like ``model.state_dict()``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from finetune.quant.layers import QuantConv2d, QuantLayer, QuantLinear
from finetune.quant.timestep import follow_timesteps_

FORMAT = "mandc.quant"
VERSION = "1"
_TENSORS = ("qweight", "zero_point", "s_out", "delta_s_out", "s_in", "bias", "a_scale")


def _quant_layers(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def save_quantized(model: nn.Module, path) -> Path:
    """Write all quantized layers of ``model`` to the safetensors file ``path`` (atomically)."""
    layers = _quant_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantized layer to save; call quantize_ first")
    tensors, configs = {}, {}
    for name, m in layers.items():
        configs[name] = m.config()
        for key in _TENSORS:
            t = getattr(m, key)
            if t is not None:
                tensors[f"{name}.{key}"] = t.detach().cpu().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {"format": FORMAT, "version": VERSION, "layers": json.dumps(configs)}
    if getattr(model, "_follows_timesteps", False):
        meta["num_train_timesteps"] = str(model._timestep_T)
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_quantized_config(path) -> dict:
    """The ``{layer name: config}`` stored in a file written by :func:`save_quantized`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quantized checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from None
    if meta.get("format") != FORMAT or "layers" not in meta:
        raise ValueError(f"{str(path)!r} was not written by save_quantized (metadata format is "
                         f"{meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} has quantized-checkpoint version {meta.get('version')!r}; this code reads {VERSION!r}")
    return json.loads(meta["layers"])


def _empty_layer(cfg: dict, like: nn.Module) -> QuantLayer:
    """An uninitialised quantized layer with configuration ``cfg``, on ``like``'s device."""
    common = dict(bias=cfg["has_bias"], separable=cfg["separable"], n_timestep_sets=cfg["n_timestep_sets"],
                  symmetric=cfg["symmetric"], a_bits=cfg["a_bits"], orig_dtype=getattr(torch, cfg["orig_dtype"]),
                  device=like.weight.device)
    shape = cfg["weight_shape"]
    if cfg["type"] == "linear":
        return QuantLinear(shape[1], shape[0], cfg["w_bits"], **common)
    return QuantConv2d(cfg["in_channels"], shape[0], shape[2:], cfg["w_bits"], stride=cfg["stride"],
                       padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"],
                       pre_pad=cfg["pre_pad"], pad_mode=cfg["pad_mode"], **common)


def _check_float_layer(name: str, m: nn.Module, cfg: dict, path) -> None:
    expected = nn.Linear if cfg["type"] == "linear" else nn.Conv2d
    if not isinstance(m, expected):
        raise ValueError(f"{str(path)!r}: layer {name!r} was a {expected.__name__} when saved but is a "
                         f"{type(m).__name__} in this model")
    if list(m.weight.shape) != cfg["weight_shape"] or (m.bias is not None) != cfg["has_bias"]:
        raise ValueError(f"{str(path)!r}: layer {name!r} has weight shape {list(m.weight.shape)} "
                         f"(bias={m.bias is not None}) here but {cfg['weight_shape']} (bias={cfg['has_bias']}) in the file")
    if isinstance(m, nn.Conv2d) and (list(m.stride) != cfg["stride"] or list(m.dilation) != cfg["dilation"]
                                     or m.groups != cfg["groups"]):
        raise ValueError(f"{str(path)!r}: conv {name!r} has stride/dilation/groups {m.stride}/{m.dilation}/"
                         f"{m.groups} here but {cfg['stride']}/{cfg['dilation']}/{cfg['groups']} in the file")


def load_quantized_(model: nn.Module, path) -> nn.Module:
    """Quantize ``model`` in place from a :func:`save_quantized` file and return it.

    Each saved layer must exist in ``model`` as the same-shaped ``nn.Linear`` / ``nn.Conv2d`` (it is
    replaced) or as a quantized layer of the same configuration (it is overwritten).
    """
    configs = read_quantized_config(path)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        follow_t = (f.metadata() or {}).get("num_train_timesteps")
        for name, cfg in configs.items():
            try:
                current = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"{str(path)!r}: layer {name!r} does not exist in {type(model).__name__}") from None
            if isinstance(current, QuantLayer):
                if current.config() != cfg:
                    diff = {k: (current.config().get(k), v) for k, v in cfg.items() if current.config().get(k) != v}
                    raise ValueError(f"{str(path)!r}: quantized layer {name!r} differs from the file "
                                     f"(here, file): {diff}")
                q = current
            else:
                _check_float_layer(name, current, cfg, path)
                q = _empty_layer(cfg, current)
                q.fqn = name
                q.train(current.training)
            with torch.no_grad():
                for key in _TENSORS:
                    target = getattr(q, key)
                    if target is None:
                        continue
                    full = f"{name}.{key}"
                    if full not in keys:
                        raise ValueError(f"{str(path)!r} lacks tensor {full!r}")
                    src = f.get_tensor(full)
                    if src.shape != target.shape:
                        raise ValueError(f"{str(path)!r}: tensor {full!r} has shape {tuple(src.shape)}, "
                                         f"expected {tuple(target.shape)}")
                    target.copy_(src)
            if q.bias is not None:
                q.bias.requires_grad_(cfg["bias_trainable"])
            if q is not current:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, q)
    if any(cfg["n_timestep_sets"] > 1 for cfg in configs.values()):  # files from before the key: T = 1000
        follow_timesteps_(model, int(follow_t or 1000))
    return model


def trainable_scale_state_dict(model: nn.Module) -> dict:
    """``{name: tensor}`` of the fine-tuned state only: every quantized layer's ``delta_s_out`` and
    ``s_in`` (all timestep sets), and its bias if trainable. Load it back with :func:`load_trainable_scales_`
    (or ``model.load_state_dict(sd, strict=False)``)."""
    out = {}
    for name, m in _quant_layers(model).items():
        out[f"{name}.delta_s_out"] = m.delta_s_out.detach().clone()
        if m.s_in is not None:
            out[f"{name}.s_in"] = m.s_in.detach().clone()
        if m.bias is not None and m.bias.requires_grad:
            out[f"{name}.bias"] = m.bias.detach().clone()
    return out


def load_trainable_scales_(model: nn.Module, state_dict: dict) -> nn.Module:
    """Load a :func:`trainable_scale_state_dict` into an equally quantized ``model``; every key must exist."""
    own = model.state_dict(keep_vars=True)
    missing = [k for k in state_dict if k not in own]
    if missing:
        raise ValueError(f"scale state dict has keys that {type(model).__name__} lacks (is it quantized the same "
                         f"way?): {missing[:5]}")
    with torch.no_grad():
        for k, v in state_dict.items():
            if own[k].shape != v.shape:
                raise ValueError(f"scale {k!r} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
            own[k].copy_(v)
    return model
