"""Miras' memory update written plainly from the paper (Behrouz et al. 2025, arXiv:2504.13173,
section 5.1): autograd gradients of the literal attentional-bias losses at the chunk start,
the retention's map applied explicitly. The oracle for moneta, yaad and memora."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.ops.memory import miras_chunked, miras_sequential


def memory(Ws, x):
    """Weight-only dense layers with GELU (tanh) between, per (b, h): x (B, H, I)."""
    for i, W in enumerate(Ws):
        if i:
            x = F.gelu(x, approximate="tanh")
        x = torch.einsum("bhi,bhio->bho", x, W)
    return x


LOSSES = {
    "l2": lambda e, delta, p: 0.5 * (e ** 2).sum(-1),
    "lp": lambda e, delta, p: (e.abs() ** p).sum(-1),
    "huber": lambda e, delta, p: torch.where(e.norm(dim=-1) <= delta, 0.5 * (e ** 2).sum(-1),
                                             delta * e.abs().sum(-1)),
}
MAPS = {
    "l2": lambda U, q: U,
    "lq": lambda U, q: U / (U.abs() ** q).sum((-2, -1), keepdim=True) ** ((q - 2) / q),
    "kl": lambda U, q: U.exp() / U.exp().sum(-1, keepdim=True),
}


def miras_loop(q, k, v, eta, alpha, delta, C, init, loss, retention, p=3.0, qn=4.0):
    """z_t = M(q_t; phi(U_init + U_t)), U_t = alpha_t U_t-1 - eta_t grad_W loss(W'; k_t, v_t),
    W' = phi(U_init + U) at the chunk's start. q, k, v (B, T, H, K); gates (B, T, H)."""
    B, T, H, K = q.shape
    U = [torch.zeros(B, *u.shape, dtype=q.dtype) for u in init]
    phi = lambda U: [MAPS[retention](u0 + u, qn) for u0, u in zip(init, U)]  # noqa: E731
    zs = []
    for t in range(T):
        if t % C == 0:
            Wg = [w.detach().requires_grad_() for w in phi(U)]
        with torch.enable_grad():
            lt = LOSSES[loss](memory(Wg, k[:, t]) - v[:, t], delta[:, t], p).sum()
            grads = torch.autograd.grad(lt, Wg)
        U = [alpha[:, t, :, None, None] * u - eta[:, t, :, None, None] * g
             for u, g in zip(U, grads)]
        zs.append(memory(phi(U), q[:, t]))
    return torch.stack(zs, 1), U


OPS = [miras_sequential, miras_chunked]


def setup(name, **options):
    """A perturbed layer, its op tensors on a (2, 11) input, its U_init and zero memory."""
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=8, num_heads=2, head_dim=4, chunk_size=4,
                          **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    *mem, conv = layer.init_state(2, dtype=torch.float64)
    q, k, v, eta, alpha, delta, _ = layer.op_inputs(x, conv)
    init = [p.detach() for p in layer.memory]
    return layer, (q, k, v, eta, alpha, delta), init, tuple(mem)


