"""MesaNet's readout: the optimal in-context linear regression, solved by conjugate gradients.

von Oswald et al. 2025, "MesaNet: Sequence Modeling by Locally Optimal Test-Time Training",
arXiv:2506.05233. Per head, with a decay gamma_t = exp(g_t) and an input gate beta_t,

    H_t = gamma_t H_{t-1} + beta_t k_t k_t^T        (K, K)
    G_t = gamma_t G_{t-1} + beta_t k_t v_t^T        (K, V)
    o_t = G_t^T (H_t + diag(lambda))^{-1} q_t

that is, o_t = W_t q_t for the W_t minimising the decayed regression loss
sum_s beta_s e^{G_t - G_s} |W k_s - v_s|^2 + |W diag(lambda)^(1/2)|^2 (the closed form).
The solve q*_t = (H_t + diag(lambda))^{-1} q_t is `cg_steps` conjugate-gradient iterations
from x = 0 (each only applies H_t + diag(lambda)); K steps solve exactly in exact
arithmetic. With `cg_tol` > 0 a step's iterations stop once its residual |r_i| <=
cg_tol |q_t| (the same test in every form: masked rows in PyTorch, a break in C). The CG ratios' denominators are guarded by `eps`: by default 1e-10 |q|^2 (and the
smallest normal number, for q = 0): the residual converges to about 1e-5 |q| (float32's
rounding is below that anyway), and the steps after that freeze instead of dividing two
roundings, whose gradients would be noise (a guard at float64's rounding level fails
gradcheck); fla's reference adds 1e-5, which stalls the
residual near sqrt(1e-5) |q|.

Chunkwise form: H_t x for every t of a chunk at once, from the chunk's starting H_0,

    H_t x_t = e^{G_t} H_0 x_t + sum_{s <= t} beta_s e^{G_t - G_s} (k_s . x_t) k_s

so each CG iteration is two products per chunk, run for all steps in parallel, and the
output is the same form with G_0 and v. On the CPU in float32/float64 (`backend.use_native`)
`mesa` runs the recurrence in C instead (ops.native.mesa_scan): each step's CG on its own
H_t, K^2 a step and iteration against the chunk form's K^2 + 2 C K, and a backward through
the CG lines in reverse (the truncated solve's gradient, as autograd's through this loop). All tensors are (B, T, H, D); states (H, G)
accumulate in float32 (float64 for float64 input).
"""

from __future__ import annotations

import functools

import torch

from rnnzoo.checks import positive, positive_int
from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops import backend, flop_count
from rnnzoo.ops.chunk._common import causal_decay, check_delta, to_chunks
from rnnzoo.ops.finite import clean_inputs, finite_inputs, marked, poison
from rnnzoo.ops.native import mesa_scan as native_mesa

__all__ = ["conjugate_gradient", "mesa", "mesa_recurrent", "mesa_step"]


def conjugate_gradient(apply, b, lamb, steps: int, eps: float | None = None, tol: float = 0.0):
    """x ~ (A + diag(lamb))^{-1} b by at most `steps` CG iterations from 0, A symmetric positive
    semi-definite given by `apply(x) = A x`. b: (..., K); lamb (> 0) broadcasts against b.
    eps: added to the ratios' denominators (None: 1e-10 |b|^2 + the smallest normal number).
    tol: a row's iterations stop once its residual |r_i| <= tol |b| (iteration i runs while
    |r_i|^2 > tol^2 |b|^2; 0: all `steps` run, no test)."""
    x = torch.zeros_like(b)
    r = b
    p = r
    delta = (r * r).sum(-1, keepdim=True)
    if eps is None:
        eps = 1e-10 * delta + torch.finfo(b.dtype).tiny
    limit = tol * tol * delta if tol > 0 else None
    for _ in range(steps):
        active = None
        if limit is not None:
            active = delta > limit
            if backend.host_readable(b) and not bool(active.any()):
                break  # every row has stopped: the remaining iterations are no-ops (on a CPU the
                # test costs no sync; elsewhere the masked iterations run on, same result)
        Ap = apply(p) + lamb * p
        alpha = delta / ((p * Ap).sum(-1, keepdim=True) + eps)
        if active is not None:  # a stopped row keeps its x and r (zero gradient through)
            alpha = torch.where(active, alpha, 0)
        x = x + alpha * p
        r = r - alpha * Ap
        new = (r * r).sum(-1, keepdim=True)
        p = r + new / (delta + eps) * p
        delta = new
    return x


