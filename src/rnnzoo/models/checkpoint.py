"""Checkpoints: tensors in the safetensors format, the model's config as JSON.

The safetensors layout (https://github.com/huggingface/safetensors) is small
enough to write here, so it is not a dependency:

    8 bytes   N, little-endian unsigned: length of the header
    N bytes   JSON: {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                     "__metadata__": {str: str}}     (padded with spaces to 8 bytes)
    rest      the tensors' raw little-endian bytes, in offset order

Loading reads bytes and JSON only: nothing is ever unpickled. Complex tensors
(which safetensors has no dtype for) are stored as their real view (..., 2),
listed in the metadata key "rnnzoo.complex".

    save(model, "run/")        # run/model.safetensors + run/config.json, each written atomically
    model = rnnzoo.load("run/")  # or the .safetensors path

Old checkpoints: layer options renamed since a model was saved are translated
through `rnnzoo.layers.renames.RENAMED_OPTIONS`; a saved option, config field
or tensor that no longer fits fails in one line that names it. (Mode names are
never saved: `ModelConfig` holds none.)
"""

from __future__ import annotations

import inspect
import json
import math
import struct
import sys
from dataclasses import fields
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from rnnzoo.grid.chimera import ChimeraForecaster
from rnnzoo.io import atomic_write_bytes, atomic_write_text, parse_json, read_text
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.renames import RENAMED_OPTIONS, RENAMED_PARAMETERS
from rnnzoo.models.stack import ModelConfig, SequenceModel
from rnnzoo.registry import get_layer_info, list_layers

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_FROM_NAME = {v: k for k, v in _DTYPES.items()}
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _check_little_endian():
    if sys.byteorder != "little":
        raise RuntimeError("rnnzoo checkpoints are little-endian; this machine is big-endian")


