"""The momentum delta rule: the delta rule's online regression step taken by heavy-ball SGD.

Momentum DeltaNet (fla-core's `momentum_delta_rule`): per head, with the loss
l_t(S) = |S^T p_t - v_t|^2 / 2 read at p_t and written at k_t, a momentum M and a state S,

    M_t = mu_t M_{t-1} + eta_t k_t (S_{t-1}^T p_t - v_t)^T        (the gradient, with momentum)
    S_t = alpha_t S_{t-1} - beta_t M_t,                           o_t = scale S_t^T q_t

S, M: (K, V). With mu = 0 (no momentum) it is the scalar-plus-low-rank delta rule
S_t = (alpha_t I - beta_t eta_t k_t p_t^T) S_{t-1} + beta_t eta_t k_t v_t^T (ops.erase_delta,
before_decay). Gates enter in log space for alpha and mu. All tensors are (B, T, H, D);
states accumulate in float32 (float64 for float64 input).
"""

from __future__ import annotations

import torch

from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops.chunk._common import check_delta

__all__ = ["momentum_delta_recurrent", "momentum_delta_step"]


def momentum_delta_step(q_t, k_t, v_t, p_t, log_alpha_t, log_mu_t, beta_t, eta_t, S, M, scale):
    """One step. q_t, k_t, p_t: (B, H, K); v_t: (B, H, V); the gates: (B, H); S, M: (B, H, K, V).
    Returns (o_t (B, H, V), S_t, M_t)."""
    err = torch.einsum("bhk,bhkv->bhv", p_t, S) - v_t
    M = log_mu_t.exp()[..., None, None] * M + (eta_t[..., None] * k_t)[..., :, None] * err[..., None, :]
    S = log_alpha_t.exp()[..., None, None] * S - beta_t[..., None, None] * M
    return scale * torch.einsum("bhk,bhkv->bhv", q_t, S), S, M


def momentum_delta_recurrent(q, k, v, p, log_alpha, log_mu, beta, eta, *, scale=None,
                             initial_state=None):
    """The loop. q, k, p: (B, T, H, K); v: (B, T, H, V); log_alpha, log_mu (<= 0), beta, eta:
    (B, T, H); initial_state: (S, M), each (B, H, K, V), or None (zeros). Returns o
    (B, T, H, V) in q's dtype and (S, M) in float32 (float64 for float64 q)."""
    B, T, H, K = q.shape if isinstance(q, torch.Tensor) and q.dim() == 4 else (0, 0, 0, 0)
    V = v.shape[-1] if isinstance(v, torch.Tensor) else 0
    gate = (B, T, H)
    check_delta("momentum_delta", q, dict(k=(k, (B, T, H, K)), v=(v, (B, T, H, V)),
                                          p=(p, (B, T, H, K)), log_alpha=(log_alpha, gate),
                                          log_mu=(log_mu, gate), beta=(beta, gate),
                                          eta=(eta, gate)), None, V)
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    if initial_state is None:
        S = M = torch.zeros(B, H, K, V, dtype=dt, device=q.device)
    else:
        S, M = (s.to(dt) for s in initial_state)
    out = []
    for args in zip(*(t.to(dt).unbind(1) for t in (q, k, v, p, log_alpha, log_mu, beta, eta))):
        o_t, S, M = momentum_delta_step(*args, S, M, scale)
        out.append(o_t)
    return torch.stack(out, 1).to(q.dtype), (S, M)
