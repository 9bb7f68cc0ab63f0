"""The per-step reads of Miras' chunk form on the CPU, fused in C (miras_read.c): for one
dense layer of the memory, inside every chunk from its start U_0,

    W_t = a_t W_t-1 - e_t X_t^T G_t  (W_-1 = U_0),    y_t = x_t phi(U_init + W_t)

with phi the row softmax (`q=None`, Memora) or V |V|_q^(2-q) (Moneta), each step's weights
made and used in cache, never stored: the backward recomputes them a chunk at a time.

x, X: (B, H, N, C, I); G: (B, H, N, C, O); a, e: (B, H, N, C); U_init: (H, I, O);
U_0: (B, H, N, I, O). Returns y (B, H, N, C, O), differentiable in all of them. All float32
or all float64 on the CPU (`ops.backend.use_native` decides). Work is split over
torch.get_num_threads() threads by chunks (ctypes lets go of the GIL during each call).
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


def _parts(J):
    """[(j0, j1)] chunk ranges, one a thread; at least one (empty when J = 0)."""
    p = max(1, min(torch.get_num_threads(), J))
    cuts = [J * i // p for i in range(p + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a] or [(0, 0)]


def _kernels(lib, dtype):
    suffix = "f64" if dtype == torch.float64 else "f32"
    fwd, bwd = getattr(lib, f"miras_read_fwd_{suffix}"), getattr(lib, f"miras_read_bwd_{suffix}")
    if fwd.argtypes is None:
        P, L = ctypes.c_void_p, ctypes.c_long
        real = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
        fwd.argtypes = [P] * 8 + [L] * 5 + [ctypes.c_int, real, L, L]
        bwd.argtypes = [P] * 15 + [L] * 5 + [ctypes.c_int, real, L, L]
        fwd.restype = bwd.restype = None
    return fwd, bwd


class _NativeRead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, q, x, u0, U0, a, e, X, G):
        x, u0, U0, a, e, X, G = (t.contiguous() for t in (x, u0, U0, a, e, X, G))
        B, H, N, C, n_in = x.shape
        n_out = G.shape[-1]
        fwd, _ = _kernels(lib, x.dtype)
        y = x.new_empty(B, H, N, C, n_out)
        kind, qv = (0, 0.0) if q is None else (1, float(q))
        native.run(fwd, [(_ptr(x), _ptr(u0), _ptr(U0), _ptr(a), _ptr(e), _ptr(X), _ptr(G),
                          _ptr(y), H, N, C, n_in, n_out, kind, qv, *p) for p in _parts(B * H * N)])
        ctx.save_for_backward(x, u0, U0, a, e, X, G)
        ctx.lib, ctx.kind, ctx.q = lib, kind, qv
        return y

    @staticmethod
    def backward(ctx, dy):
        x, u0, U0, a, e, X, G = ctx.saved_tensors
        B, H, N, C, n_in = x.shape
        n_out = G.shape[-1]
        _, bwd = _kernels(ctx.lib, x.dtype)
        dy = dy.contiguous()
        dx, dU0, da, de, dX, dG = (torch.empty_like(t) for t in (x, U0, a, e, X, G))
        du0 = torch.empty_like(U0)                       # one slice per chunk
        native.run(bwd, [(_ptr(x), _ptr(u0), _ptr(U0), _ptr(a), _ptr(e), _ptr(X), _ptr(G),
                          _ptr(dy), _ptr(dx), _ptr(dU0), _ptr(du0), _ptr(da), _ptr(de),
                          _ptr(dX), _ptr(dG), H, N, C, n_in, n_out, ctx.kind, ctx.q, *p)
                         for p in _parts(B * H * N)])
        return None, None, dx, du0.sum((0, 2)), dU0, da, de, dX, dG


def miras_read(lib, q, x, u0, U0, a, e, X, G):
    """y (B, H, N, C, O); `lib` = native.load("miras_read"); q None: the row softmax."""
    return _NativeRead.apply(lib, q, x, u0, U0, a, e, X, G)


def load():
    return native.load("miras_read")
