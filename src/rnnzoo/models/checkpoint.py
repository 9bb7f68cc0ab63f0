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
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import torch

from rnnzoo.io import atomic_write_bytes, atomic_write_text

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


def from_safetensors_bytes(buf: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse safetensors bytes -> (name -> tensor, metadata)."""
    _check_little_endian()
    if len(buf) < 8:
        raise ValueError(f"not a safetensors file: {len(buf)} bytes, the header alone needs 8")
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise ValueError(f"not a safetensors file: header length {n} exceeds the file size")
    header = json.loads(buf[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    body = memoryview(buf)[8 + n:]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _FROM_NAME.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name!r} has unsupported safetensors dtype {info['dtype']!r}")
        if not 0 <= begin <= end <= len(body):
            raise ValueError(f"tensor {name!r} has data offsets {begin, end} outside the file")
        raw = bytearray(body[begin:end])
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        t = flat.view(dtype).reshape(info["shape"])
        tensors[name] = t
    for name in json.loads(meta.get("rnnzoo.complex", "[]")):
        tensors[name] = torch.view_as_complex(tensors[name])
    return tensors, meta


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    atomic_write_bytes(path, to_safetensors_bytes(tensors, metadata))


def load_tensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    return from_safetensors_bytes(path.read_bytes())


def save(model, directory, extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `directory`/model.safetensors (+ extra tensors) and config.json; returns the dir."""
    directory = Path(directory)
    config = model.config.to_json()
    tensors = dict(model.state_dict())
    tensors.update(extra_tensors or {})
    save_tensors(directory / WEIGHTS, tensors, {"rnnzoo.config": config})
    atomic_write_text(directory / CONFIG, json.dumps(json.loads(config), indent=2) + "\n")
    return directory


def load(path, device=None):
    """Rebuild the model saved at `path` (a run folder or its model.safetensors)."""
    from rnnzoo.models.stack import ModelConfig, SequenceModel

    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    tensors, meta = load_tensors(weights)
    if "rnnzoo.config" in meta:
        config = json.loads(meta["rnnzoo.config"])
    elif (weights.parent / CONFIG).is_file():
        config = json.loads((weights.parent / CONFIG).read_text())
    else:
        raise FileNotFoundError(f"{weights} has no model config and {weights.parent / CONFIG} "
                                f"does not exist")
    model = SequenceModel(ModelConfig.from_dict(config))
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in tensors.items() if k in own})
    return model.to(device) if device is not None else model
