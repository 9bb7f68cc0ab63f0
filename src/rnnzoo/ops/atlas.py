"""ATLAS's memory update (Behrouz et al. 2025, "ATLAS: Learning to Optimally Memorize the
Context at Test Time", arXiv:2505.23735, sections 3-5): the Omega rule, polynomial feature
maps and the Muon (Newton-Schulz) step, on the memory engine of ops/memory.py (its inner
models, gradients, chunk-start gradient point and state layout are Titans').

The Omega rule fits the memory to the last `window` = c tokens, each weighed by its gate
gamma_i, instead of the current token alone; with g_t the gradient of that window loss at
the weights M' the current chunk (of C steps) started from,

    g_t = grad sum_{i = t-c+1}^{t} gamma_i 1/2 |M'(phi(k_i)) - v_i|^2
    S_t = eta_t S_t-1 - theta_t g_t,            M_t = (1 - alpha_t) M_t-1 + S_t              (OmegaNet)
    S_t = eta_t S_t-1 - g_t,                     M_t = (1 - alpha_t) M_t-1 + theta_t NS(S_t)  (Atlas, muon)
    z_t = M_t(phi(q_t))

phi is the identity or a polynomial feature map of ops/feature_maps.py ("taylor": [1, x,
x x^T / sqrt 2], "square": x x^T), so the memory's input is F wide. NS is Muon's quintic
Newton-Schulz iteration (Jordan et al. 2024), X <- a X + (b A + c A^2) X with A = X X^T,
(a, b, c) = (3.4445, -4.7750, 2.0315), from X = S / |S|_F: it pushes every singular value
of S towards 1 (approximately orthogonal), keeping its singular vectors. The memory is
weight-only (one dense layer or the GELU MLP). With c = 1 and no muon the rule is Titans'
(`titans_step`) on the same tensors. State: (M' per weight, M, S, n, and the last c - 1
tokens' k, v, gamma). `atlas_sequential` is the reference; the muon step is nonlinear in S,
so there is no exact chunkwise form of it.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from rnnzoo.ops.feature_maps import feature_size, features
from rnnzoo.ops.memory import _dense, _grads, _outer, _titans_roll

__all__ = ["newton_schulz", "atlas_init_state", "atlas_step", "atlas_sequential"]

MUON = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration on the last two dims of G (..., I, O): an
    approximately orthogonal matrix with G's singular vectors."""
    a, b, c = MUON
    wide = G.shape[-2] > G.shape[-1]
    X = G.transpose(-1, -2) if wide else G              # iterate on the short side
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.transpose(-1, -2)
        X = a * X + (b * A + c * A @ A) @ X
    return X.transpose(-1, -2) if wide else X


def phi(x, feature_map):
    return x if feature_map is None else features(x, feature_map)


def atlas_init_state(kind, B, H, K, window, feature_map=None, device=None,
                     dtype=torch.float32):
    """Zeros: (M'_1.., M_1.., S_1.., n) and, for a window c > 1, the last c - 1 tokens'
    (k_buf (B, c-1, H, K), v_buf, gamma_buf (B, c-1, H))."""
    F_ = K if feature_map is None else feature_size(feature_map, K)
    widths = [F_, K] if kind == "linear" else [F_, 4 * K, K]
    W = [torch.zeros(B, H, i, o, device=device, dtype=dtype)
         for i, o in zip(widths[:-1], widths[1:])]
    buf = torch.zeros(B, window - 1, H, K, device=device, dtype=dtype)
    bufs = (buf, buf.clone(), buf[..., 0].clone()) if window > 1 else ()
    return (*W, *[w.clone() for w in W], *[w.clone() for w in W],
            torch.zeros(B, device=device, dtype=dtype), *bufs)


def _with_biases(Ws):
    """Weight-only layers as the (W, b) list of ops.memory's engine (zero biases)."""
    return [t for W in Ws for t in (W, torch.zeros_like(W[..., 0, :]))]


