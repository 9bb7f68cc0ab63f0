"""A chunk of ATLAS's momenta and memories as their recurrences in C (atlas_scan.c), the
form ops.atlas.atlas_chunked takes on the CPU instead of one (C, C + window) product of the
window's materialised outer products and one (C, C + 1) product of the memories:

    S_t = e_t S_{t-1} - w_t sum_{i=t}^{t+W1} u_i v_i^T     (each weight's block; S_{-1} = S0)
    M_t = a_t M_{t-1} + c_t U_t                               (M_{-1} = M0)

on the packed states (..., N): every weight's short-side-first s x l matrix flattened, side
by side (ops.atlas._pack). u (..., C + W1, s), v (..., C + W1, l) per weight (one or two);
e, w, a, c (..., C); U (..., C, N). `reads` runs the memories with the chunk's reads of the
memory model through them (ops.atlas's MLP or linear memory), keeping no per-step read
gradients. `grads_fwd` / `grads_bwd` are the Omega rule's window gradients (the pairs u, v)
of a chunk at the weights W0 + Pg and their backward. mom_fwd / mom_bwd, read_fwd /
read_bwd, grads_fwd / grads_bwd run without autograd (ops.atlas._Chunks' backward by hand);
`momenta` and `reads` are the first two as autograd Functions. float32 or float64 on the CPU
(`ops.backend.use_native`); threads split the rows (the leading dims). Differentiable in
every input (the backward runs each recurrence back; S_{t-1}, M_{t-1} read from the
outputs).
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native


def load():
    return native.load("atlas_scan")


def _run(lib, name, dtype, tensors, ints, R):
    P, L = ctypes.c_void_p, ctypes.c_long
    fn = native.kernel(lib, name, dtype, [P] * len(tensors) + [L] * (len(ints) + 2))
    ptrs = [native.ptr(t) for t in tensors]
    native.run(fn, [(*ptrs, *ints, p0, p1) for p0, p1 in native.rows(R)])


def mom_fwd(lib, W1, S0, e, w, u1, v1, u2=None, v2=None, Slast=None):
    """(St (..., C, N), Slast (..., N)) of the momenta, no autograd; every tensor contiguous
    (Slast, when given, is written)."""
    C, N = e.shape[-1], S0.shape[-1]
    dims = (u1.shape[-1], v1.shape[-1], 0 if u2 is None else u2.shape[-1],
            0 if v2 is None else v2.shape[-1], C, W1)
    St = S0.new_empty(*e.shape, N)
    Slast = torch.empty_like(S0) if Slast is None else Slast
    _run(lib, "mom_fwd", S0.dtype, (S0, u1, v1, u2, v2, e, w, St, Slast), dims, e.numel() // C)
    return St, Slast


def mom_bwd(lib, W1, S0, e, w, u1, v1, u2, v2, St, dSt, dSlast, de=None, dw=None):
    """(dS0, du1, dv1, du2, dv2, de, dw) of mom_fwd from dSt, dSlast, no autograd; every
    tensor contiguous (de, dw, when given, are written)."""
    C = e.shape[-1]
    dims = (u1.shape[-1], v1.shape[-1], 0 if u2 is None else u2.shape[-1],
            0 if v2 is None else v2.shape[-1], C, W1)
    grads = [torch.empty_like(t) if t is not None else None for t in (S0, u1, v1, u2, v2)]
    de = torch.empty_like(e) if de is None else de
    dw = torch.empty_like(w) if dw is None else dw
    _run(lib, "mom_bwd", S0.dtype, (S0, u1, v1, u2, v2, e, w, St, dSt, dSlast, *grads, de, dw),
         dims, e.numel() // C)
    return (*grads, de, dw)


def read_fwd(lib, M0, U, a, c, q, W01, W02=None, z=None, Mlast=None):
    """(z (..., C, O), Mlast, Ms (..., C, N), hs (..., C, O1) or None) of the memories and
    their reads, no autograd; every tensor contiguous (z, Mlast, when given, are written)."""
    C, H = a.shape[-1], W01.shape[0]
    (I1, O1), (I2, O2) = W01.shape[1:], (W02.shape[1:] if W02 is not None else (0, 0))
    Ms = torch.empty_like(U)
    Mlast = torch.empty_like(M0) if Mlast is None else Mlast
    z = U.new_empty(*a.shape, O2 if W02 is not None else O1) if z is None else z
    hs = U.new_empty(*a.shape, O1) if W02 is not None else None
    _run(lib, "read_fwd", M0.dtype, (M0, U, a, c, q, W01, W02, Ms, Mlast, z, hs),
         (H, I1, O1, I2, O2, C), a.numel() // C)
    return z, Mlast, Ms, hs


def read_bwd(lib, M0, U, a, c, q, W01, W02, Ms, hs, dz, dMlast, da=None, dc=None, dq=None,
             dU=None):
    """(dM0, dU, da, dc, dq, dW01 per row (B, H, I1, O1), dW02 per row or None) of
    read_fwd, no autograd; every tensor contiguous (da, dc, dq, dU, when given, are
    written)."""
    C, H = a.shape[-1], W01.shape[0]
    (I1, O1), (I2, O2) = W01.shape[1:], (W02.shape[1:] if W02 is not None else (0, 0))
    R = a.numel() // C
    dM0 = torch.empty_like(M0)
    dU = torch.empty_like(U) if dU is None else dU
    da = torch.empty_like(a) if da is None else da
    dc = torch.empty_like(c) if dc is None else dc
    dq = torch.empty_like(q) if dq is None else dq
    dW1 = W01.new_empty(R // H, *W01.shape)
    dW2 = None if W02 is None else W02.new_empty(R // H, *W02.shape)
    _run(lib, "read_bwd", M0.dtype, (M0, U, a, c, q, W01, W02, Ms, hs, dz, dMlast, dM0, dU, da,
                                     dc, dq, dW1, dW2), (H, I1, O1, I2, O2, C), R)
    return dM0, dU, da, dc, dq, dW1, dW2


def grads_fwd(lib, Pg, W01, W02, k, v, g):
    """The window gradients of a chunk at weights W0 + Pg (Pg packed (B, H, N), W0 (H, I, O)
    one or two), k (B, H, W, I1), v (B, H, W, O), gamma g (B, H, W), no autograd, every
    tensor contiguous: (Z1, X2, Y, G1, G, G1s, Gs) for the MLP (atlas_scan.c's grads_fwd;
    G1s = g G1 and Gs = g G the pairs' scaled factors), (G, Gs) for the linear memory."""
    H, (I1, O1) = W01.shape[0], W01.shape[1:]
    I2, O2 = W02.shape[1:] if W02 is not None else (0, 0)
    W = g.shape[-1]
    G = k.new_empty(*g.shape, O2 or O1)
    Gs = torch.empty_like(G)
    mid = [k.new_empty(*g.shape, O1) for _ in range(5)] if W02 is not None else [None] * 5
    Z1, X2, Y, G1, G1s = mid
    _run(lib, "grads_fwd", k.dtype, (Pg, W01, W02, k, v, g, Z1, X2, Y, G1, G, G1s, Gs),
         (H, I1, O1, I2, O2, W), g.numel() // W)
    return (Z1, X2, Y, G1, G, G1s, Gs) if W02 is not None else (G, Gs)


def grads_bwd(lib, Pg, W01, W02, k, g, saved, dX0, dX1, dG1s, dGs, dPa, dPb=None, dk=None,
              dv=None, dg=None):
    """grads_fwd's backward: (dk, dv, dg) from the gradients of k (as X_0), X2, G1s and Gs
    (dX1, dG1s None for the linear memory); saved: grads_fwd's (Z1, X2, Y, G1, G) (MLP) or
    (G,); the weights' gradient is added into the packed dPa and dPb (B, H, N). dk, dv, dg:
    contiguous buffers to write them into (shaped as k, G, g; fresh where None)."""
    H, (I1, O1) = W01.shape[0], W01.shape[1:]
    I2, O2 = W02.shape[1:] if W02 is not None else (0, 0)
    W = g.shape[-1]
    Z1, X2, Y, G1, G = saved if W02 is not None else (None,) * 4 + tuple(saved)
    dk, dv, dg = (torch.empty_like(t) if d is None else d
                  for d, t in ((dk, k), (dv, G), (dg, g)))
    _run(lib, "grads_bwd", k.dtype, (Pg, W01, W02, k, g, Z1, X2, Y, G1, G, dX0, dX1, dG1s, dGs,
                                      dk, dv, dg, dPa, dPb), (H, I1, O1, I2, O2, W),
         g.numel() // W)
    return dk, dv, dg


class _Momenta(first_order.Function):
    @staticmethod
    def forward(ctx, lib, W1, S0, e, w, u1, v1, u2, v2, plain=None):
        orig = (S0, e, w, u1, v1, u2, v2)  # for `twice` (copies carry no history)
        S0, e, w, u1, v1 = (t.contiguous() for t in (S0, e, w, u1, v1))
        u2, v2 = (None if t is None else t.contiguous() for t in (u2, v2))
        St, Slast = mom_fwd(lib, W1, S0, e, w, u1, v1, u2, v2)
        ctx.save_for_backward(S0, e, w, u1, v1, u2, v2, St, *orig)
        ctx.lib, ctx.W1, ctx.plain = lib, W1, plain
        return St, Slast

    @staticmethod
    def twice(ctx, *douts):  # under create_graph: autograd through ops.atlas's PyTorch form
        first_order.plain_given(ctx.plain, "_Momenta")
        return (None, *first_order.replay(ctx.plain, (ctx.W1, *ctx.saved_tensors[8:]), douts,
                                          ctx.needs_input_grad[1:]), None)

    @staticmethod
    def backward(ctx, dSt, dSlast):
        S0, e, w, u1, v1, u2, v2, St = ctx.saved_tensors[:8]
        dSt = torch.zeros_like(St) if dSt is None else dSt.contiguous()
        dSlast = torch.zeros_like(S0) if dSlast is None else dSlast.contiguous()
        dS0, du1, dv1, du2, dv2, de, dw = mom_bwd(ctx.lib, ctx.W1, S0, e, w, u1, v1, u2, v2, St,
                                                  dSt, dSlast)
        return None, None, dS0, de, dw, du1, dv1, du2, dv2, None


class _Reads(first_order.Function):
    @staticmethod
    def forward(ctx, lib, M0, U, a, c, q, W01, W02, plain=None):
        orig = (M0, U, a, c, q, W01, W02)  # for `twice` (copies carry no history)
        M0, U, a, c, q, W01 = (t.contiguous() for t in (M0, U, a, c, q, W01))
        W02 = None if W02 is None else W02.contiguous()
        z, Mlast, Ms, hs = read_fwd(lib, M0, U, a, c, q, W01, W02)
        ctx.save_for_backward(M0, U, a, c, q, W01, W02, Ms, hs, *orig)
        ctx.lib, ctx.plain = lib, plain
        return z, Mlast

    @staticmethod
    def twice(ctx, *douts):  # under create_graph: autograd through ops.atlas's PyTorch form
        first_order.plain_given(ctx.plain, "_Reads")
        return (None, *first_order.replay(ctx.plain, ctx.saved_tensors[9:], douts,
                                          ctx.needs_input_grad[1:]), None)

    @staticmethod
    def backward(ctx, dz, dMlast):
        M0, U, a, c, q, W01, W02, Ms, hs = ctx.saved_tensors[:9]
        width = (W02 if W02 is not None else W01).shape[-1]
        dz = a.new_zeros(*a.shape, width) if dz is None else dz.contiguous()
        dMlast = torch.zeros_like(M0) if dMlast is None else dMlast.contiguous()
        dM0, dU, da, dc, dq, dW1, dW2 = read_bwd(ctx.lib, M0, U, a, c, q, W01, W02, Ms, hs, dz,
                                                 dMlast)
        return (None, dM0, dU, da, dc, dq, dW1.sum(0),
                None if dW2 is None else dW2.sum(0), None)


def momenta(lib, S0, e, w, pairs, W1, plain=None):
    """(S_t (..., C, N) of every step of a chunk, the last of them (..., N)); S0 (..., N),
    e, w (..., C), pairs [(u, v)] per weight (one or two), W1 = window - 1; `lib` = load();
    plain: the same function of (W1, S0, e, w, u1, v1, u2, v2) in PyTorch (ops.atlas's),
    which the node's `twice` differentiates (None: first order only)."""
    (u1, v1), (u2, v2) = pairs[0], (pairs[1] if len(pairs) > 1 else (None, None))
    return _Momenta.apply(lib, W1, S0, e, w, u1, v1, u2, v2, plain)


def reads(lib, M0, U, a, c, q, W0, plain=None):
    """(z (B, H, C, O), M_{C-1} (B, H, N)): the memories M_t = a_t M_{t-1} + c_t U_t (M0
    (B, H, N), U (B, H, C, N), a, c (B, H, C)) read by the memory model at q (B, H, C, I):
    z_t = q_t (W0_1 + M1_t) for one weight, gelu(q_t (W0_1 + M1_t)) (W0_2 + M2_t) for two;
    W0 the initial weights [(H, I, O)], M_t's blocks packed short side first. plain: the
    same function of (M0, U, a, c, q, W0_1, W0_2 or None) in PyTorch (ops.atlas's), which
    the node's `twice` differentiates (None: first order only)."""
    return _Reads.apply(lib, M0, U, a, c, q, W0[0], W0[1] if len(W0) > 1 else None, plain)
