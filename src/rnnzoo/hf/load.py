"""`from_pretrained(path)`: a Hugging Face checkpoint folder -> an rnnzoo model.

    model = rnnzoo.from_pretrained("mamba-130m/")     # config.json + *.safetensors, no network
    logits, state = model(tokens)                     # tokens (B, T) -> (B, T, vocab)
    logits_t, state = model.step(tokens[:, -1], state)

The folder's config.json names its `model_type`; the mapping module of that type (one
small module each in this package: `mamba`, `mamba2`, ...) builds the stack from the
config, each recurrent layer the registered rnnzoo layer, and renames the checkpoint's
tensors to the stack's parameter names. Loading is strict: a checkpoint tensor the map
does not place, or a parameter it leaves unset, is an error naming it. Reading needs
neither `transformers` nor the network: JSON and safetensors only (models.checkpoint).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from rnnzoo.checks import int_in
from rnnzoo.io import parse_json, read_text
from rnnzoo.models.checkpoint import _NoFills, load_tensors
from rnnzoo.registry import list_layers

# model_type -> the module of this package that maps it
TYPES = {"mamba": "mamba", "falcon_mamba": "mamba", "mamba2": "mamba2",
         "recurrent_gemma": "recurrent_gemma", "qwen3_next": "qwen3_next",
         "kimi_linear": "kimi_linear", "bamba": "bamba", "nemotron_h": "nemotron_h",
         "granitemoehybrid": "granitemoehybrid", "jamba": "jamba", "lfm2": "lfm2",
         "minimax": "minimax", "xlstm": "xlstm", "rwkv": "rwkv", "falcon_h1": "falcon_h1",
         "zamba2": "zamba2"}
# flash-linear-attention's own model format (its fla-hub checkpoints): hf/fla_hub.py
TYPES.update(dict.fromkeys(("gla", "gated_deltanet", "delta_net", "rwkv7", "retnet", "hgrn2"),
                           "fla_hub"))


class UnsupportedCheckpoint(ValueError):
    """A checkpoint whose type or options rnnzoo cannot map (the message says which)."""


def need(ok: bool, model_type: str, what: str) -> None:
    """Refuse a checkpoint option the mapping does not cover, naming it."""
    if not ok:
        raise UnsupportedCheckpoint(f"{model_type} checkpoint: {what} is not supported")


def number(value) -> float:
    """A config number; transformers writes infinities as {"__float__": "Infinity"}."""
    return float(value["__float__"]) if isinstance(value, dict) else float(value)


def read_config(path) -> dict:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json (a checkpoint folder has config.json "
                                f"and *.safetensors)")
    config = parse_json(read_text(path / "config.json"), path / "config.json")
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{path / 'config.json'} names no model_type")
    return config


def read_tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's *.safetensors files (sharded or not), by name. With a
    model.safetensors.index.json, the files its weight_map names; a tensor in two files
    (a consolidated file left beside its shards) is an error naming both."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = parse_json(read_text(index), index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index} has no weight_map of tensor names to files")
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} names {absent[:3]}, absent from {path}")
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors file")
    tensors, where = {}, {}
    for f in files:
        for name, t in load_tensors(f)[0].items():
            if name in where:
                raise ValueError(f"{path}: tensor {name!r} is in both {where[name]} and "
                                 f"{f.name}; remove the stale file (or give the shards a "
                                 f"model.safetensors.index.json)")
            tensors[name], where[name] = t, f.name
    return tensors


def mapping(model_type: str):
    if model_type not in TYPES:
        raise UnsupportedCheckpoint(f"model_type {model_type!r} is not supported; rnnzoo loads "
                                    f"{sorted(TYPES)}")
    return importlib.import_module(f"rnnzoo.hf.{TYPES[model_type]}")


def from_pretrained(path, *, device=None, dtype: torch.dtype | None = None, max_len: int = 4096):
    """Build the rnnzoo model of the checkpoint folder `path` with its weights.

    dtype: the parameters' dtype (default float32); device: where they live; max_len: the
    capacity in tokens of full-attention KV caches (allocated once; local attention holds
    its window, recurrent layers their fixed state).
    Returns a `hf.model.PretrainedModel` (a `SequenceModel`) in eval mode.
    """
    config = read_config(path)
    module = mapping(config["model_type"])
    max_len = int_in("max_len", max_len)
    tensors = module.rename(read_tensors(path), config)
    try:  # the config's sizes against the tensors first, on the meta device: no memory
        list_layers()  # (every layer module imported first, so no constant of one is meta)
        with torch.device("meta"), _NoFills():
            skeleton = module.build(config, max_len=max_len)
    except RuntimeError:  # a part that cannot be built without values: checked once built
        skeleton = None
    if skeleton is not None:
        _check_fits(path, config, skeleton, tensors)
    model = module.build(config, max_len=max_len)
    _check_fits(path, config, model, tensors)
    model.load_state_dict(tensors, strict=True)
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def _check_fits(path, config: dict, model, tensors: dict) -> None:
    """Every checkpoint tensor placed, every parameter set, each of the model's shape."""
    own = model.state_dict()
    extra = sorted(set(tensors) - set(own))
    missing = sorted(set(own) - set(tensors))
    if extra or missing:
        raise ValueError(f"{path}: the {config['model_type']} map leaves checkpoint tensors "
                         f"{extra[:5]} unplaced and parameters {missing[:5]} unset")
    for name, t in tensors.items():
        if t.shape != own[name].shape:
            raise ValueError(f"{path}: tensor for {name} has shape {tuple(t.shape)}, the model "
                             f"needs {tuple(own[name].shape)}")