def atlas_step(kind, q_t, k_t, v_t, theta_t, alpha_t, eta_t, gamma_t, C, init, state,
               feature_map=None, muon=False, ns_steps=5):
    """One step. q_t, k_t, v_t (B, H, K); theta_t, alpha_t, eta_t, gamma_t (B, H); C the chunk
    size; init the learned initial weights [(H, I, O), ...]. Returns (z_t (B, H, K), state)."""
    L = len(init)
    Pg, Mc, S = list(state[:L]), list(state[L:2 * L]), list(state[2 * L:3 * L])
    n0, bufs = state[3 * L], state[3 * L + 1:]
    kb, vb, gb = bufs if bufs else (t[:, None][:, :0] for t in (k_t, v_t, gamma_t))
    Pg, n = _titans_roll(Pg, Mc, n0, C)
    keys = torch.cat([kb, k_t[:, None]], 1).transpose(1, 2)             # (B, H, c, K)
    vals = torch.cat([vb, v_t[:, None]], 1).transpose(1, 2)
    gam = torch.cat([gb, gamma_t[:, None]], 1).transpose(1, 2)[..., None]
    P = _with_biases([w0.to(p.dtype) + p for w0, p in zip(init, Pg)])
    Xs, Gs = _grads(kind, P, phi(keys, feature_map), vals, None, None, 0.0, False,
                    residual=False)
    g = _outer(Xs, [G * gam for G in Gs])[::2]                         # the window's gradient
    e, a, th = (t[..., None, None] for t in (eta_t, 1 - alpha_t, theta_t))
    if muon:
        S = [e * s - gr for s, gr in zip(S, g)]
        Mc = [a * m + th * newton_schulz(s, ns_steps) for m, s in zip(Mc, S)]
    else:
        S = [e * s - th * gr for s, gr in zip(S, g)]
        Mc = [a * m + s for m, s in zip(Mc, S)]
    z = _dense([w0.to(m.dtype) + m for w0, m in zip(init, Mc)], phi(q_t, feature_map))
    shift = lambda buf, new: torch.cat([buf, new[:, None]], 1)[:, 1:]  # noqa: E731
    bufs = (shift(kb, k_t), shift(vb, v_t), shift(gb, gamma_t)) if bufs else ()
    return z, (*Pg, *Mc, *S, (n + 1).to(n0.dtype), *bufs)


SEGMENT = 16  # steps per checkpointed segment of atlas_sequential


def _steps(kind, q, k, v, theta, alpha, eta, gamma, C, init, state, feature_map, muon,
           ns_steps):
    zs = []
    for t in range(q.shape[1]):
        z, state = atlas_step(kind, q[:, t], k[:, t], v[:, t], theta[:, t], alpha[:, t],
                              eta[:, t], gamma[:, t], C, init, state, feature_map, muon,
                              ns_steps)
        zs.append(z)
    return torch.stack(zs, 1), state


def atlas_sequential(kind, q, k, v, theta, alpha, eta, gamma, C, init, state, feature_map=None,
                     muon=False, ns_steps=5):
    """The reference: atlas_step over time. q, k, v (B, T, H, K); gates (B, T, H).

    Under autograd the steps run in segments of SEGMENT under activation checkpointing: the
    graph keeps the state entering each segment and recomputes the segment in backward (the
    same values and gradients). Kept whole, it holds every step's weights, window products
    and Newton-Schulz iterates: 55 MB a step at B=16, d_model 128 (3507 MB saved at T=64,
    and at T=512 a process killed at 23 GB); in segments 12 MB at T=64, plus one segment
    recomputed at a time in backward."""
    T = q.shape[1]
    if T <= SEGMENT or not torch.is_grad_enabled():
        return _steps(kind, q, k, v, theta, alpha, eta, gamma, C, init, state, feature_map,
                      muon, ns_steps)
    zs = []
    for t0 in range(0, T, SEGMENT):
        part = [x[:, t0:t0 + SEGMENT] for x in (q, k, v, theta, alpha, eta, gamma)]
        z, state = checkpoint(_steps, kind, *part, C, init, state, feature_map, muon,
                              ns_steps, use_reentrant=False)
        zs.append(z)
    return torch.cat(zs, 1), state
