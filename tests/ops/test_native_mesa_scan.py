"""ops.native.mesa_scan: MesaNet's readout as a C recurrence (each step's CG on its own H_t,
the backward through the CG lines in reverse) against the PyTorch chunkwise form (under
backend.force("torch")) and the step loop `mesa_recurrent`: outputs, final states and the
gradients of q, k, v, g, beta, lambda and both initial states, with gradients on the final
states too; K = 32 (the kernel's unrolled copy) and odd K, T across the 32-step checkpoints,
the relative and a fixed CG guard, 1 and 2 threads; K = V = 32 (the kernels' copy for
that head size) across a checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter
from _native_check import threads as threads_

from rnnzoo.ops import backend
from rnnzoo.ops.mesa import mesa, mesa_recurrent
from rnnzoo.ops.native import mesa_scan


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, mesa_scan, "mesa")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("T,H,K,V,steps,eps,threads", [(37, 3, 5, 4, 4, None, 1),
                                                       (70, 2, 3, 2, 3, 1e-5, 2),
                                                       (33, 1, 32, 8, 30, None, 1),
                                                       (1, 2, 32, 32, 5, 1e-5, 2),
                                                       (40, 1, 32, 32, 30, None, 1),
                                                       (21, 2, 19, 21, 6, None, 1)])
def test_native_mesa_matches_torch(calls, dtype, tol, T, H, K, V, steps, eps, threads):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    B = 2
    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, H, K), dim=-1)
    v, g = r(B, T, H, V), F.logsigmoid(r(B, T, H) + 2)
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    lamb = torch.rand(H, K, generator=gen, dtype=dtype) + 0.25
    k0 = r(B, H, K, K)
    H0 = k0 @ k0.mT / K + 0.1 * r(B, H, K, K)  # not symmetric: the op reads H^T p
    G0 = r(B, H, K, V)
    ins = [t.requires_grad_() for t in (q, k, v, g, beta, lamb, H0, G0)]
    wo, wH, wG = r(B, T, H, V), r(B, H, K, K), r(B, H, K, V)

    def run(op, **kw):
        o, (HT, GT) = op(q, k, v, g, beta, lamb, initial_state=(H0, G0), cg_steps=steps, eps=eps,
                         **kw)
        loss = (o * wo).sum() + (HT * wH).sum() + (GT * wG).sum()
        return [o, HT, GT, *torch.autograd.grad(loss, ins)]

    names = ["o", "H_T", "G_T", "q", "k", "v", "g", "beta", "lamb", "H0", "G0"]
    with threads_(threads):
        got = run(mesa, chunk_size=8)
    assert calls[0] == 1
    with backend.force("torch"):
        assert_close(got, run(mesa, chunk_size=8), names, tol)
    assert_close(got, run(mesa_recurrent), names, tol)
    assert calls[0] == 1


def test_native_mesa_marks_nonfinite_inputs(calls):
    """A NaN key at step 5 makes outputs from 5 on and the final state NaN (as the loop
    does), a NaN query only its own output; earlier outputs and their gradients stay finite."""
    gen = torch.Generator().manual_seed(2)
    B, T, H, K = 2, 12, 2, 4
    q, k = (F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1) for _ in range(2))
    v, g = torch.randn(B, T, H, K, generator=gen), -torch.rand(B, T, H, generator=gen)
    beta, lamb = torch.rand(B, T, H, generator=gen), torch.ones(H, K)
    k[0, 5, 1, 2] = float("nan")
    q[1, 3, 0, 0] = float("nan")
    v.requires_grad_()
    o, (HT, _) = mesa(q, k, v, g, beta, lamb, cg_steps=4)
    assert calls[0] == 1
    assert o[0, :5].isfinite().all() and o[0, 5:].isnan().all() and HT[0].isnan().all()
    assert o[1, 3].isnan().all() and o[1, :3].isfinite().all() and o[1, 4:].isfinite().all()
    (dv,) = torch.autograd.grad(o[0, :5].sum() + o[1, 4:].sum(), v)
    assert dv.isfinite().all()