def to_safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                         ) -> bytes:
    """Serialise a name -> tensor map (any device) into safetensors bytes."""
    _check_little_endian()
    header, blobs, offset = {}, [], 0
    complex_names = []
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.is_complex():
            t, complex_names = torch.view_as_real(t).contiguous(), complex_names + [name]
        if t.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot hold")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    meta = dict(metadata or {})
    if complex_names:
        meta["rnnzoo.complex"] = json.dumps(complex_names)
    if meta:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = meta
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def from_safetensors_bytes(buf: bytes, source="safetensors data"
                           ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse safetensors bytes -> (name -> tensor, metadata). Anything damaged (a length, the
    header's UTF-8 or JSON, an entry, a tensor's byte count) fails in one line naming `source`."""
    _check_little_endian()

    def bad(why):
        return ValueError(f"{source} is not a valid safetensors file: {why}")

    if len(buf) < 8:
        raise bad(f"{len(buf)} bytes, the header alone needs 8")
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise bad(f"header length {n} exceeds the file size")
    header = parse_json(bytes(buf[8:8 + n]), f"{source}: the safetensors header")
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise bad("__metadata__ must map strings to strings")
    body = memoryview(buf)[8 + n:]
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise bad(f"tensor {name!r} needs dtype, shape and data_offsets, got {info!r:.80}")
        dtype = _FROM_NAME.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise bad(f"tensor {name!r} has unsupported dtype {info['dtype']!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**63
                                                  for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r:.80}, not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or \
                not all(type(o) is int for o in offsets):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
        begin, end = offsets
        if not 0 <= begin <= end <= len(body):
            raise bad(f"tensor {name!r} has data offsets {begin, end} outside the file")
        size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        if end - begin != size:
            raise bad(f"tensor {name!r} of shape {shape} {info['dtype']} needs {size} bytes, "
                      f"its data_offsets give {end - begin}")
        raw = bytearray(body[begin:end])
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        if dtype == torch.bool and bool((flat > 1).any()):  # torch reads other bytes as UB
            raise bad(f"tensor {name!r} is BOOL but holds bytes other than 0 and 1")
        tensors[name] = flat.view(dtype).reshape(shape)
    complex_names = parse_json(meta.get("rnnzoo.complex", "[]"), f"{source}: rnnzoo.complex")
    for name in complex_names if isinstance(complex_names, list) else [None]:
        t = tensors.get(name) if isinstance(name, str) else None
        if t is None or t.dtype not in (torch.float16, torch.float32, torch.float64) \
                or t.dim() == 0 or t.shape[-1] != 2:
            raise bad(f"rnnzoo.complex lists {name!r}, not a (..., 2) float tensor of the file")
        tensors[name] = torch.view_as_complex(t)
    return tensors, meta


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    atomic_write_bytes(path, to_safetensors_bytes(tensors, metadata))


def load_tensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    return from_safetensors_bytes(path.read_bytes(), path)


def save(model, directory, extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `directory`/model.safetensors (+ extra tensors) and config.json; returns the dir."""
    directory = Path(directory)
    config = model.config.to_json()
    tensors = dict(model.state_dict())
    tensors.update(extra_tensors or {})
    save_tensors(directory / WEIGHTS, tensors, {"rnnzoo.config": config})
    atomic_write_text(directory / CONFIG, json.dumps(json.loads(config), indent=2) + "\n")
    return directory


def upgrade_options(layer: str, options: dict, source) -> dict:
    """`options` of `layer` as saved -> today's names (layers/renames.py)."""
    renames = {**RENAMED_OPTIONS.get("*", {}), **RENAMED_OPTIONS.get(layer, {})}
    new = {}
    for key, value in options.items():
        name = renames.get(key, key)
        if name in new or (name != key and name in options):
            raise ValueError(f"{source}: option {key!r} of layer {layer!r} is now {name!r}, "
                             f"which is also set")
        new[name] = value
    return new


def upgrade_config(config: dict, source) -> dict:
    """A saved `ModelConfig` dict with its layer options under today's names."""
    config = dict(config)
    if "layer_options" in config and "layer" in config:
        config["layer_options"] = upgrade_options(config["layer"], config["layer_options"], source)
    if config.get("attention_options"):
        config["attention_options"] = upgrade_options("attention", config["attention_options"],
                                                      source)
    return config


def _check_options(layer: str, options: dict, source) -> None:
    """One line naming a saved option that `layer` no longer takes."""
    params = inspect.signature(get_layer_info(layer).cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # checked by the constructor
    accepted = [p for p in params if p not in ("self", "d_model")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ValueError(f"{source}: layer {layer!r} has no option {unknown[0]!r} any more "
                         f"(renamed or removed, and rnnzoo/layers/renames.py lists no new "
                         f"name); it accepts {accepted}")


def build_saved(config: dict, source) -> SequenceModel:
    """The model of a saved config (upgraded first); what no longer fits fails in one line."""
    config = upgrade_config(config, source)
    known = {f.name for f in fields(ModelConfig)}
    extra = sorted(set(config) - known)
    if extra:
        raise ValueError(f"{source}: the saved config has {extra}, which ModelConfig no longer "
                         f"has")
    try:
        _check_options(config["layer"], config.get("layer_options", {}), source)
        if config.get("hybrid"):
            _check_options("attention", config.get("attention_options", {}), source)
        return SequenceModel(ModelConfig.from_dict(config))
    except (ValueError, TypeError, KeyError) as e:
        message = str(e)
        if not message.startswith(str(source)):
            message = f"{source}: {message}"
        raise ValueError(message.replace("\n", " ")) from None


def upgrade_tensors(model, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` with the parameters of `model`'s layers under today's names
    (layers/renames.py RENAMED_PARAMETERS): an old name is taken when the new one is
    missing, reshaped to the new parameter's shape (same values, same order)."""
    tensors = dict(tensors)
    own = model.state_dict()
    for prefix, module in model.named_modules():
        if not isinstance(module, RecurrentLayer):
            continue
        at = f"{prefix}." if prefix else ""
        for old, new in RENAMED_PARAMETERS.get(module.name, {}).items():
            if at + new in own and at + new not in tensors and at + old in tensors \
                    and tensors[at + old].numel() == own[at + new].numel():
                tensors[at + new] = tensors.pop(at + old).reshape(own[at + new].shape)
    return tensors


def check_fits(model, tensors: dict[str, torch.Tensor], source, *, strict: bool = False
               ) -> dict[str, torch.Tensor]:
    """`tensors` with old parameter names upgraded, after checking them against `model`'s
    state (a model on the meta device will do): a missing tensor or one of another shape
    (and, when `strict`, one the model lacks) fails in one line naming them."""
    own = model.state_dict()
    tensors = upgrade_tensors(model, tensors)
    missing = [k for k in own if k not in tensors]
    shapes = [f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in tensors and tensors[k].shape != v.shape]
    extra = [k for k in tensors if k not in own] if strict else []
    problems = [f"{what}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                for what, names in (("missing", missing), ("shape differs", shapes),
                                    ("not in the model", extra)) if names]
    if problems:
        raise ValueError(f"{source} does not fit the model of its config "
                         f"({'; '.join(problems)})")
    return tensors


def load_state(model, tensors: dict[str, torch.Tensor], source, *, strict: bool = False) -> None:
    """Copy `tensors` into `model` (old parameter names upgraded); a missing tensor or one
    of another shape (and, when `strict`, one the model lacks) fails in one line naming them."""
    own = model.state_dict()
    tensors = check_fits(model, tensors, source, strict=strict)
    model.load_state_dict({k: v for k, v in tensors.items() if k in own})


def _check_sizes(config: dict, tensors: dict[str, torch.Tensor], source) -> None:
    """The config's d_model and num_layers against the tensors (the final norm's width, the
    number of blocks): the check that needs no model, for layers that cannot be built on the
    meta device."""
    norm = tensors.get("norm.weight")
    blocks = {int(k.split(".")[1]) for k in tensors
              if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    d_model, num_layers = config.get("d_model"), config.get("num_layers")
    if norm is not None and norm.dim() == 1 and d_model != norm.shape[0]:
        why = f"config d_model={d_model!r}, norm.weight {tuple(norm.shape)}"
    elif blocks and num_layers != len(blocks):
        why = f"config num_layers={num_layers!r}, tensors of {len(blocks)} blocks"
    else:
        return
    raise ValueError(f"{source} does not fit the model of its config (shape differs: {why})")


class _NoFills(TorchFunctionMode):
    """In-place fills and updates of meta tensors (init.normal_, uniform_, ...) do nothing:
    a meta tensor has no values, and some of these would import torch._dynamo (seconds)."""

    _RESHAPING = frozenset({"resize_", "resize_as_", "set_", "squeeze_", "unsqueeze_", "t_",
                            "transpose_", "swapdims_", "swapaxes_", "as_strided_",
                            "requires_grad_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes `tensor=`
        if name.endswith("_") and not name.startswith("_") and name not in self._RESHAPING \
                and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def _skeleton(config: dict, source) -> SequenceModel:
    """The model of `config` on the meta device: every shape, no memory."""
    list_layers()  # every layer module imported first, so that no constant of one is meta
    with torch.device("meta"), _NoFills():
        return build_saved(config, source)


# saved configs with a "model" field (not a SequenceModel's): kind -> from_saved(config, source);
# models/dsr.py adds "dsr"
MODEL_KINDS = {"chimera": ChimeraForecaster.from_saved}


def load(path, device=None):
    """Rebuild the model saved at `path` (a run folder or its model.safetensors): a
    SequenceModel, or the model kind its config names (MODEL_KINDS: dsr, chimera).

    The config is checked against the tensors before anything is built: first the sizes
    that need no model, then the shapes of the model built on the meta device (no memory),
    so that a damaged or forged config fails in one line instead of allocating its model."""
    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    tensors, meta = load_tensors(weights)
    if "rnnzoo.config" in meta:
        config = parse_json(meta["rnnzoo.config"], f"{weights}: its rnnzoo.config metadata")
    elif (weights.parent / CONFIG).is_file():
        config = parse_json(read_text(weights.parent / CONFIG), weights.parent / CONFIG)
    else:
        raise FileNotFoundError(f"{weights} has no model config and {weights.parent / CONFIG} "
                                f"does not exist")
    if not isinstance(config, dict):
        raise ValueError(f"{weights}: its model config is a JSON {type(config).__name__}, "
                         f"not an object")
    if "model" in config:
        if config["model"] not in MODEL_KINDS:
            raise ValueError(f"{weights}: its config names model {config['model']!r}; known: "
                             f"{', '.join(sorted(MODEL_KINDS))}")
        build = MODEL_KINDS[config["model"]]
        list_layers()  # as _skeleton: every layer module imported before building on meta
        with torch.device("meta"), _NoFills():  # the shapes first, no memory
            check_fits(build(config, weights), tensors, weights, strict=True)
        model = build(config, weights)
        load_state(model, tensors, weights, strict=True)
        return model.to(device) if device is not None else model
    try:
        skeleton = _skeleton(config, weights)
    except RuntimeError:  # a layer that cannot be built without values: the sizes must do
        _check_sizes(config, tensors, weights)
    else:
        check_fits(skeleton, tensors, weights)
    model = build_saved(config, weights)
    load_state(model, tensors, weights)
    return model.to(device) if device is not None else model
