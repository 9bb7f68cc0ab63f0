"""TTT's inner loop written plainly from the paper (Sun et al. 2024, arXiv:2407.04620, section
2.7 and its code): gradients by autograd on the literal loss, one mini-batch after another. The
oracle for ttt_linear and ttt_mlp on the layer's own tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def f_res(P, x):
    """The inner model without residual and norm: dense, GELU (tanh), dense, ... per (b, h)."""
    for i in range(0, len(P), 2):
        if i:
            x = F.gelu(x, approximate="tanh")
        x = torch.einsum("bhi,bhio->bho", x, P[i]) + P[i + 1]
    return x


def paper_loop(q, k, v, lr, tok, init, w, b, eps, norm=True):
    """z_t = f_res(q_t; W_t), W_t = W_0 - tok_t sum_{s <= t} lr_s grad l_s(W_0) in each
    mini-batch of len(tok) steps; l_s(W) = 1/2 |LN(f_res(k_s; W)) - (v_s - k_s)|^2.
    q, k, v (B, T, H, K), lr (B, T, H); init [W_1 (H, I, O), b_1 (H, O), ...]; w, b (H, K).
    Returns z (B, T, H, K) and the weights after the last step."""
    B, T, H, K = q.shape
    M = len(tok)

    def ln(z):
        return F.layer_norm(z, (K,), eps=eps) * w + b if norm else z

    P0 = [p.expand(B, *p.shape).clone() for p in init]
    zs = []
    for start in range(0, T, M):
        sums = [torch.zeros_like(p) for p in P0]
        for t in range(start, min(start + M, T)):
            leaves = [p.detach().requires_grad_() for p in P0]
            with torch.enable_grad():
                loss = 0.5 * ((ln(f_res(leaves, k[:, t])) - (v[:, t] - k[:, t])) ** 2).sum()
                grads = torch.autograd.grad(loss, leaves)
            rate = lr[:, t]
            sums = [s + g * rate.view(B, H, *[1] * (g.dim() - 2)) for s, g in zip(sums, grads)]
            Pt = [p - tok[t - start] * s for p, s in zip(P0, sums)]
            zs.append(f_res(Pt, q[:, t]))
        P0 = Pt
    return torch.stack(zs, 1), P0
