"""ops.block_scan against the plain loop and a dense solve."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.ops.block_scan import block_linear_scan, block_tridiagonal_solve

F64 = torch.float64


def sequential_block_scan(A, b, h0=None, *, reverse=False):
    """The reference loop for `block_linear_scan` (same arguments and result)."""
    A_t, b_t = A.unbind(1), b.unbind(1)
    h = torch.zeros_like(b_t[0]) if h0 is None else h0
    out = [None] * len(b_t)
    for t in (range(len(b_t) - 1, -1, -1) if reverse else range(len(b_t))):
        h = (A_t[t] @ h.unsqueeze(-1)).squeeze(-1) + b_t[t]
        out[t] = h
    return torch.stack(out, 1)


@pytest.mark.parametrize("T", [1, 2, 5, 16, 33])
@pytest.mark.parametrize("reverse", [False, True])
def test_block_linear_scan_equals_loop(T, reverse):
    g = torch.Generator().manual_seed(T)
    A = 0.4 * torch.randn(2, T, 3, 4, 4, generator=g, dtype=F64)
    b = torch.randn(2, T, 3, 4, generator=g, dtype=F64)
    h0 = torch.randn(2, 3, 4, generator=g, dtype=F64)
    for init in (None, h0):
        want = sequential_block_scan(A, b, init, reverse=reverse)
        got = block_linear_scan(A, b, init, reverse=reverse)
        assert (got - want).abs().max().item() < 1e-13 * (1 + want.abs().max().item())


@pytest.mark.parametrize("T", [1, 2, 3, 6, 7, 16])
def test_block_tridiagonal_solve_equals_dense_solve(T):
    g = torch.Generator().manual_seed(T)
    k = 3
    L, U = (torch.randn(2, T, k, k, generator=g, dtype=F64) for _ in range(2))
    D = torch.randn(2, T, k, k, generator=g, dtype=F64) + 6 * torch.eye(k, dtype=F64)
    r = torch.randn(2, T, k, generator=g, dtype=F64)
    M = torch.zeros(2, T * k, T * k, dtype=F64)
    for t in range(T):
        M[:, t * k:(t + 1) * k, t * k:(t + 1) * k] = D[:, t]
        if t > 0:
            M[:, t * k:(t + 1) * k, (t - 1) * k:t * k] = L[:, t]
        if t < T - 1:
            M[:, t * k:(t + 1) * k, (t + 1) * k:(t + 2) * k] = U[:, t]
    want = torch.linalg.solve(M, r.reshape(2, -1)).reshape(2, T, k)
    assert (block_tridiagonal_solve(L, D, U, r) - want).abs().max().item() < 1e-12
