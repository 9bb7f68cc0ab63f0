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
