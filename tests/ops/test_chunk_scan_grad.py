"""ops.chunk._common.chunk_scan (an autograd Function with its own backward loop) against
the same recurrence written as a plain loop that autograd differentiates, in float64."""

import pytest
import torch

from rnnzoo.ops.chunk._common import chunk_scan


def loop(S, U0, W, k_out, decay, q_in, M, scale):
    out = []
    for n in range(U0.shape[2]):
        u = U0[:, :, n] - W[:, :, n] @ S
        out.append(scale * (q_in[:, :, n] @ S + M[:, :, n] @ u))
        S = (S if decay is None else decay[:, :, n] * S) + k_out[:, :, n].transpose(-1, -2) @ u
    return torch.stack(out, 2), S


def inputs(decay_shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, H, N, C, K, V = 2, 3, 4, 5, 3, 2
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    decay = None if decay_shape is None else torch.rand(B, H, N, *decay_shape, generator=g,
                                                        dtype=torch.float64)
    args = [r(B, H, K, V), r(B, H, N, C, V), 0.3 * r(B, H, N, C, K), 0.3 * r(B, H, N, C, K),
            decay, r(B, H, N, C, K), r(B, H, N, C, C)]
    return [None if a is None else a.requires_grad_() for a in args]


@pytest.mark.parametrize("decay_shape", [None, (1, 1), (3, 1)], ids=["none", "scalar", "vector"])
def test_chunk_scan_equals_loop_and_its_gradients(decay_shape):
    args = inputs(decay_shape)
    o, S = chunk_scan(*args, 0.7)
    o_ref, S_ref = loop(*args, 0.7)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S, S_ref, rtol=1e-12, atol=1e-12)
    leaves = [a for a in args if a is not None]
    wo, wS = torch.randn_like(o), torch.randn_like(S)
    got = torch.autograd.grad((o * wo).sum() + (S * wS).sum(), leaves)
    want = torch.autograd.grad((o_ref * wo).sum() + (S_ref * wS).sum(), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunk_scan_gradcheck():
    args = inputs((3, 1), seed=1)
    assert torch.autograd.gradcheck(lambda *a: chunk_scan(*a, 0.5), args)


def test_chunk_scan_only_the_state_used():
    """A loss on the final state alone (the output's gradient comes in as zeros)."""
    args = inputs((1, 1), seed=2)
    leaves = [a for a in args if a is not None]
    got = torch.autograd.grad(chunk_scan(*args, 1.0)[1].sum(), leaves, allow_unused=True)
    want = torch.autograd.grad(loop(*args, 1.0)[1].sum(), leaves, allow_unused=True)
    for a, b, leaf in zip(got, want, leaves):
        zero = torch.zeros_like(leaf)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b,
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("V", [2, 6], ids=["solve", "inverse"])  # R = V + K against C = 5
def test_wy_chunks_equals_autograd_form_and_reads_only_the_causal_parts(V):
    """wy_chunks (one Function: solve and scan) against the same maths through autograd, on
    unmasked A and M: only s < t of A and s <= t of M are read, so their other entries get
    zero gradient, and the values equal those of the masked inputs."""
    from rnnzoo.ops.chunk._common import from_chunks, wy_chunks
    g = torch.Generator().manual_seed(3)
    B, H, N, C, K, T = 2, 2, 3, 5, 3, 13
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    args = [0.3 * r(B, H, N, C, C), r(B, H, N, C, C), r(B, H, N, C, V), 0.3 * r(B, H, N, C, K),
            r(B, H, N, C, K), 0.3 * r(B, H, N, C, K),
            torch.rand(B, H, N, K, 1, generator=g, dtype=torch.float64), r(B, H, K, V)]
    args = [a.requires_grad_() for a in args]
    A, M, v, w, q_in, k_out, dec, S = args
    o, S1 = wy_chunks(*args[:7], S, 0.6, T)
    L = torch.eye(C, dtype=A.dtype) + A.tril(-1)
    U0, W = torch.linalg.solve_triangular(L, torch.cat([v, w], -1), upper=False).split([V, K], -1)
    o_ref, S_ref = loop(S, U0, W, k_out, dec, q_in, M.tril(), 0.6)
    o_ref = from_chunks(o_ref, T)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S1, S_ref, rtol=1e-12, atol=1e-12)
    wo, wS = torch.randn_like(o), torch.randn_like(S1)
    got = torch.autograd.grad((o * wo).sum() + (S1 * wS).sum(), args)
    want = torch.autograd.grad((o_ref * wo).sum() + (S_ref * wS).sum(), args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert got[0].triu().abs().max() == 0 and got[1].triu(1).abs().max() == 0
