"""ops.mesa's CG stopping tolerance (`cg_tol`, MesaNet's default 1e-5): a row's iterations stop
once |r_i| <= tol |b|, the others go on; the batched, masked solve equals each row's own
truncated solve (values and gradients), in the PyTorch loop, the chunk form and the C kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.ops import backend
from rnnzoo.ops.mesa import conjugate_gradient, mesa, mesa_recurrent


def _system(K=6, rows=3, seed=0):
    """Rows of SPD systems from well to badly conditioned (they need different step counts)."""
    gen = torch.Generator().manual_seed(seed)
    A = []
    for i in range(rows):
        U, _ = torch.linalg.qr(torch.randn(K, K, generator=gen, dtype=torch.float64))
        A.append(U @ torch.diag(torch.logspace(0, 1.5 * i, K, dtype=torch.float64)) @ U.T)
    A = torch.stack(A)
    b = torch.randn(rows, K, generator=gen, dtype=torch.float64)
    return A, b


def test_each_row_stops_at_its_own_tolerance():
    A, b = _system()
    b.requires_grad_()
    calls = []

    def on(M):
        def apply(p):
            calls.append(1)
            return (M @ p[..., None])[..., 0]
        return apply

    zero = torch.zeros(b.shape[-1], dtype=b.dtype)
    x = conjugate_gradient(on(A), b, zero, 40, tol=1e-6)
    assert len(calls) < 40  # stopped once every row had converged
    need = []
    for i in range(len(b)):  # row i alone: it stops after n_i steps, and is n_i plain steps
        calls.clear()
        xi = conjugate_gradient(on(A[i]), b[i:i + 1], zero, 40, tol=1e-6)
        need.append(len(calls))
        assert (b[i] - A[i] @ xi[0].detach()).norm() <= 1e-5 * b[i].norm()
        assert torch.allclose(xi, conjugate_gradient(on(A[i]), b[i:i + 1], zero, need[-1]),
                              rtol=0, atol=1e-13)
        assert torch.allclose(x[i], xi[0], rtol=0, atol=1e-13)
        gi, = torch.autograd.grad(xi.sum(), b)
        g, = torch.autograd.grad(x[i].sum(), b, retain_graph=True)
        assert torch.allclose(g, gi, rtol=0, atol=1e-12)
    assert len(set(need)) > 1  # the rows did stop at different iterations
    assert torch.equal(conjugate_gradient(on(A), b, zero, 7, tol=0.0),
                       conjugate_gradient(on(A), b, zero, 7))


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_stopped_solves_agree_across_modes(dtype, atol):
    """The C kernel (auto on the CPU), the chunk form and the step loop with cg_tol=1e-4: the
    same outputs, final states and input gradients; fewer steps than cg_tol=0 changes them."""
    gen = torch.Generator().manual_seed(1)
    B, T, H, K, V = 2, 40, 2, 32, 8
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, H, K), dim=-1)
    v, g = r(B, T, H, V), F.logsigmoid(r(B, T, H) + 2)
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    lamb = torch.rand(H, K, generator=gen, dtype=dtype) + 0.25
    ins = [t.requires_grad_() for t in (q, k, v, g, beta, lamb)]
    w = r(B, T, H, V)

    def run(op, tol, **kw):
        o, (HT, GT) = op(q, k, v, g, beta, lamb, cg_steps=30, cg_tol=tol, **kw)
        return [o, HT, GT, *torch.autograd.grad((o * w).sum() + HT.sum() + GT.sum(), ins)]

    ref = run(mesa_recurrent, 1e-4)
    with backend.force("torch"):
        chunk = run(mesa, 1e-4, chunk_size=8)
    for got in (run(mesa, 1e-4, chunk_size=8), chunk):
        for a, b in zip(got, ref):
            assert (a - b).abs().max() <= atol * (1 + b.abs().max())
    full = run(mesa_recurrent, 0.0)
    assert (full[0] - ref[0]).abs().max() > 1e-6


def test_layer_option():
    layer = rnnzoo.create("mesanet", d_model=8, num_heads=2)
    assert layer.cg_tol == 1e-5 and "cg_tol=1e-05" in repr(layer)
    assert rnnzoo.create("mesanet", d_model=8, cg_tol=0).cg_tol == 0
    with pytest.raises(ValueError, match="cg_tol"):
        rnnzoo.create("mesanet", d_model=8, cg_tol=-1e-3)
