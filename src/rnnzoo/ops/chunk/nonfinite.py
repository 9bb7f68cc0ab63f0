"""Non-finite steps in the chunkwise forms: kept from earlier outputs, marked in later ones.

A chunkwise form mixes the steps of a chunk through matrix products, and a product with a
masked-out zero still carries a NaN (0 * NaN = NaN): one NaN key at step t would reach every
output of its chunk, before t too, although the recurrence never lets it. So a chunk form
enters each step whose inputs are not all finite as zeros, and afterwards marks what the
recurrence would have made non-finite:

    a non-finite read (q) at step t:                  output t is NaN
    a non-finite write (k, v, gates) at step t:       outputs t, t + 1, ... and the final state are NaN

Inputs are (B, T, H, ...) or (B, T, H); a step is (b, t, h).
"""

from __future__ import annotations

import torch

__all__ = ["clean_steps", "mark_steps"]


def _bad(tensors):
    bad = None
    for t in tensors:
        b = ~torch.isfinite(t)
        b = b.flatten(3).any(-1) if b.dim() > 3 else b
        bad = b if bad is None else bad | b
    return bad


def _zero(t, bad):
    return torch.where(bad.view(*bad.shape, *([1] * (t.dim() - 3))), 0, t)


def clean_steps(reads, writes):
    """reads, writes: sequences of (B, T, H, ...) tensors. Returns (reads, writes) with every
    bad step zeroed, and the (B, T, H) masks (bad_read, bad_write) for `mark_steps`."""
    bad_read, bad_write = _bad(reads), _bad(writes)
    return ([_zero(t, bad_read) for t in reads], [_zero(t, bad_write) for t in writes],
            bad_read, bad_write)


def mark_steps(o, state, bad_read, bad_write):
    """o: (B, T, H, V) from the clean inputs; state: (B, H, ...) final state. NaN where the
    recurrence would have it (see the module docstring)."""
    poisoned = (bad_write.cumsum(1) > 0) | bad_read
    o = torch.where(poisoned[..., None], float("nan"), o)
    any_bad = bad_write.any(1)
    state = torch.where(any_bad.view(*any_bad.shape, *([1] * (state.dim() - 2))), float("nan"), state)
    return o, state
