"""Non-finite inputs in the parallel forms of a recurrence: time never runs backwards.

A chunkwise or parallel form mixes the steps of a chunk through matrix products,
o_i = sum_j A_ij v_j with A_ij = 0 for j > i, or through an FFT. A NaN or inf at a later
step j then reaches the earlier output i as 0 * NaN = NaN, which the step-by-step
reference never does. Masks alone cannot help: the product itself multiplies by the
zero. So such a form runs on finite inputs and marks its outputs afterwards:

    finite, marks = finite_inputs(read=(q,), write=(k, v, g))   # non-finite entries -> 0
    o, S = <the parallel form on finite>
    o, S = poison(o, marks.outputs), poison(S, marks.state)     # NaN where marked

`read` tensors are used at their own step only (a query): a non-finite entry at step t
marks output t. `write` tensors enter the state (keys, values, gates): a non-finite entry
at step t marks every output of that sequence from t on, and its final state. Every
output before the first non-finite step is exactly what the clean input gives. All on
the device, no value read back to the host.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rnnzoo.ops import first_order

__all__ = ["Marks", "clean_inputs", "finite", "finite_inputs", "marked", "poison"]


class Marks(NamedTuple):
    """Where a parallel form's results are NaN: outputs (B, T) bool, final state (B,) bool."""

    outputs: torch.Tensor
    state: torch.Tensor


def finite(t: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(t with non-finite entries set to 0, (B, T) bool: the steps along `dim` that hold a
    non-finite entry). t: (B, ..., T, ...) with T at `dim`.

    A step is found by its sum (NaN or inf stays in a sum, and one reduction is cheaper than
    an elementwise test); a step of finite entries whose sum overflows the dtype counts too.
    """
    dims = [d for d in range(1, t.dim()) if d != dim % t.dim()]
    acc = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None
    total = t.sum(dims, dtype=acc) if dims else t
    return _Zeroed.apply(t), ~torch.isfinite(total)


class _Zeroed(first_order.Transformable):
    """nan_to_num(t, 0, 0, 0) whose gradient passes straight through: exact at finite
    entries, and a non-finite entry has no derivative to keep (torch's own backward
    recomputes isfinite, several full passes)."""

    @staticmethod
    def forward(ctx, t):
        return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)

    @staticmethod
    def backward(ctx, grad):
        return grad


def finite_inputs(read=(), write=()):
    """-> (finite read tensors, finite write tensors, Marks). Each tensor is (B, T, ...) or
    None (passed through); read and write are sequences of them."""
    read, write = list(read), list(write)
    first = next(t for t in read + write if t is not None)
    B, T = first.shape[:2]
    out_bad = torch.zeros(B, T, dtype=torch.bool, device=first.device)
    write_bad = out_bad
    for group, is_write in ((read, False), (write, True)):
        for i, t in enumerate(group):
            if t is None:
                continue
            group[i], bad = finite(t)
            if is_write:
                write_bad = write_bad | bad
            else:
                out_bad = out_bad | bad
    out_bad = out_bad | (write_bad.cumsum(1) > 0)
    return read, write, Marks(out_bad, write_bad.any(1))


def poison(t, mask: torch.Tensor):
    """t (a tensor (B, ...) or a tuple of them) with NaN where mask ((B,) or (B, T) bool,
    broadcast over t's trailing dims) is True: t + (NaN or 0), one cheap broadcast add."""
    if isinstance(t, tuple):
        return tuple(poison(s, mask) for s in t)
    bump = torch.where(mask, float("nan"), 0.0).to(t.dtype)
    return t + bump.view(*mask.shape, *[1] * (t.dim() - mask.dim()))


def clean_inputs(read, write):
    """finite_inputs(read, write) -> (read, write, marks), without its copies when every
    tensor sums to a finite number (then every entry is finite, and finite_inputs would
    change nothing): marks None. One host read for all the tensors: for the native kernels
    (ops.backend.use_native, where reading on the host is free). A sum that overflows only
    takes the marking path, which is exact either way."""
    ts = [t for t in (*read, *write) if t is not None]
    with torch.no_grad():
        sums = torch.stack([t.sum(dtype=torch.float32) for t in ts])
    if bool(torch.isfinite(sums).all()):
        return list(read), list(write), None
    return finite_inputs(read, write)


def marked(o, S, marks):
    """(o, S) with finite_inputs' NaN marks applied (none when marks is None)."""
    if marks is None:
        return o, S
    return poison(o, marks.outputs), poison(S, marks.state)
