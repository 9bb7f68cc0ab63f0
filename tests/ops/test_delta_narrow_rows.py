"""The narrow shapes the CPU delta paths use (ops.chunk._common): chunk_scan with a W of
fewer rows than U0 (RWKV-7's stacked values read no state) and wy_chunks with a readout of
C / n rows (DeltaProduct reads the state after each token's n-th step), each against the
same recurrence at full width, values and gradients, in float64."""

import torch

from rnnzoo.ops.chunk._common import chunk_scan, wy_chunks


def _rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _grads(outs, leaves, seed=9):
    weights = [_rand(*t.shape, seed=seed + i) for i, t in enumerate(outs)]
    return torch.autograd.grad(sum((t * w).sum() for t, w in zip(outs, weights)), leaves)


def test_chunk_scan_with_fewer_state_reading_rows_equals_zero_padded_w():
    B, H, N, R, Rw, C, K, V = 2, 3, 4, 6, 4, 5, 3, 2
    S, U0, W = _rand(B, H, K, V, seed=0), _rand(B, H, N, R, V, seed=1), 0.3 * _rand(B, H, N, Rw, K, seed=2)
    k_out, decay = 0.3 * _rand(B, H, N, R, K, seed=3), torch.rand(B, H, N, K, 1, dtype=torch.float64)
    q_in, M = _rand(B, H, N, C, K, seed=4), _rand(B, H, N, C, R, seed=5)
    leaves = [t.requires_grad_() for t in (S, U0, W, k_out, decay, q_in, M)]
    narrow = chunk_scan(S, U0, W, k_out, decay, q_in, M, 0.7)
    padded = chunk_scan(S, U0, torch.cat([W, W.new_zeros(B, H, N, R - Rw, K)], -2), k_out, decay,
                        q_in, M, 0.7)
    for a, b in zip(narrow, padded):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(narrow, leaves), _grads(padded, leaves)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_wy_chunks_reading_every_nth_step_equals_the_full_readout_subsampled():
    B, H, N, C, n, K, V = 2, 2, 3, 6, 3, 4, 2
    A, M = 0.2 * _rand(B, H, N, C, C, seed=0), _rand(B, H, N, C, C, seed=1)
    v, w = _rand(B, H, N, C, V, seed=2), 0.3 * _rand(B, H, N, C, K, seed=3)
    q_in, k_out = _rand(B, H, N, C, K, seed=4), 0.3 * _rand(B, H, N, C, K, seed=5)
    decay, S = torch.rand(B, H, N, 1, 1, dtype=torch.float64), _rand(B, H, K, V, seed=6)
    leaves = [t.requires_grad_() for t in (A, M, v, w, q_in, k_out, decay, S)]
    rows = slice(n - 1, None, n)
    o_n, S_n = wy_chunks(A, M[..., rows, :], v, w, q_in[..., rows, :], k_out, decay, S, 0.5,
                         N * C // n)
    o, S_full = wy_chunks(A, M, v, w, q_in, k_out, decay, S, 0.5, N * C)
    o_sub = o[:, n - 1::n]
    torch.testing.assert_close(o_n, o_sub, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S_n, S_full, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads((o_n, S_n), leaves), _grads((o_sub, S_full), leaves)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
