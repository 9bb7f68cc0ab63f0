"""Gated linear attention with a decay per key channel (GLA; RWKV-6 with its bonus) as its
recurrence in C (gla_scan.c), forward and backward: the (K, V) state of one (batch row, head)
in cache and recomputed backward from every 32nd, O(T K V) work in a few vectorised passes a
step, where the chunked PyTorch form (ops.chunk.linear._VectorChunk) runs (C, C) products and
some twenty elementwise passes over (B, T, H, K) tensors (exp, cumsum, masks, the reverse
cumulative sum of g's gradient).

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t
    (bonus u: o_t = (S_{t-1} + diag(u) k_t v_t^T)^T q_t, then S_t as above)

q, k, g: (B, T, H, K) (q scaled by `scale` inside); v: (B, T, H, V); S0: (B, H, K, V); u: (H, K) or
None; all one dtype (float32 or float64) on the CPU (`ops.backend.use_native`). Returns
o (B, T, H, V) and S_T, differentiable in all six. Threads split the (batch row, head) pairs.
The caller handles non-finite inputs (ops.finite), as ops.chunk.linear does.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, flop_count, native

CK = 32  # the C file's checkpoint interval
GCK = 32  # gsa_fwd/gsa_bwd's


def flops(pairs: int, tokens: int, K: int, V: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of gla_fwd / gla_bwd over `pairs` (batch, head) pairs of
    `tokens` steps, 2 a multiply-add (as the counter books a product), per entry of the (K, V)
    state; the products only (rank-one terms, reads, row sums), not the decay scalings nor the
    bonus's K-wide terms. Forward a step: k v^T and the read q S (2). Backward a step: the
    rebuild's k v^T, D's q do^T, dq's and dk's row sums and dv (5), and dg's block-end
    rowsum(E o S) once a CK-step block. Booked while counting (ops.flop_count: RWKV-6 and LightNet take this path there, as
    the CPU timing does)."""
    kv = pairs * K * V
    return 2 * kv * 2 * tokens, 2 * kv * (5 * tokens - (-tokens // CK))


def load():
    return native.load("gla_scan")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    R = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return (native.kernel(lib, "gla_fwd", dtype, [P] * 9 + [R] + [L] * 6),
            native.kernel(lib, "gla_bwd", dtype, [P] * 14 + [R] + [L] * 6))


class _NativeGLA(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, g, S0, u, scale, plain):
        orig = (q, k, v, g, S0, u)  # for `twice` (the copies below have no autograd history)
        q, k, v, g, S0 = (t.contiguous() for t in (q, k, v, g, S0))
        u = None if u is None else u.contiguous()
        B, T, H, K = q.shape
        V = v.shape[-1]
        o, ST = torch.empty_like(v), torch.empty_like(S0)
        grad = any(ctx.needs_input_grad)
        ck = S0.new_empty(B, H, -(-T // CK), K * native.tile_pad(V)) if grad else None
        fwd, _ = _kernels(lib, q.dtype)
        P = native.ptr
        native.run(fwd, [(P(q), P(k), P(v), P(g), P(u), P(S0), P(o), P(ST), P(ck), scale, T, H,
                          K, V, *p) for p in native.rows(B * H)])
        flop_count.add(flops(B * H, T, K, V)[0])
        if grad:
            ctx.save_for_backward(q, k, v, g, u, ck, *orig)
        ctx.lib, ctx.scale, ctx.plain = lib, scale, plain
        return o, ST

    @staticmethod
    def twice(ctx, do, dST):
        first_order.plain_given(ctx.plain, "_NativeGLA")
        return (None, *first_order.replay(lambda *a: ctx.plain(*a, ctx.scale), ctx.saved_tensors[6:],
                                          (do, dST), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, do, dST):
        q, k, v, g, u, ck = ctx.saved_tensors[:6]
        B, T, H, K = q.shape
        V = v.shape[-1]
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dST = None if dST is None else dST.contiguous()
        dq, dk, dv, dg = (torch.empty_like(t) for t in (q, k, v, g))
        dS0 = v.new_empty(B, H, K, V)
        du = None if u is None else q.new_empty(B, H, K)
        _, bwd = _kernels(ctx.lib, q.dtype)
        P = native.ptr
        native.run(bwd, [(P(q), P(k), P(v), P(g), P(u), P(ck), P(dST), P(do), P(dq), P(dk),
                          P(dv), P(dg), P(du), P(dS0), ctx.scale, T, H, K, V, *p)
                         for p in native.rows(B * H)])
        flop_count.add(flops(B * H, T, K, V)[1])
        return None, dq, dk, dv, dg, dS0, None if du is None else du.sum(0), None, None


def _torch_additive_gate(x, z0):
    """additive_gate in PyTorch (layers.lightnet's form): the form _AdditiveGate's `twice`
    differentiates."""
    z = torch.logaddexp(z0[:, None], torch.logcumsumexp(x, 1))
    z_prev = torch.cat([z0[:, None], z[:, :-1]], 1)
    g = torch.where(torch.isneginf(z_prev), torch.zeros_like(z), z_prev - z)
    return (x - z).exp(), g, z[:, -1]


class _AdditiveGate(first_order.Function):
    @staticmethod
    def forward(ctx, lib, x, z0):
        orig = (x, z0)  # for `twice` (the copies below have no autograd history)
        x, z0 = x.contiguous(), z0.contiguous()
        B, T = x.shape[:2]
        C = x[0, 0].numel()
        k, g, zT = torch.empty_like(x), torch.empty_like(x), torch.empty_like(z0)
        P, L = ctypes.c_void_p, ctypes.c_long
        fwd = native.kernel(lib, "gate_fwd", x.dtype, [P] * 5 + [L] * 4)
        native.run(fwd, [(native.ptr(x), native.ptr(z0), native.ptr(k), native.ptr(g),
                          native.ptr(zT), T, C, *p) for p in native.rows(B)])
        ctx.save_for_backward(k, g, z0, *orig)
        ctx.lib = lib
        return k, g, zT

    @staticmethod
    def twice(ctx, dk, dg, dzT):
        return (None, *first_order.replay(_torch_additive_gate, ctx.saved_tensors[3:], (dk, dg, dzT),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dk, dg, dzT):
        k, g, z0 = ctx.saved_tensors[:3]
        B, T = k.shape[:2]
        C = k[0, 0].numel()
        dk = torch.zeros_like(k) if dk is None else dk.contiguous()
        dg = torch.zeros_like(g) if dg is None else dg.contiguous()
        dzT = None if dzT is None else dzT.contiguous()
        dx, dz0 = torch.empty_like(k), torch.empty_like(z0)
        P, L = ctypes.c_void_p, ctypes.c_long
        bwd = native.kernel(ctx.lib, "gate_bwd", k.dtype, [P] * 8 + [L] * 4)
        P = native.ptr
        native.run(bwd, [(P(k), P(g), P(z0), P(dk), P(dg), P(dzT), P(dx), P(dz0), T, C, *p)
                         for p in native.rows(B)])
        return None, dx, dz0


def additive_gate(lib, x, z0):
    """LightNet's additive gate (layers/lightnet.py, gla_scan.c): x (B, T, H, K) key logits,
    z0 (B, H, K) the running log-sum-exp (-inf: empty) -> (k = e^{x_t - z_t}, g = z_{t-1} - z_t,
    z_T); one scan forward and one backward in place of logcumsumexp and its gradient."""
    return _AdditiveGate.apply(lib, x, z0)


def gla(lib, q, k, v, g, S0, u=None, scale=1.0, plain=None):
    """(o, S_T) with q read as scale q (no pass over q for it); `lib` = load(). plain(q, k, v,
    g, S0, u, scale) -> (o, S_T): the same recurrence in PyTorch (ops.chunk.linear's loop),
    which the node's `twice` differentiates (None: create_graph=True through it raises)."""
    return _NativeGLA.apply(lib, q, k, v, g, S0, u, scale, plain)


def _torch_slot_gate(f, inv_n):
    """slot_gate in PyTorch: the form _SlotGate's `twice` differentiates."""
    la = torch.nn.functional.logsigmoid(f) * inv_n
    return la, -torch.expm1(la)


class _SlotGate(first_order.Function):
    @staticmethod
    def forward(ctx, lib, f, inv_n):
        f0, f = f, f.contiguous()  # f0 for `twice` (a copy has no autograd history)
        la, s = torch.empty_like(f), torch.empty_like(f)
        R = ctypes.c_double if f.dtype == torch.float64 else ctypes.c_float
        P, L = ctypes.c_void_p, ctypes.c_long
        fwd = native.kernel(lib, "slot_gate_fwd", f.dtype, [P] * 3 + [R, L, L])
        native.run(fwd, [(native.ptr(f), native.ptr(la), native.ptr(s), inv_n, *p)
                         for p in native.rows(f.numel())])
        ctx.save_for_backward(f, la, f0)
        ctx.lib, ctx.inv_n = lib, inv_n
        return la, s

    @staticmethod
    def twice(ctx, dla, ds):
        return (None, *first_order.replay(_torch_slot_gate, (ctx.saved_tensors[2], ctx.inv_n),
                                     (dla, ds), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dla, ds):
        f, la = ctx.saved_tensors[:2]
        dla = torch.zeros_like(f) if dla is None else dla.contiguous()
        ds = torch.zeros_like(f) if ds is None else ds.contiguous()
        df = torch.empty_like(f)
        R = ctypes.c_double if f.dtype == torch.float64 else ctypes.c_float
        P, L = ctypes.c_void_p, ctypes.c_long
        bwd = native.kernel(ctx.lib, "slot_gate_bwd", f.dtype, [P] * 5 + [R, L, L])
        P = native.ptr
        native.run(bwd, [(P(f), P(la), P(dla), P(ds), P(df), ctx.inv_n, *p)
                         for p in native.rows(f.numel())])
        return None, df, None


def slot_gate(lib, f, normalizer):
    """Gated slot attention's forget gate from its pre-activation f (any shape): (log alpha
    = logsigmoid(f) / normalizer, s = 1 - alpha = -expm1(log alpha)), one C pass each way
    (three autograd ops and their backwards in PyTorch); `lib` = load()."""
    return _SlotGate.apply(lib, f, 1.0 / normalizer)


def _pad8(n):
    return -(-n // 8) * 8


class _NativeGSA(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, s, la, hk0, hv0, scale, plain):
        orig = (q, k, v, s, la, hk0, hv0)  # for `twice` (the copies have no autograd history)
        q, k, v, s, la, hk0, hv0 = (t.contiguous() for t in (q, k, v, s, la, hk0, hv0))
        B, T, H, K = q.shape
        V, M = v.shape[-1], s.shape[-1]
        o, hk, hv = torch.empty_like(v), torch.empty_like(hk0), torch.empty_like(hv0)
        grad = any(ctx.needs_input_grad)
        ck = s.new_empty(B, H, -(-T // GCK), M * (_pad8(K) + _pad8(V))) if grad else None
        P, L = ctypes.c_void_p, ctypes.c_long
        R = ctypes.c_double if q.dtype == torch.float64 else ctypes.c_float
        fwd = native.kernel(lib, "gsa_fwd", q.dtype, [P] * 11 + [R] + [L] * 7)
        P = native.ptr
        native.run(fwd, [(P(q), P(k), P(v), P(s), P(la), P(hk0), P(hv0), P(o), P(hk), P(hv),
                          P(ck), scale, T, H, K, V, M, *p)
                         for p in native.rows(B * H)])
        if grad:
            ctx.save_for_backward(q, k, v, s, la, ck, *orig)
        ctx.lib, ctx.scale, ctx.plain = lib, scale, plain
        return o, hk, hv

    @staticmethod
    def twice(ctx, do, dhk, dhv):
        return (None, *first_order.replay(ctx.plain, (*ctx.saved_tensors[6:], ctx.scale),
                                          (do, dhk, dhv), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, do, dhk, dhv):
        q, k, v, s, la, ck = ctx.saved_tensors[:6]
        B, T, H, K = q.shape
        V, M = v.shape[-1], s.shape[-1]
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dhk, dhv = (None if t is None else t.contiguous() for t in (dhk, dhv))
        dq, dk, dv, ds, dla = (torch.empty_like(t) for t in (q, k, v, s, la))
        dhk0, dhv0 = q.new_empty(B, H, K, M), q.new_empty(B, H, M, V)
        P, L = ctypes.c_void_p, ctypes.c_long
        R = ctypes.c_double if q.dtype == torch.float64 else ctypes.c_float
        bwd = native.kernel(ctx.lib, "gsa_bwd", q.dtype, [P] * 16 + [R] + [L] * 7)
        P = native.ptr
        native.run(bwd, [(P(q), P(k), P(v), P(s), P(la), P(ck), P(do), P(dhk),
                          P(dhv), P(dq), P(dk), P(dv), P(ds), P(dla), P(dhk0), P(dhv0),
                          ctx.scale, T, H, K, V, M, *p) for p in native.rows(B * H)])
        return None, dq, dk, dv, ds, dla, dhk0, dhv0, None, None


def gsa_passes(lib, q, k, v, s, log_alpha, hk0, hv0, scale, plain):
    """Gated slot attention's two passes and the softmax over slots between them as one C
    recurrence each way (gla_scan.c's gsa_fwd / gsa_bwd: the two states' slot rows side by
    side, the scores never leave the step): q, k (B, T, H, K), v (B, T, H, V), s = 1 - alpha
    and log_alpha (B, T, H, M), hk0 (B, H, K, M), hv0 (B, H, M, V), one dtype (float32 or
    float64) on the CPU. -> (o (B, T, H, V), hk, hv); `lib` = load(). plain(q, k, v, s,
    log_alpha, hk0, hv0, scale) -> (o, hk, hv): the same in PyTorch (ops.gsa's loops), which
    the node's `twice` differentiates."""
    return _NativeGSA.apply(lib, q, k, v, s, log_alpha, hk0, hv0, scale, plain)
