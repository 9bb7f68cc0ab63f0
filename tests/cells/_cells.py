"""Helpers shared by the cell tests: cells with random (or perturbed) parameters in
float64, a step through the `Cell` protocol, and a small batch of inputs and states."""

import torch

from rnnzoo.registry import CELLS

F64 = torch.float64


def randomised(name, input_size=4, hidden_size=5, scale=0.6, **options):
    torch.manual_seed(0)
    cell = CELLS[name].cls(input_size, hidden_size, **options).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(scale * torch.randn_like(p))
    return cell


def step(cell, x, state):
    return cell.recur(cell.project(x), state)


B, T, D, H = 2, 6, 3, 4


def perturbed(name, seed=0, input_size=D, hidden_size=H, dtype=F64, **options):
    torch.manual_seed(seed)
    cell = CELLS[name].cls(input_size, hidden_size, **options).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return cell


def data(seed=3, n_state=(H,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    s0 = tuple(torch.randn(B, n, generator=g, dtype=torch.float64) for n in n_state)
    return x, s0


def second_derivative_matches(f, inputs, eps=1e-6, rtol=1e-6, seed=0):
    """f(*inputs) -> a tuple of tensors; inputs float64, requiring grad. The derivative of
    S = |g|^2 (g: the gradients of sum_i <out_i, u_i> in the inputs) along a random direction,
    by autograd through create_graph, against S's central difference (first order only)."""
    gen = torch.Generator().manual_seed(seed)
    us = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in f(*inputs)]
    vs = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in inputs]

    def S(ins, create_graph):
        total = sum((o * u).sum() for o, u in zip(f(*ins), us))
        gs = torch.autograd.grad(total, ins, create_graph=create_graph, allow_unused=True)
        return sum(g.square().sum() for g in gs if g is not None)

    hs = torch.autograd.grad(S(inputs, True), inputs, allow_unused=True)
    hv = sum((h * v).sum() for h, v in zip(hs, vs) if h is not None)
    fd = [S([(t.detach() + e * v).requires_grad_() for t, v in zip(inputs, vs)], False)
          for e in (eps, -eps)]
    torch.testing.assert_close(hv, (fd[0] - fd[1]) / (2 * eps), rtol=rtol, atol=1e-9)
