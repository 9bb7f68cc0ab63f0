"""ops.native.titans_scan's one-node segment (titans_segment, on the tokens' layout with the
gates' logits) against titans_gates then titans_linear over the single chunk, each its own
autograd node, with the sigmoids and transposes in PyTorch: the read, the final M and S and
the gradients of every input (P0 != M0), float64 tight and float32 loose, odd sizes (n < C
of the kernels' tiles, B = 1, one head), 1 and 2 threads."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, outputs_and_grads, threads

from rnnzoo.ops.memory import titans_segment
from rnnzoo.ops.native import titans_scan


def _two_nodes(lib, q, k, v, gates, W0, P0, M0, S0):
    """The segment as two autograd nodes (ops.memory.titans_segment before the fused one)."""
    B, H, n, K = q.shape
    theta, alpha, eta = (t[:, :, None] for t in gates.unbind(0))
    q, k = q.reshape(B, H, 1, n, K), k.reshape(B, H, 1, n, K)
    coef = titans_scan.titans_gates(lib, q, k, 1 - alpha, eta, eta, theta)
    o, Ms, Ss = titans_scan.titans_linear(lib, q, k, -v.reshape(B, H, 1, n, K), *coef, P0, M0,
                                          S0, W0, 1)
    return o.view(B, H, n, K), Ms[:, :, 0], Ss[:, :, 0]


def _inputs(B, H, n, K, dtype):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = (torch.nn.functional.normalize(r(B, n, H, K), dim=-1) for _ in range(2))
    return [t.requires_grad_() for t in (q, k, r(B, n, H, K), r(B, n, 3 * H), 0.5 * r(H, K, K),
                                         0.3 * r(B, H, K, K), 0.3 * r(B, H, K, K),
                                         0.3 * r(B, H, K, K))]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("B,H,n,K", [(2, 3, 5, 4), (1, 1, 3, 33), (3, 2, 16, 32)])
@pytest.mark.parametrize("lr", [1.0, 0.5])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_segment_in_one_node_equals_two(dtype, tol, B, H, n, K, lr, n_threads):
    ins = _inputs(B, H, n, K, dtype)
    q, k, v, g, W0, P0, M0, S0 = ins
    lib = titans_scan.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads(titans_segment(lib, q, k, v, g, W0, P0, M0, S0, lr), ins)
        gates = lambda: (torch.sigmoid(g).view(B, n, 3, H).permute(2, 0, 3, 1)  # noqa: E731
                         * g.new_tensor([lr, 1.0, 1.0]).view(3, 1, 1, 1))
        tr = lambda t: t.transpose(1, 2)  # noqa: E731
        z, M, S = _two_nodes(lib, tr(q), tr(k), tr(v), gates(), W0, P0, M0, S0)
        want = outputs_and_grads((tr(z), M, S), ins)
    names = "z M S dq dk dv dg dW0 dP0 dM0 dS0".split()
    assert_close(got, want, names, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lr", [1.0, 0.5])
def test_gate_sigmoid_against_torch_in_ulps(dtype, lr):
    """The C segment's sigmoid of the gates' logits (small, large, past exp's range) against
    torch.sigmoid, in units in the last place: with one step, unit q = k = v and zero
    memories the read is z = theta = lr sigmoid(g_theta) exactly, and a unit gradient at it
    gives dg_theta = lr s (1 - s). (exp_f's clamp to [-87, 88] would fail -88.5 and -100.)"""
    g0 = torch.tensor([-100.0, -88.5, -87.0, -30.0, -5.0, -1e-8, 0.0, 1e-8, 0.3, 5.0, 17.0,
                       30.0, 88.5, 100.0], dtype=dtype)
    B, H, n, K = g0.numel(), 1, 1, 4
    e1 = torch.zeros(B, n, H, K, dtype=dtype)
    e1[..., 0] = 1
    g = torch.zeros(B, n, 3 * H, dtype=dtype)
    g[:, 0, 0] = g0
    g.requires_grad_()
    zero = torch.zeros(B, H, K, K, dtype=dtype)
    z, _, _ = titans_segment(titans_scan.load(), e1, e1, e1, g, torch.zeros(H, K, K, dtype=dtype),
                             zero, zero, zero, lr)
    z[:, 0, 0, 0].sum().backward()
    # dg against the same formula on the kernel's own sigmoid (torch's rounds sigmoid(17)
    # in float32 up to 1, an ulp off, where 1 - s then cancels to 0)
    s, c = torch.sigmoid(g0), z[:, 0, 0, 0].detach() / lr
    for got, want in ((z[:, 0, 0, 0].detach(), lr * s), (g.grad[:, 0, 0], lr * c * (1 - c))):
        ulp = torch.nextafter(want.abs(), torch.tensor(float("inf"), dtype=dtype)) - want.abs()
        assert ((got - want).abs() <= 4 * ulp).all(), (got, want)