def mesa_step(q_t, k_t, v_t, g_t, beta_t, lamb, Hkk, Hkv, cg_steps, eps=None, cg_tol=0.0):
    """One step. q_t, k_t, v_t: (B, H, K); g_t, beta_t: (B, H); lamb: (H, K); Hkk (B, H, K, K),
    Hkv (B, H, K, V). Returns (o_t (B, H, V), Hkk, Hkv)."""
    decay = g_t.exp()[..., None, None]
    kb = (beta_t[..., None] * k_t)[..., :, None]
    Hkk = decay * Hkk + kb * k_t[..., None, :]
    Hkv = decay * Hkv + kb * v_t[..., None, :]
    x = conjugate_gradient(lambda p: torch.einsum("bhk,bhkj->bhj", p, Hkk), q_t, lamb, cg_steps,
                           eps, cg_tol)
    return torch.einsum("bhk,bhkv->bhv", x, Hkv), Hkk, Hkv


def _check(q, k, v, g, beta, lamb, initial_state):
    B, T, H, K = q.shape if isinstance(q, torch.Tensor) and q.dim() == 4 else (0, 0, 0, 0)
    V = v.shape[-1] if isinstance(v, torch.Tensor) else 0
    check_delta("mesa", q, dict(k=(k, (B, T, H, K)), v=(v, (B, T, H, V)), g=(g, (B, T, H)),
                                beta=(beta, (B, T, H)), lamb=(lamb, (H, K))), None, V)
    if initial_state is not None:
        check_delta("mesa", q, {"initial_state[0]": (initial_state[0], (B, H, K, K)),
                                "initial_state[1]": (initial_state[1], (B, H, K, V))}, None, V)


def _initial(initial_state, q, V, dt):
    B, _, H, K = q.shape
    if initial_state is None:
        return (torch.zeros(B, H, K, K, dtype=dt, device=q.device),
                torch.zeros(B, H, K, V, dtype=dt, device=q.device))
    return tuple(s.to(dt) for s in initial_state)


def mesa_recurrent(q, k, v, g, beta, lamb, *, initial_state=None, cg_steps=30, eps=None,
                   cg_tol=0.0):
    """The loop of `mesa` (same arguments, returns)."""
    _check(q, k, v, g, beta, lamb, initial_state)
    dt = compute_dtype(q)
    Hkk, Hkv = _initial(initial_state, q, v.shape[-1], dt)
    lamb = lamb.to(dt)
    out = []
    for q_t, k_t, v_t, g_t, b_t in zip(*(t.to(dt).unbind(1) for t in (q, k, v, g, beta))):
        o_t, Hkk, Hkv = mesa_step(q_t, k_t, v_t, g_t, b_t, lamb, Hkk, Hkv, cg_steps, eps,
                                 cg_tol)
        out.append(o_t)
    return torch.stack(out, 1).to(q.dtype), (Hkk, Hkv)


