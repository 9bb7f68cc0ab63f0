"""The momentum delta rule: the delta rule's online regression step taken by heavy-ball SGD.

Momentum DeltaNet (fla-core's `momentum_delta_rule`): per head, with the loss
l_t(S) = |S^T p_t - v_t|^2 / 2 read at p_t and written at k_t, a momentum M and a state S,

    M_t = mu_t M_{t-1} + eta_t k_t (S_{t-1}^T p_t - v_t)^T        (the gradient, with momentum)
    S_t = alpha_t S_{t-1} - beta_t M_t,                           o_t = scale S_t^T q_t

S, M: (K, V). With mu = 0 (no momentum) it is the scalar-plus-low-rank delta rule
S_t = (alpha_t I - beta_t eta_t k_t p_t^T) S_{t-1} + beta_t eta_t k_t v_t^T (ops.erase_delta,
before_decay). Gates enter in log space for alpha and mu. All tensors are (B, T, H, D);
states accumulate in float32 (float64 for float64 input).

Chunk form (exact). The pair (S, M) moves by a map linear in (S, M), so inside a chunk of C
steps, from (S_0, M_0) at its start, with the error rows u_t = p_t^T S_{t-1} - v_t^T,
LA_t = sum_{r<=t} log alpha_r, LM_t likewise (inclusive, within the chunk):

    M_t = e^{LM_t} M_0 + sum_{s<=t} e^{LM_t - LM_s} eta_s k_s u_s
    S_t = e^{LA_t} S_0 - g_t M_0 - sum_{s<=t} W_ts k_s u_s,
    g_t = sum_{r<=t} e^{LA_t - LA_r} beta_r e^{LM_r},
    W_ts = sum_{s<=r<=t} e^{LA_t - LA_r} beta_r e^{LM_r - LM_s} eta_s      (W = R_A diag(beta) R_M diag(eta))

Reading u_t off S_{t-1} gives a unit lower-triangular system, solved once per chunk:

    u_t + sum_{s<t} W_{t-1,s} (p_t . k_s) u_s = e^{LA_{t-1}} p_t^T S_0 - g_{t-1} p_t^T M_0 - v_t^T

(W_{0,.} = g_0 = LA_0 = 0 at the chunk start), and o_t = scale q_t^T S_t from the same sums.
Everything but the (S, M) pass from chunk to chunk is batched over all chunks (`momentum_delta`).

Sequence parallelism (ops/sequence_parallel.py): the outputs and the final pair are linear
in (v, S_0, M_0) given the rest, so the chunk form takes LASP-2's exchange with the pair
stacked as one state (S; M) of 2K rows (`lasp2`, through `_stacked`).
"""

from __future__ import annotations

import functools

import torch

from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops import flop_count, sequence_parallel
from rnnzoo.ops.chunk._common import (
    causal_decay,
    check_delta,
    from_chunks,
    to_chunks,
    unit_lower_inverse,
)
from rnnzoo.ops.finite import finite_inputs, poison
from rnnzoo.ops.native import momentum_scan

__all__ = ["momentum_delta", "momentum_delta_recurrent", "momentum_delta_step"]


def momentum_delta_step(q_t, k_t, v_t, p_t, log_alpha_t, log_mu_t, beta_t, eta_t, S, M, scale):
    """One step. q_t, k_t, p_t: (B, H, K); v_t: (B, H, V); the gates: (B, H); S, M: (B, H, K, V).
    Returns (o_t (B, H, V), S_t, M_t)."""
    err = torch.einsum("bhk,bhkv->bhv", p_t, S) - v_t
    M = log_mu_t.exp()[..., None, None] * M + (eta_t[..., None] * k_t)[..., :, None] * err[..., None, :]
    S = log_alpha_t.exp()[..., None, None] * S - beta_t[..., None, None] * M
    return scale * torch.einsum("bhk,bhkv->bhv", q_t, S), S, M


def momentum_delta_recurrent(q, k, v, p, log_alpha, log_mu, beta, eta, *, scale=None,
                             initial_state=None, correction=None):
    """The loop. q, k, p: (B, T, H, K); v: (B, T, H, V); log_alpha, log_mu (<= 0), beta, eta:
    (B, T, H); initial_state: (S, M), each (B, H, K, V), or None (zeros); correction (H,) or
    None: the outputs read at q - correction k (Momentum DeltaNet's output correction).
    Returns o (B, T, H, V) in q's dtype and (S, M) in float32 (float64 for float64 q)."""
    dt, scale, S, M = _setup(q, k, v, p, log_alpha, log_mu, beta, eta, scale, initial_state)
    q = _corrected(q, k, correction)
    out = []
    for args in zip(*(t.to(dt).unbind(1) for t in (q, k, v, p, log_alpha, log_mu, beta, eta))):
        o_t, S, M = momentum_delta_step(*args, S, M, scale)
        out.append(o_t)
    return torch.stack(out, 1).to(q.dtype), (S, M)


