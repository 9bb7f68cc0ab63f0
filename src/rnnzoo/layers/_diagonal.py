"""The masked recurrence shared by every diagonal layer, h_t = a_t * h_{t-1} + b_t.

A diagonal layer is computed by one method,

    _run(x, state, mode, mask=None) -> (y, state)        x: (B, T, d_model)

where mask (B, T, 1) bool marks the valid steps of right-padded sequences (None: every
step). A masked step must leave the state as it is (a = 1, b = 0: `diagonal_recurrence`
does that); `DiagonalLayer` zeroes the outputs there. The whole sequence, the padded
batch and the single step (the reference mode on a sequence of one, as
`RecurrentLayer._step` does) all call `_run`.
"""

from __future__ import annotations

import torch

from rnnzoo.layers.base import MaskedLayer
from rnnzoo.ops.scan import linear_scan, sequential_scan


def diagonal_recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, mode: str,
                        mask: torch.Tensor | None = None, *, reverse: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(all h_t (B, T, *S), last h) by `linear_scan` for mode "scan", else the reference loop.

    a: broadcastable to b (B, T, *S); mask: (B, T, 1) bool or None; padded steps (False)
    become the identity (a = 1, b = 0), so the last h is each sequence's own.
    reverse: h_t = a_t * h_{t+1} + b_t from the end (the last h is then h_0).
    """
    if mask is not None:
        a = torch.where(mask, a, torch.ones((), dtype=a.dtype, device=a.device))
        b = torch.where(mask, b, torch.zeros((), dtype=b.dtype, device=b.device))
    return (linear_scan if mode == "scan" else sequential_scan)(a, b, h0, reverse=reverse)


class DiagonalLayer(MaskedLayer):
    """Base of the diagonal layers: implement `_run(x, state, mode, mask=None)` (see the
    module docstring and `MaskedLayer`), `init_state` and `modes`."""
