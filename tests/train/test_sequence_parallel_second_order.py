"""Sequence parallelism under create_graph=True (docs/design.md, higher-order gradients):
the exchange's `twice` (ops/sequence_parallel.py, _Exchange) runs the all-gather and the
gradient's all-reduce as differentiable all-reduces, so that a second derivative across
2 and 3 gloo processes equals one process's. The op around the exchange: LASP-2 over the
gated linear attention's reference loop (plain autograd: only the exchange is under test),
and the GateLoop-style prefix sum; the quantity: F = sum over the slice inputs of
|d L / d input|^2, L a random functional of the outputs and the final state, and the
gradient of F in every input (the initial state's summed over the ranks)."""

from __future__ import annotations

import pytest
import torch
from _gloo import spawn


def _worker(rank, world, errors):
    import torch.distributed as td

    from rnnzoo.ops import sequence_parallel as sp
    from rnnzoo.ops.chunk.linear import gated_linear_attention_recurrent as gla
    g = torch.Generator().manual_seed(0)
    B, T, H, K, V = 1, 2 * world + 1, 2, 3, 2  # uneven slices
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v, S0 = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), r(B, H, K, V)
    gate = -torch.rand(B, T, H, generator=g, dtype=torch.float64)
    w, ws = r(B, T, H, V), r(B, H, K, V)
    u = [r(*t.shape) for t in (q, k, v, gate, S0)]  # the direction

    def F(q, k, v, gate, S0, parallel):
        if parallel:
            with sp.scope():
                o, S = sp.lasp2(gla, q, k, v, gate, initial_state=S0)
                _, total = sp.prefix_sum(gate.sum(1))  # a second exchange
            L = (o * sp.split(w)).sum() + ((S * ws).sum() + (total ** 2).sum()) / world
        else:
            o, S = gla(q, k, v, gate, initial_state=S0)
            L = (o * w).sum() + (S * ws).sum() + (gate.sum(1) ** 2).sum()
        gs = torch.autograd.grad(L, (q, k, v, gate), create_graph=True)
        return sum(t.square().sum() for t in gs)

    full = [t.clone().requires_grad_() for t in (q, k, v, gate, S0)]
    h_ref = torch.autograd.grad(F(*full, False), full)
    mine = [sp.split(t).clone().requires_grad_() for t in (q, k, v, gate)]
    mine.append(S0.clone().requires_grad_())
    h = [t.contiguous() for t in torch.autograd.grad(F(*mine, True), mine)]
    td.all_reduce(h[4])  # the initial state: each rank holds its part of the sum
    err = max(*((a - sp.split(b)).abs().max().item() for a, b in zip(h[:4], h_ref[:4])),
              (h[4] - h_ref[4]).abs().max().item())
    scale = max(t.abs().max().item() for t in h_ref)
    # the same along a direction, summed over the ranks: what an HVP is
    hv = torch.stack([sum((a * sp.split(d)).sum() for a, d in zip(h[:4], u[:4]))])
    td.all_reduce(hv)
    hv = hv.item() + (h[4] * u[4]).sum().item()
    hv_ref = sum((a * d).sum() for a, d in zip(h_ref, u)).item()
    print(f"second order rank {rank}/{world}: max error {err:.3g} of {scale:.3g}; "
          f"hv {hv:.12g} vs {hv_ref:.12g}", flush=True)
    if not (err < 1e-10 * scale and abs(hv - hv_ref) < 1e-10 * abs(hv_ref)):
        errors.put(f"rank {rank}/{world}: max error {err:.3g} of {scale:.3g}, "
                   f"hv {hv} vs {hv_ref}")


@pytest.mark.parametrize("world", [2, 3])
def test_second_derivative_across_processes_equals_one_process(world):
    found = spawn(_worker, world)
    assert not found, "\n".join(found)
