"""The generalised delta rule with a decay per key channel as its recurrence in C
(vector_delta.c), forward and backward: the (K, V) state of one (batch row, head) in cache,
in tiles of 32 columns (wide.h), recomputed backward from every 32nd, a few vectorised
passes over it a step, where the chunked PyTorch forms (ops.chunk.kda, ops.erase_delta,
ops.chunk.delta.rwkv7) run (C, C) products, sub-chunk decays and a triangular solve per
chunk.

    z_t = S_{t-1}^T a_t,   S_t = diag(exp w_t) S_{t-1} + b_t z_t^T + k_t v_t^T,   o_t = scale S_t^T r_t

(RWKV-7's transition diag(e^w) + b a^T). b = None is the erase-key delta rule b = -k,
S_t = diag(e^{w_t}) S_{t-1} + k_t (v_t - z_t)^T, one rank-one term a step: KDA, GDN-2
(after=True: a = p e^w, the erase after the decay, formed in the kernel) and Comba (a = p,
before it, with one log-decay a head).

r, k, a, b: (B, T, H, K); w: (B, T, H, K) or (B, T, H, 1); v: (B, T, H, V); S0: (B, H, K, V);
all one dtype (float32 or
float64) on the CPU (`ops.backend.use_native`). Returns o (B, T, H, V) and S_T, differentiable
in all inputs. Threads split the (batch row, head) pairs. The caller handles non-finite
inputs (ops.finite).
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, flop_count, native

CK = 32  # the C file's checkpoint interval


def flops(pairs: int, tokens: int, K: int, V: int, hasb: bool) -> tuple[int, int]:
    """(forward, backward) FLOPs of vdelta_fwd / vdelta_bwd over `pairs` (batch, head) pairs
    of `tokens` steps, 2 a multiply-add (as the counter books a product), per entry of the
    (K, V) state; the products only (rank-one terms, reads, row sums), not the decay's
    diag(d) S. Forward a step: b z^T (with b), k v^T (k u^T without), the read S^T r and the
    next step's z = S^T e (4 with b, else 3), and z_0 = S_0^T e_0 once. Backward a step: the
    rebuild's b z^T and k v^T (2, else 1); the transpose's da and dw row sums and e dz^T (3);
    the read's r do^T, dr and dk row sums, with b db's row sum and dz, dv (6, else dz: 4).
    Booked while counting (ops.flop_count: KDA, GDN-2, Comba and RWKV-7 take this path there,
    as the CPU timing does)."""
    kv = pairs * K * V
    return 2 * kv * ((4 if hasb else 3) * tokens + (tokens > 0)), 2 * kv * (11 if hasb else 8) * tokens


def load():
    return native.load("vector_delta")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    F = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return (native.kernel(lib, "vdelta_fwd", dtype, [P] * 11 + [F] + [L] * 8),
            native.kernel(lib, "vdelta_bwd", dtype, [P] * 17 + [F] + [L] * 8))


class _NativeVectorDelta(first_order.Function):
    @staticmethod
    def forward(ctx, lib, r, w, k, v, a, b, S0, scale, after, plain):
        orig = (r, w, k, v, a, b, S0)  # for `twice` (the copies below have no autograd history)
        r, w, k, v, a, S0 = (t.contiguous() for t in (r, w, k, v, a, S0))
        b = None if b is None else b.contiguous()
        B, Tn, H, K = r.shape
        V = v.shape[-1]
        fwd, _ = _kernels(lib, r.dtype)
        o, z, ST = torch.empty_like(v), torch.empty_like(v), torch.empty_like(S0)
        grad = any(ctx.needs_input_grad)
        ck = r.new_empty(B, H, -(-Tn // CK), K * native.tile_pad(V)) if grad else None
        P = native.ptr
        native.run(fwd, [(P(r), P(w), P(k), P(v), P(a), P(b), P(S0), P(o), P(z), P(ST), P(ck),
                          scale, after, w.shape[-1], Tn, H, K, V, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        flop_count.add(flops(B * H, Tn, K, V, b is not None)[0])
        if grad:
            ctx.save_for_backward(r, w, k, v, a, b, z, ck, *orig)
        ctx.lib, ctx.scale, ctx.after, ctx.plain = lib, scale, after, plain
        return o, ST

    @staticmethod
    def twice(ctx, do, dST):  # under create_graph: autograd through the caller's plain form
        return (None, *first_order.replay(ctx.plain, ctx.saved_tensors[8:], (do, dST),
                                          ctx.needs_input_grad[1:8]), None, None, None)

    @staticmethod
    def backward(ctx, do, dST):
        r, w, k, v, a, b, z, ck = ctx.saved_tensors[:8]
        B, Tn, H, K = r.shape
        V = v.shape[-1]
        _, bwd = _kernels(ctx.lib, r.dtype)
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dST = None if dST is None else dST.contiguous()
        dr, dw, dk, dv, da = (torch.empty_like(t) for t in (r, w, k, v, a))
        db = None if b is None else torch.empty_like(b)
        dS0 = r.new_empty(B, H, K, V)
        P = native.ptr
        native.run(bwd, [(P(r), P(w), P(k), P(v), P(a), P(b), P(z), P(ck), P(dST), P(do),
                          P(dr), P(dw), P(dk), P(dv), P(da), P(db), P(dS0), ctx.scale,
                          ctx.after, w.shape[-1], Tn, H, K, V, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        flop_count.add(flops(B * H, Tn, K, V, b is not None)[1])
        return None, dr, dw, dk, dv, da, db, dS0, None, None, None


def vector_delta(lib, r, w, k, v, a, b, S0, scale, after=False, plain=None):
    """(o (B, T, H, V), S_T (B, H, K, V)); `lib` = load(); b None for b = -k (v - z).
    after=True: a holds p and the erase key is p e^w (the erase reads the decayed state).
    w: (B, T, H, K), or (B, T, H, 1) for one log-decay a head. plain(r, w, k, v, a, b, S0)
    -> (o, S_T): the same op in PyTorch (the caller's chunk form), which the node's `twice`
    differentiates under create_graph (None: it raises there)."""
    return _NativeVectorDelta.apply(lib, r, w, k, v, a, b, S0, scale, int(after), plain)


def _torch_gates(z, k, v, bs):
    """gated_inputs in PyTorch: the form _Gates's `twice` differentiates."""
    zb, zw = z.split([k.shape[-1], v.shape[-1]], -1)
    return bs * torch.sigmoid(zb) * k, torch.sigmoid(zw) * v


class _Gates(first_order.Function):
    @staticmethod
    def forward(ctx, lib, z, k, v, bs):
        orig = (z, k, v)  # for `twice` (the copies below have no autograd history)
        z, k, v = z.contiguous(), k.contiguous(), v.contiguous()
        N, A, C = z.shape[0], k.shape[-1], v.shape[-1]
        P, L = ctypes.c_void_p, ctypes.c_long
        F = ctypes.c_double if z.dtype == torch.float64 else ctypes.c_float
        fwd = native.kernel(lib, "gates_fwd", z.dtype, [P] * 5 + [F] + [L] * 4)
        p, u = torch.empty_like(k), torch.empty_like(v)
        P = native.ptr
        native.run(fwd, [(P(z), P(k), P(v), P(p), P(u), bs, A, C, r0, r1)
                         for r0, r1 in native.rows(N)])
        ctx.save_for_backward(z, k, v, *orig)
        ctx.lib, ctx.bs = lib, bs
        return p, u

    @staticmethod
    def twice(ctx, dp, du):
        return (None, *first_order.replay(_torch_gates, (*ctx.saved_tensors[3:], ctx.bs), (dp, du),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dp, du):
        z, k, v = ctx.saved_tensors[:3]
        N, A, C = z.shape[0], k.shape[-1], v.shape[-1]
        dp = torch.zeros_like(k) if dp is None else dp.contiguous()
        du = torch.zeros_like(v) if du is None else du.contiguous()
        P, L = ctypes.c_void_p, ctypes.c_long
        F = ctypes.c_double if z.dtype == torch.float64 else ctypes.c_float
        bwd = native.kernel(ctx.lib, "gates_bwd", z.dtype, [P] * 8 + [F] + [L] * 4)
        dz, dk, dv = torch.empty_like(z), torch.empty_like(k), torch.empty_like(v)
        P = native.ptr
        native.run(bwd, [(P(dp), P(du), P(z), P(k), P(v), P(dz), P(dk), P(dv), ctx.bs, A, C,
                          r0, r1) for r0, r1 in native.rows(N)])
        return None, dz, dk, dv, None


def gated_inputs(lib, z, k, v, bs=1.0):
    """GDN-2's erase key and value from its gates' pre-sigmoids in one C pass each way:
    z (N, A + C) (z_b then z_w per row), k (N, A), v (N, C), one dtype on the CPU ->
    (bs sigmoid(z_b) o k, sigmoid(z_w) o v), differentiable in z, k, v."""
    return _Gates.apply(lib, z, k, v, float(bs))
