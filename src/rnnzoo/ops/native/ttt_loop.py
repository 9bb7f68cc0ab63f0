"""TTT-Linear's mini-batch loop in C (ttt_loop.c), a (batch x head) row at a time over all
its mini-batches, forward and backward:

    loop(lib, W, c, A0, a0, k, v, lr, w, b, tok, eps) -> (P, pc, Gl, S, s)

W (B, H, K, K), c (B, H, K): the weights at the loop's start; A0, a0 the same shapes: the sums
the state brought (added to the first mini-batch's); k, v (B, H, NT, M, K), lr (B, H, NT, M):
the mini-batches' inputs and rates; w, b (H, K) the inner norm (None, None: no norm); tok (M,)
(its last entry is the weights' step). Returns each mini-batch's start weights P (B, H, NT, K,
K), pc (B, H, NT, K), its lr-weighted gradients Gl (B, H, NT, M, K) and its sums S (B, H, NT,
K, K), s (B, H, NT, K) (the first with A0, a0): ops.memory's loop, equal to rounding.
Differentiable in all inputs, once. float32 or float64 on the CPU (`ops.backend.use_native`
decides); threads split the rows.
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from rnnzoo.ops import native


def load():
    return native.load("ttt_loop")


def _call(lib, name, tensors, dims, eps, n):
    P, L = ctypes.c_void_p, ctypes.c_long
    fn = native.kernel(lib, name, tensors[0].dtype, [P] * len(tensors) + [L] * 5
                       + [ctypes.c_double, L, L])
    ptrs = [native.ptr(t) for t in tensors]
    native.run(fn, [(*ptrs, *dims, eps, *p) for p in native.rows(n) or [(0, 0)]])


class _Loop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, eps, W, c, A0, a0, k, v, lr, w, b, tok):
        W, c, A0, a0, k, v, lr, tok = (t.contiguous() for t in (W, c, A0, a0, k, v, lr, tok))
        w, b = (None if t is None else t.contiguous() for t in (w, b))
        B, H, NT, M, K = k.shape
        P = k.new_empty(B, H, NT, K, K)
        S = torch.empty_like(P)
        pc, s = (k.new_empty(B, H, NT, K) for _ in range(2))
        Gl = torch.empty_like(k)
        dims = (NT, M, K, H, int(w is not None))
        _call(lib, "ttt_loop_fwd", (W, c, A0, a0, k, v, lr, w, b, tok, P, pc, Gl, S, s), dims,
              eps, B * H)
        ctx.save_for_backward(P, pc, k, v, lr, w, b, tok, S, s)
        ctx.lib, ctx.eps, ctx.dims = lib, eps, dims
        return P, pc, Gl, S, s

    @staticmethod
    @once_differentiable
    def backward(ctx, dP, dpc, dGl, dS, ds):
        P, pc, k, v, lr, w, b, tok, S, s = ctx.saved_tensors
        B, H, NT, M, K = k.shape
        dW, dA0 = (k.new_empty(B, H, K, K) for _ in range(2))
        dc, da0, dnw, dnb = (k.new_empty(B, H, K) for _ in range(4))
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        dlr, dtau = torch.empty_like(lr), k.new_empty(B, H)
        grads = [t.contiguous() for t in (dP, dpc, dGl, dS, ds)]
        _call(ctx.lib, "ttt_loop_bwd", (P, pc, k, v, lr, w, b, tok, S, s, *grads, dW, dc, dA0,
                                        da0, dk, dv, dlr, dnw, dnb, dtau), ctx.dims, ctx.eps,
              B * H)
        dtok = torch.zeros_like(tok)
        dtok[-1] = dtau.sum()
        norm = w is not None
        return (None, None, dW, dc, dA0, da0, dk, dv, dlr, dnw.sum(0) if norm else None,
                dnb.sum(0) if norm else None, dtok)


def loop(lib, W, c, A0, a0, k, v, lr, w, b, tok, eps: float):
    """(P, pc, Gl, S, s); `lib` = load()."""
    return _Loop.apply(lib, float(eps), W, c, A0, a0, k, v, lr, w, b, tok)
