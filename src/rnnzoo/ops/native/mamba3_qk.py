"""Mamba-3's SISO queries and keys in C (mamba3_qk.c), forward and backward: the group RMSNorm
of in_proj's raw B and C rows, the per-head bias, the rotation of the first n adjacent
channel pairs by angles formed in the same pass, and the key's scale, plus each head's C . B
(the same-step correction):

    q = R(theta) (RMSNorm(C) wC + bC),   k = s R(theta) (RMSNorm(B) wB + bB),   cb = Cn . Bn
    theta_t = the float64 sum over u <= t of pi tanh(phi_u) dt_u, wrapped to [0, 2 pi)

Bx, Cx: (B, T, G N) (slices of a wider projection are read in place); wB, wC: (N,); bB, bC:
(H, N); phi: (B, T, n); dt, s: (B, T, H); all one dtype (float32 or float64) on the CPU
(`ops.backend.use_native`). `qk_turned` returns q, k (B, T, H, N), cb (B, T, H) and the last
step's angles, differentiable in everything. `torch_turns` and `torch_qk` are the same in
PyTorch (the oracles of the test).
"""

from __future__ import annotations

import ctypes
import math

import torch
import torch.nn.functional as F

from rnnzoo.ops import first_order, native


def load():
    return native.load("mamba3_qk")


def _rows(t):
    """t (B, T, W) as rows of unit channel stride, in place where its rows are evenly spaced;
    and that row stride."""
    t2 = t.reshape(-1, t.shape[-1])
    if t2.stride(1) != 1:
        t2 = t2.contiguous()
    return t2, t2.stride(0)


