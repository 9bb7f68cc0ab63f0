"""Mamba's selective scan on the CPU, fused in C (selective_scan.c): same contract as
`rnnzoo.layers.mamba.selective_scan`, the skip D u inside (D None: none).

    h_t = a_t h_{t-1} + delta_t u_t B_t,  a_t = exp(delta_t A) (or 2 exp(delta_t A) - 1),
    y_t = C_t . h_t + D u_t

u, delta: (batch, T, d_inner); A: (d_inner, d_state); B, C: (batch, T, d_state);
h0: (batch, d_inner, d_state). Returns y (batch, T, d_inner) and h_{T-1} (batch, d_inner,
d_state), differentiable in u, delta, A, B, C, h0. All float32 or all float64 on the CPU
(`ops.backend.use_native` decides); the state is kept in the inputs' dtype.

`delta_softplus`: the step sizes softplus(dt W^T + b) that feed the scan, one C pass each way.

The forward keeps only the state entering every chunk of `CHUNK` steps (batch, T / CHUNK,
d_state, d_inner); the backward recomputes each chunk from it. Work is split over
torch.get_num_threads() threads, by batch rows (or, with fewer rows than threads, by
groups of channels, each group with its own dB, dC summed after): ctypes lets go of the
GIL during each call.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native

CHUNK = 32  # steps between the stored states
_BLOCK = 16  # channels per unit of work in the C code (DB)



def _parts(batch, d_inner):
    """[(b0, b1, d0, d1)] for each thread: by batch rows when there are enough of them,
    else by channel groups (multiples of the C block)."""
    p = max(1, torch.get_num_threads())
    if p == 1 or batch * d_inner <= _BLOCK:
        return [(0, batch, 0, d_inner)]
    if batch >= p:
        cuts = [batch * i // p for i in range(p + 1)]
        return [(a, b, 0, d_inner) for a, b in zip(cuts, cuts[1:]) if b > a]
    blocks = -(-d_inner // _BLOCK)
    cuts = [min(d_inner, _BLOCK * (blocks * i // p)) for i in range(p + 1)]
    return [(0, batch, a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "scan_fwd", dtype, [P] * 10 + [L] * 4 + [ctypes.c_int] + [L] * 4),
            native.kernel(lib, "scan_bwd", dtype, [P] * 16 + [L] * 4 + [ctypes.c_int] + [L] * 4))


class _NativeScan(first_order.Function):
    @staticmethod
    def forward(ctx, lib, u, delta, A, B, C, h0, Dv, allow_neg_eigval, plain):
        orig = (u, delta, A, B, C, h0, Dv)  # for `twice` (the copies have no autograd history)
        u, delta, B, C, h0 = (t.contiguous() for t in (u, delta, B, C, h0))
        Dv = None if Dv is None else Dv.contiguous()
        At = A.t().contiguous()
        batch, T, D = u.shape
        N = At.shape[0]
        fwd, _ = _kernels(lib, u.dtype)
        y = torch.empty_like(u)
        hT = torch.empty_like(h0)
        grad = ctx.needs_input_grad[1:8]
        ck = u.new_empty(batch, -(-T // CHUNK), N, D) if any(grad) else None
        neg = int(bool(allow_neg_eigval))
        native.run(fwd, [(native.ptr(u), native.ptr(delta), native.ptr(At), native.ptr(B), native.ptr(C),
                          native.ptr(Dv), native.ptr(h0), native.ptr(y),
                          native.ptr(hT), native.ptr(ck), T, D, N, CHUNK, neg, *p) for p in _parts(batch, D)])
        if ck is not None:
            ctx.save_for_backward(u, delta, At, B, C, ck, Dv, *orig)
        ctx.lib, ctx.neg, ctx.K, ctx.plain = lib, neg, CHUNK, plain
        return y, hT

    @staticmethod
    def twice(ctx, dy, dh):
        first_order.plain_given(ctx.plain, "_NativeScan")
        return (None, *first_order.replay(ctx.plain, (*ctx.saved_tensors[7:], ctx.neg), (dy, dh),
                                          ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dy, dh):
        u, delta, At, B, C, ck, Dv = ctx.saved_tensors[:7]
        batch, T, D = u.shape
        N = At.shape[0]
        _, bwd = _kernels(ctx.lib, u.dtype)
        dy = dy.contiguous()
        dh = None if dh is None else dh.contiguous()
        parts = _parts(batch, D)
        groups = len(parts) if parts[0][2:] != (0, D) else 1  # split by channels: own dB, dC
        gu, gd = torch.empty_like(u), torch.empty_like(delta)
        gA = u.new_zeros(batch, N, D)
        gDv = None if Dv is None else u.new_empty(batch, D)
        gB = u.new_zeros(groups, batch, T, N)
        gC = u.new_zeros(groups, batch, T, N)
        gh0 = u.new_empty(batch, D, N)
        step = batch * T * N * u.element_size()

        def args(i, p):
            g = i if groups > 1 else 0
            return (native.ptr(u), native.ptr(delta), native.ptr(At), native.ptr(B), native.ptr(C),
                    native.ptr(Dv), native.ptr(dy), native.ptr(dh),
                    native.ptr(ck), native.ptr(gu), native.ptr(gd), native.ptr(gA), native.ptr(gDv),
                    ctypes.c_void_p(gB.data_ptr() + g * step),
                    ctypes.c_void_p(gC.data_ptr() + g * step), native.ptr(gh0),
                    T, D, N, ctx.K, ctx.neg, *p)
        native.run(bwd, [args(i, p) for i, p in enumerate(parts)])
        gB, gC = (g[0] if groups == 1 else g.sum(0) for g in (gB, gC))
        return (None, gu, gd, gA.sum(0).t(), gB, gC, gh0,
                None if gDv is None else gDv.sum(0), None, None)


def selective_scan(lib, u, delta, A, B, C, h0, D=None, *, allow_neg_eigval=False, plain=None):
    """(y with D u when D is given, final state); D: (d_inner,) or None;
    `lib` = native.load("selective_scan"). plain(u, delta, A, B, C, h0, D, allow_neg_eigval)
    -> (y, h): the same in PyTorch (layers.mamba's loop), which the node's `twice`
    differentiates (None: create_graph=True through it raises)."""
    if h0 is None:
        h0 = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    return _NativeScan.apply(lib, u, delta, A, B, C, h0, D, allow_neg_eigval, plain)


def _torch_delta_softplus(dt, W, b):
    """delta_softplus in PyTorch: the form _DeltaStep's `twice` differentiates."""
    return torch.nn.functional.softplus(dt @ W.t() + b)


class _DeltaStep(first_order.Function):
    @staticmethod
    def forward(ctx, lib, dt, W, b):
        orig = (dt, W, b)  # for `twice` (the copies below have no autograd history)
        R, D = dt.shape[-1], W.shape[0]
        dt2, Wt, b = dt.reshape(-1, R).contiguous(), W.t().contiguous(), b.contiguous()
        delta = dt2.new_empty(dt2.shape[0], D)
        P, L = ctypes.c_void_p, ctypes.c_long
        fwd = native.kernel(lib, "delta_fwd", dt.dtype, [P] * 4 + [L] * 4)
        native.run(fwd, [(native.ptr(dt2), native.ptr(Wt), native.ptr(b), native.ptr(delta),
                          R, D, *p) for p in native.rows(dt2.shape[0])])
        ctx.save_for_backward(dt2, Wt, b, *orig)
        ctx.lib, ctx.shape = lib, dt.shape
        return delta.view(*dt.shape[:-1], D)

    @staticmethod
    def twice(ctx, g):
        return (None, *first_order.replay(_torch_delta_softplus, ctx.saved_tensors[3:], (g,),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, g):
        dt2, Wt, b = ctx.saved_tensors[:3]
        R, D = Wt.shape
        g = g.reshape(-1, D).contiguous()
        parts = native.rows(dt2.shape[0])
        ddt, dWb = torch.empty_like(dt2), dt2.new_empty(len(parts), R + 1, D)
        P, L = ctypes.c_void_p, ctypes.c_long
        bwd = native.kernel(ctx.lib, "delta_bwd", g.dtype, [P] * 6 + [L] * 4)
        native.run(bwd, [(native.ptr(dt2), native.ptr(Wt), native.ptr(b), native.ptr(g),
                          native.ptr(ddt), native.ptr(dWb[i]), R, D, *p)
                         for i, p in enumerate(parts)])
        dWb = dWb.sum(0)
        return None, ddt.view(ctx.shape), dWb[:R].t(), dWb[R]


def delta_softplus(lib, dt, W, b):
    """Mamba's step sizes softplus(dt W^T + b) (torch's softplus), one C pass each way (the
    thin dt_rank -> d_inner product done in it: no pre-activation tensor): dt (..., R),
    W (D, R), b (D,) -> (..., D); `lib` = load()."""
    return _DeltaStep.apply(lib, dt, W, b)


def load():
    return native.load("selective_scan")
