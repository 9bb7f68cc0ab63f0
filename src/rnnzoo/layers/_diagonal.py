"""The recurrence shared by the diagonal layers, h_t = a_t * h_{t-1} + b_t, by mode."""

from __future__ import annotations

import torch

from rnnzoo.layers.base import RecurrentLayer, valid_mask
from rnnzoo.ops.scan import linear_scan, sequential_scan


def diagonal_recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, mode: str,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(all h_t (B, T, *S), last h) by `linear_scan` for mode "scan", else the reference loop.

    a: broadcastable to b (B, T, *S); mask: (B, T, 1) bool or None; padded steps (False)
    become the identity (a = 1, b = 0), so the last h is each sequence's own.
    """
    if mask is not None:
        a = torch.where(mask, a, torch.ones((), dtype=a.dtype, device=a.device))
        b = torch.where(mask, b, torch.zeros((), dtype=b.dtype, device=b.device))
    return (linear_scan if mode == "scan" else sequential_scan)(a, b, h0)


class MaskedRunLayer(RecurrentLayer):
    """A layer computed by one method, `_run(x, state, mode, mask=None) -> (y, state)`, where
    mask (B, T, 1) bool marks the valid steps; forward, lengths and step all call it."""

    def _forward(self, x, state, mode):
        return self._run(x, state, mode)

    def _forward_lengths(self, x, state, mode, lengths):
        return self._run(x, state, mode, valid_mask(lengths, x.shape[1]).unsqueeze(-1))

    def _step(self, x_t, state):
        y, state = self._run(x_t.unsqueeze(1), state, "sequential")
        return y[:, 0], state