def mesa(q, k, v, g, beta, lamb, *, initial_state=None, cg_steps=30, eps=None, cg_tol=0.0,
         chunk_size=64):
    """Chunkwise MesaNet readout o_t = G_t^T (H_t + diag(lamb))^{-1} q_t (CG, see the module).

    q, k: (B, T, H, K); v: (B, T, H, V); g: (B, T, H) log-decay (<= 0); beta: (B, T, H);
    lamb: (H, K), > 0; initial_state: (H (B, H, K, K), G (B, H, K, V)) or None; eps: the
    CG guard, cg_tol: its stopping tolerance (conjugate_gradient: a step's solve stops once
    |r| <= cg_tol |q_t|). Returns o
    (B, T, H, V) in q's dtype and (H, G) in float32 (float64 for float64 q). A non-finite k,
    v, g or beta at step t makes outputs from t on NaN, a non-finite q its own output only.
    """
    _check(q, k, v, g, beta, lamb, initial_state)
    positive_int("mesa: cg_steps", cg_steps)
    positive_int("mesa: chunk_size", chunk_size)
    positive("mesa: cg_tol", cg_tol, allow_zero=True)
    dt = compute_dtype(q)
    Hkk, Hkv = _initial(initial_state, q, v.shape[-1], dt)
    out_dtype = q.dtype
    q, k, v, g, beta, lamb = (t.to(dt) for t in (q, k, v, g, beta, lamb))  # each once
    native = flop_count.native(q, k, v, g, beta, lamb, Hkk, Hkv)
    # the C recurrence: no zeroed copies and no NaN marks unless some input is not finite
    # (clean_inputs: one sum a tensor; finite_inputs' copies and marks otherwise)
    (q,), (k, v, g, beta), marks = (clean_inputs if native else finite_inputs)(
        (q,), (k, v, g, beta))
    lib = native_mesa.load() if native else None
    if lib is not None:  # the recurrence in C, each step's solve on its own H_t (ops.native)
        plain = functools.partial(_mesa_chunks, cg_steps=cg_steps, eps=eps, cg_tol=cg_tol,
                                  chunk_size=chunk_size)  # the form its `twice` differentiates
        o, Hkk, Hkv = native_mesa.mesa(lib, q, k, v, g, beta, lamb, Hkk, Hkv, cg_steps, eps,
                                         cg_tol, plain)
        o, (Hkk, Hkv) = marked(o, (Hkk, Hkv), marks)
        return o.to(out_dtype), (Hkk, Hkv)
    if marks is None:  # native, but the kernel not built: the chunk form's marks
        (q,), (k, v, g, beta), marks = finite_inputs((q,), (k, v, g, beta))
    o, Hkk, Hkv = _mesa_chunks(q, k, v, g, beta, lamb, Hkk, Hkv, cg_steps=cg_steps, eps=eps,
                               cg_tol=cg_tol, chunk_size=chunk_size)
    return poison(o, marks.outputs).to(out_dtype), (poison(Hkk, marks.state),
                                                    poison(Hkv, marks.state))


def _mesa_chunks(q, k, v, g, beta, lamb, Hkk, Hkv, *, cg_steps, eps, cg_tol, chunk_size):
    """mesa's chunk form on clean compute-dtype tensors -> (o (B, T, H, V), H_T, G_T): its
    PyTorch path, and the form ops.native.mesa_scan's `twice` differentiates."""
    T = q.shape[1]
    C = min(chunk_size, T)
    qc, kc, vc = (to_chunks(t, C) for t in (q, k, v))             # (B, H, N, C, D)
    G = to_chunks(g, C).cumsum(-1)                                # (B, H, N, C)
    bc = to_chunks(beta, C)
    D = causal_decay(G) * bc[..., None, :]                        # beta_s e^{G_t - G_s}, s <= t
    k_end = kc * ((G[..., -1:] - G).exp() * bc)[..., None]
    chunk_decay = G[..., -1].exp()[..., None, None]
    starts_kk, starts_kv = [], []
    for dec_n, ke_n, k_n, v_n in zip(chunk_decay.unbind(2), k_end.unbind(2), kc.unbind(2),
                                     vc.unbind(2)):
        starts_kk.append(Hkk)
        starts_kv.append(Hkv)
        Hkk = dec_n * Hkk + ke_n.transpose(-1, -2) @ k_n
        Hkv = dec_n * Hkv + ke_n.transpose(-1, -2) @ v_n
    H0, G0 = torch.stack(starts_kk, 2), torch.stack(starts_kv, 2)
    eG = G.exp()[..., None]
    kt = kc.transpose(-1, -2)

    def apply(x):
        return (x * eG) @ H0 + ((x @ kt) * D) @ kc

    B, _, H, K = q.shape
    x = conjugate_gradient(apply, qc, lamb.view(1, H, 1, 1, K), cg_steps, eps,
                           cg_tol)
    o = (x * eG) @ G0 + ((x @ kt) * D) @ vc
    return o.movedim(1, 3).reshape(B, -1, H, o.shape[-1])[:, :T], Hkk, Hkv