def _corrected(q, k, correction):
    """q - correction k, correction (H,) per head (None: q)."""
    return q if correction is None else q - correction.to(q.dtype)[:, None] * k


def _setup(q, k, v, p, log_alpha, log_mu, beta, eta, scale, initial_state):
    """Checks the shapes; (compute dtype, scale, S, M)."""
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
    return dt, scale, S, M


def momentum_delta(q, k, v, p, log_alpha, log_mu, beta, eta, *, scale=None, initial_state=None,
                   chunk_size=32, correction=None):
    """The chunk form (module docstring), equal to `momentum_delta_recurrent` (same arguments
    and returns). On a CPU, float32 or float64 in one dtype, the recurrence in C instead
    (`ops.native.momentum_scan`: one pass over (S, M) a step forward, the chunks' (C, C)
    products and (2K, 2K) maps cost more there; it reads at q - correction k itself and sums
    k's two gradients where p is k). A non-finite input at step t makes outputs from t on NaN
    (ops.finite)."""
    dt, scale, S, M = _setup(q, k, v, p, log_alpha, log_mu, beta, eta, scale, initial_state)
    # flop_count.native: bench.layer_flops counts this path (momentum_scan books its FLOPs)
    native = not sequence_parallel.active() and flop_count.native(
        q, k, v, p, log_alpha, log_mu, beta, eta, S, M, correction)
    lib = momentum_scan.load() if native else None
    if lib is None:
        q = _corrected(q, k, correction)
    if sequence_parallel.active():  # this rank's time slice: LASP-2 over the stacked (S; M)
        o, Z = sequence_parallel.lasp2(_stacked, q, torch.cat([k, p], -1), v, log_alpha, log_mu,
                                       beta, eta, initial_state=torch.cat([S, M], -2),
                                       scale=scale, chunk_size=chunk_size)
        return o, Z.chunk(2, -2)
    T = q.shape[1]
    if lib is not None:  # the recurrence in C (ops.native.momentum_scan)
        plain = functools.partial(_corrected_chunks, scale=scale, C=max(1, min(chunk_size, T)))
        return _native(lib, q, k, v, p, log_alpha, log_mu, beta, eta, S, M, scale, correction,
                       plain)
    (qf,), writes, marks = finite_inputs((q,), (k, v, p, log_alpha, log_mu, beta, eta))
    o, S, M = _chunks(*(t.to(dt) for t in (qf, *writes)), S, M, scale, max(1, min(chunk_size, T)))
    o = poison(o, marks.outputs).to(qf.dtype)
    return o, tuple(poison(t, marks.state) for t in (S, M))


def _corrected_chunks(q, k, v, p, la, lm, beta, eta, S, M, corr, *, scale, C):
    """`_chunks` read at q - corr k, in ops.native.momentum_scan's argument order: the form
    its node's `twice` differentiates."""
    return _chunks(_corrected(q, k, corr), k, v, p, la, lm, beta, eta, S, M, scale, C)