def _turned(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    real = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return (native.kernel(lib, "m3qkt_fwd", dtype, [P, P, L] + [P] * 5 + [L] + [P] * 8 + [real]
                          + [L] * 7),
            native.kernel(lib, "m3qkt_bwd", dtype, [P, P, L] + [P] * 5 + [L] + [P] * 16 + [real]
                          + [L] * 7))


class _QKTurned(first_order.Function):
    """q, k, cb with their angles from their inputs (m3qkt_fwd / bwd): one autograd node and one pass
    each way, a row's cos and sin formed where its q and k are (no (B, T, H, n) angle step,
    cos, sin or angle gradient tensor); the angles (B, T, H, n) kept for the backward. Threads
    split the batch rows (the angles run along T)."""

    @staticmethod
    def forward(ctx, lib, Bx, Cx, wB, wC, bB, bC, phi, dt, s, eps):
        orig = (Bx, Cx, wB, wC, bB, bC, phi, dt, s)  # for `twice` (copies have no history)
        Bsz, T, W = Bx.shape
        H, N = bB.shape
        G, n = W // N, phi.shape[-1]
        phi2, SP = _rows(phi)
        (B2, SB), (C2, SC) = _rows(Bx), _rows(Cx)
        if SB != SC:
            B2, C2, SB = B2.contiguous(), C2.contiguous(), W
        wB, wC, bB, bC, dt, s = (t.contiguous() for t in (wB, wC, bB, bC, dt, s))
        q = Bx.new_empty(Bsz, T, H, N)
        k, cb = torch.empty_like(q), Bx.new_empty(Bsz, T, H)
        theta, end, fin = Bx.new_empty(Bsz, T, H, n), Bx.new_empty(Bsz, H, n), torch.empty_like(cb)
        fwd, _ = _turned(lib, Bx.dtype)
        native.run(fwd, [tuple(native.ptr(t) for t in (B2, C2)) + (SB,)
                         + tuple(native.ptr(t) for t in (wB, wC, bB, bC, phi2)) + (SP,)
                         + tuple(native.ptr(t) for t in (dt, s, q, k, cb, fin, theta, end))
                         + (eps, G, H, N, n, T, *p) for p in native.rows(Bsz)])
        ctx.save_for_backward(B2, C2, wB, wC, bB, bC, phi2, dt, s, theta, *orig)
        ctx.lib, ctx.eps, ctx.strides, ctx.shape = lib, eps, (SB, SP), Bx.shape
        ctx.phi_shape = phi.shape
        ctx.mark_non_differentiable(fin)
        return q, k, cb, end, fin

    @staticmethod
    def twice(ctx, dq, dk, dcb, dend, _):
        return (None, *first_order.replay(_torch_turned, (*ctx.saved_tensors[10:], ctx.eps),
                                          (dq, dk, dcb, dend), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dq, dk, dcb, dend, _):
        B2, C2, wB, wC, bB, bC, phi2, dt, s, theta = ctx.saved_tensors[:10]
        H, N = bB.shape
        Bsz, T, W = ctx.shape
        G, n = W // N, theta.shape[-1]
        SB, SP = ctx.strides
        dq, dk, dcb, dend = (t.contiguous() for t in (dq, dk, dcb, dend))
        parts = native.rows(Bsz)
        dBx, dCx = (B2.new_empty(ctx.shape) for _ in range(2))
        dphi, ddt, ds = B2.new_empty(ctx.phi_shape), torch.empty_like(dt), torch.empty_like(s)
        dw = B2.new_empty(2, len(parts), N)
        db = B2.new_empty(2, len(parts), H, N)
        _, bwd = _turned(ctx.lib, B2.dtype)
        native.run(bwd, [tuple(native.ptr(t) for t in (B2, C2)) + (SB,)
                         + tuple(native.ptr(t) for t in (wB, wC, bB, bC, phi2)) + (SP,)
                         + tuple(native.ptr(t) for t in (dt, s, theta, dq, dk, dcb, dend, dBx, dCx,
                                                         dw[0, i], dw[1, i], db[0, i], db[1, i],
                                                         dphi, ddt, ds))
                         + (ctx.eps, G, H, N, n, T, a, b) for i, (a, b) in enumerate(parts)])
        dw, db = dw.sum(1), db.sum(1)
        return None, dBx, dCx, dw[0], dw[1], db[0], db[1], dphi, ddt, ds, None


def qk_turned(lib, Bx, Cx, wB, wC, bB, bC, phi, dt, s, eps):
    """(q, k, cb, theta_T, fin) as above for the angles theta = the sum along T (float64,
    wrapped to [0, 2 pi)) of pi tanh(phi) dt: phi (B, T, n) (a slice of a wider projection is
    read in place), dt (B, T, H); theta_T (B, H, n) the last step's angles; fin (B, T, H), no
    gradient: each head's q and k entries summed (finite only if they all are, as ops.finite's
    test: finite entries whose sum overflows only send the caller to its full check; without
    reading q and k again). `lib` = load()."""
    return _QKTurned.apply(lib, Bx, Cx, wB, wC, bB, bC, phi, dt, s, eps)


def torch_turns(phi, dt):
    """The PyTorch form of `qk_turned`'s angles (B, T, H, n) (as mamba3's `_chunk`)."""
    d = (math.pi * torch.tanh(phi))[:, :, None] * dt[..., None]
    return d.to(torch.float64).cumsum(1).remainder(2 * math.pi).to(d.dtype)


def torch_qk(Bx, Cx, wB, wC, bB, bC, theta, s, eps):
    """The PyTorch form of q, k, cb for the angles theta (B, T, H, n)."""
    H, N = bB.shape
    G, n = Bx.shape[-1] // N, theta.shape[-1]

    def normed(x, w, b):  # (B, T, H, N): group g's row to its heads
        x = F.rms_norm(x.unflatten(-1, (G, N)), (N,), w, eps)
        return (x[:, :, :, None] + b.unflatten(0, (G, H // G))).flatten(2, 3)

    def turn(x):
        e = torch.polar(torch.ones_like(theta), theta)
        t = torch.view_as_real(torch.view_as_complex(x[..., :2 * n].unflatten(-1, (n, 2))) * e)
        return torch.cat([t.flatten(-2), x[..., 2 * n:]], -1)

    Bn, Cn = normed(Bx, wB, bB), normed(Cx, wC, bC)
    return turn(Cn), turn(Bn) * s[..., None], (Cn * Bn).sum(-1)


def _torch_turned(Bx, Cx, wB, wC, bB, bC, phi, dt, s, eps):
    """`qk_turned`'s differentiable outputs (q, k, cb, theta_T) in PyTorch (`torch_turns`,
    `torch_qk`): the form _QKTurned's `twice` differentiates."""
    theta = torch_turns(phi, dt)
    return (*torch_qk(Bx, Cx, wB, wC, bB, bC, theta, s, eps), theta[:, -1])
