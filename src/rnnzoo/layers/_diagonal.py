"""The recurrence shared by the diagonal layers, h_t = a_t * h_{t-1} + b_t, by mode."""

from __future__ import annotations

import torch

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
