"""RMSNorm over groups of channels times its weight, times a gate, fused in C (gated_norm.c's
rms_gate, the kernel of mamba2's gate-then-norm head too, here with the norm first):
the output heads of lightnet, lightning_attention and gla (a gate), gsa and hgrn2 (none).

    rms_gate:  out = RMSNorm_groups(o) w act(z),   act: None, "silu" or "sigmoid"

o, z: (..., W) of one float dtype (float32 or float64) on the CPU (`ops.backend.use_native`);
w: (W,) or any shape of W entries (HeadNorm's (H, n)); groups of n contiguous channels.
Differentiable in o, z and w; threads split the rows, each writing its own slice of w's
gradient, summed after. `torch_rms_gate` is the same in PyTorch (the fallback).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.ops import backend
from rnnzoo.ops.native import gated_norm


def load():
    """The library of `ops.native.gated_norm` (its rms_gate kernel, the norm then the gate)."""
    return gated_norm.load()


def torch_rms_gate(o, w, n, eps, z=None, act=None):
    """The PyTorch form of `rms_gate`."""
    y = F.rms_norm(o.unflatten(-1, (-1, n)), (n,), eps=eps).flatten(-2) * w.reshape(-1)
    if act is None:
        return y
    return y * (F.silu(z) if act == "silu" else torch.sigmoid(z))


def rms_gate(o, w, n, eps, z=None, act=None):
    """RMSNorm over groups of n channels of o (..., W) times w (W entries), times act(z) for
    act "silu" or "sigmoid" (z (..., W)), or nothing (act None). In C on the CPU in
    float32/float64 (`backend.use_native`, w in o's dtype), else `torch_rms_gate`."""
    lib = load() if backend.use_native(o, z, w) else None
    if lib is None:
        return torch_rms_gate(o, w, n, eps, z, act)
    return gated_norm.rms_norm_gate(lib, o, None, None, z, w, n, eps, act, pre=False)