def _chunks(q, k, v, p, la, lm, beta, eta, S, M, scale, C):
    """momentum_delta's chunk form (module docstring) on clean compute-dtype (B, T, H, ...)
    tensors, chunks of C steps -> (o (B, T, H, V), S_T, M_T)."""
    T = q.shape[1]
    # zero padding at the end is exact: alpha = mu = 1, beta = eta = 0 leave (S, M) unchanged
    q, k, v, p = (to_chunks(t, C) for t in (q, k, v, p))              # (B, H, N, C, D)
    la, lm, beta, eta = (to_chunks(t, C) for t in (la, lm, beta, eta))  # (B, H, N, C)
    LA, LM = la.cumsum(-1), lm.cumsum(-1)
    RA = causal_decay(LA)                                               # e^{LA_t - LA_s}, s <= t
    W = (RA * beta[..., None, :]) @ (causal_decay(LM) * eta[..., None, :])  # (B, H, N, C, C)
    g = (RA @ (beta * LM.exp())[..., None])[..., 0]                     # (B, H, N, C)
    shift = lambda t: torch.cat([torch.zeros_like(t[..., :1, :]), t[..., :-1, :]], -2)  # noqa: E731
    Wp = shift(W)                                                       # W_{t-1, s}
    gp = shift(g[..., None])                                            # g_{t-1}
    ap = shift(LA[..., None]).exp()                                     # e^{LA_{t-1}}
    Tinv = unit_lower_inverse((Wp * (p @ k.transpose(-1, -2))).tril(-1))
    V = v.shape[-1]
    U0, Wz = (Tinv @ torch.cat([-v, ap * p, -gp * p], -1)).split([V, 2 * p.shape[-1]], -1)
    # the chunk's end: (S, M)_C = D (S_0; M_0) + k_out^T U with D = [[e^{LA_C}, -g_C], [0, e^{LM_C}]]
    # (times I), and U = U0 + Wz (S_0; M_0): one affine map Z -> Tm Z + Bm of Z = (S; M) per
    # chunk, built for all chunks at once; only that map is applied chunk after chunk
    K = k.shape[-1]
    kout = torch.cat([-W[..., -1, :, None] * k,
                      ((LM[..., -1:] - LM).exp() * eta)[..., None] * k], -1)  # (B, H, N, C, 2K)
    Tm = kout.transpose(-1, -2) @ Wz                                  # (B, H, N, 2K, 2K)
    a_C, g_C, m_C = (t[..., -1, None] for t in (LA.exp(), g, LM.exp()))
    diag = Tm.diagonal(dim1=-2, dim2=-1)                              # + D, on its diagonals
    diag[..., :K] += a_C
    diag[..., K:] += m_C
    Tm.diagonal(K, dim1=-2, dim2=-1).sub_(g_C)
    Bm = kout.transpose(-1, -2) @ U0                                  # (B, H, N, 2K, V)
    B, H, N = Tm.shape[:3]
    Z, starts = torch.cat([S, M], -2).flatten(0, 1), []               # (B H, 2K, V)
    for T_n, B_n in zip(Tm.movedim(2, 0).flatten(1, 2).unbind(0),     # chunk by chunk
                        Bm.movedim(2, 0).flatten(1, 2).unbind(0)):
        starts.append(Z)
        Z = torch.baddbmm(B_n, T_n, Z)
    S, M = Z.view(B, H, *Z.shape[1:]).chunk(2, -2)
    Zs = torch.stack(starts, 1).view(B, H, N, *Z.shape[1:])           # (B, H, N, 2K, V)
    U = U0 + Wz @ Zs
    Qz = torch.cat([LA.exp()[..., None] * q, -g[..., None] * q], -1)    # (B, H, N, C, 2K)
    P = -(W * (q @ k.transpose(-1, -2)))                                # W is lower already
    o = scale * (Qz @ Zs + P @ U)
    return from_chunks(o, T), S, M


def _native(lib, q, k, v, p, log_alpha, log_mu, beta, eta, S, M, scale, correction, plain):
    """momentum_delta's C path: the kernel on the inputs as they are when every one is finite,
    else on finite_inputs' copies with its NaN marks (what clean_inputs gives). The gates are
    checked by their sums; q, k, v and p by the kernel's sum of its outputs (`osum`): any
    non-finite entry of them at a step makes that step's outputs non-finite, so a finite sum
    of o clears them without a pass over them (a sum that overflows, or outputs that do from
    finite inputs, only take the marking path, exact either way)."""
    corr = None if correction is None else correction.to(q.dtype)
    with torch.no_grad():
        gsum = torch.stack([t.sum(dtype=torch.float32) for t in (log_alpha, log_mu, beta, eta)])
    if bool(torch.isfinite(gsum).all()):
        osum = q.new_empty(q.shape[0] * q.shape[2])
        o, ST, MT = momentum_scan.momentum(lib, q, k, v, p, log_alpha, log_mu, beta, eta, S, M,
                                           scale, corr, osum, plain)
        if bool(torch.isfinite(osum.sum()).all()):
            return o, (ST, MT)
    pk = p is k  # one tensor: checked once, its gradients summed in the kernel
    (qf,), writes, marks = finite_inputs((q,), (k, v, None if pk else p, log_alpha, log_mu,
                                                beta, eta))
    if pk:
        writes[2] = writes[0]
    o, S, M = momentum_scan.momentum(lib, qf, *writes, S, M, scale, corr, plain=plain)
    return poison(o, marks.outputs), (poison(S, marks.state), poison(M, marks.state))


def _stacked(q, kp, v, log_alpha, log_mu, beta, eta, *, initial_state=None, **options):
    """`momentum_delta` in the form `lasp2` takes: k and p concatenated, kp (B, T, H, 2K); the
    state the pair stacked, (S; M) (B, H, 2K, V), for initial_state (None: zeros) and return."""
    k, p = kp.chunk(2, -1)
    pair = None if initial_state is None else initial_state.chunk(2, -2)
    o, (S, M) = momentum_delta(q, k, v, p, log_alpha, log_mu, beta, eta, initial_state=pair,
                               **options)
    return o, torch.cat([S, M], -2)
