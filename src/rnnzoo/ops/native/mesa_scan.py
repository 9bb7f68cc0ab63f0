"""MesaNet's readout (ops.mesa) as its recurrence in C (mesa_scan.c), forward and backward:
each step's conjugate-gradient solve runs on that step's own H_t (K x K, in cache), n matrix-
vector products of K^2 a step, where the chunkwise PyTorch form applies H_t through (C, K)
and (C, C) products (K^2 + 2 C K a step and iteration) and autograd keeps every iterate.
The backward runs the CG lines in reverse (the truncated solve's exact gradient, as autograd
through the loop), recomputing each step's iterates and its H_t, G_t from every 8th state.
The kernels run `lanes` (batch row, head) pairs at once, one per vector lane (16 floats or 8
doubles with AVX-512): every product and division of the recurrence and of the solves is then
one vector operation for the group, with no horizontal sums or serial scalar chains.

q, k: (B, T, H, K); v: (B, T, H, V); g (log-decays), beta: (B, T, H); lamb: (H, K); H0:
(B, H, K, K); G0: (B, H, K, V); all one dtype (float32 or float64) on the CPU
(`ops.backend.use_native`), finite (the caller's `finite_inputs`). Returns o (B, T, H, V),
H_T, G_T, differentiable in all eight tensors. Threads split the groups of pairs.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, flop_count, native

CK = 8  # the C file's checkpoint interval


def flops(steps: int, its: int, K: int, V: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of the kernels over `steps` (pair, token) steps whose solves
    ran `its` CG iterations in all, 2 a multiply-add. Forward: H_t, G_t's rank-one updates
    (2 K^2 + 2 K V), an iteration's H_t^T p (2 K^2), the readout G_t^T x (2 K V). Backward:
    the updates again, each iteration recomputed, its H dAp and its p dAp^T into dH_t (3 x
    2 K^2), dx = G_t dout and x dout^T (4 K V), and dk, dv, dbeta, dgamma from the adjoints
    (3 x 2 K^2 + 3 x 2 K V)."""
    KK, KV = K * K, K * V
    return (steps * (2 * KK + 4 * KV) + its * 2 * KK,
            steps * (8 * KK + 12 * KV) + its * 6 * KK)


def load():
    return native.load("mesa_scan")


def _kernels(lib, dtype):
    P, L, D = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
    tail = [L] * 5 + [D, L, D, D, L, L]
    return (native.kernel(lib, "mesa_fwd", dtype, [P] * 13 + tail),
            native.kernel(lib, "mesa_bwd", dtype, [P] * 18 + tail))


def _groups(lib, dtype, pairs: int) -> tuple[int, list[tuple[int, int]]]:
    """(lanes, the threads' pair ranges): the kernels run `lanes` pairs at once, a group,
    so each range starts at a multiple of it (a group is one thread's, and its checkpoint
    block is in the group's lane layout)."""
    fn = getattr(lib, f"mesa_lanes_{'f64' if dtype == torch.float64 else 'f32'}")
    fn.argtypes, fn.restype = [], ctypes.c_long
    lanes = fn()
    return lanes, [(a * lanes, min(b * lanes, pairs)) for a, b in native.rows(-(-pairs // lanes))]


class _NativeMesa(first_order.Function):
    @staticmethod
    def forward(ctx, lib, steps, eps, tol, q, k, v, g, beta, lamb, H0, G0, plain):
        orig = (q, k, v, g, beta, lamb, H0, G0)  # for `twice` (the copies have no history)
        q, k, v, g, beta, lamb, H0, G0 = (t.contiguous() for t in (q, k, v, g, beta, lamb, H0, G0))
        B, T, H, K = q.shape
        V = v.shape[-1]
        nck = -(-T // CK)
        o, HT, GT = torch.empty_like(v), torch.empty_like(H0), torch.empty_like(G0)
        lanes, ranges = _groups(lib, q.dtype, B * H)
        ck = q.new_empty(-(-B * H // lanes), nck, K * K + K * V, lanes)
        its = torch.zeros(B * H, dtype=torch.long)
        scalars = (T, H, K, V, steps, 0.0 if eps is None else float(eps), int(eps is None),
                   torch.finfo(q.dtype).tiny, float(tol))
        fwd, _ = _kernels(lib, q.dtype)
        P = native.ptr
        native.run(fwd, [(P(q), P(k), P(v), P(g), P(beta), P(lamb), P(H0), P(G0), P(o), P(HT),
                          P(GT), P(ck), P(its), *scalars, *r) for r in ranges])
        ctx.save_for_backward(q, k, v, g, beta, lamb, ck, *orig)
        ctx.lib, ctx.scalars, ctx.ranges, ctx.plain = lib, scalars, ranges, plain
        ctx.its = int(its.sum())
        flop_count.add(flops(B * T * H, ctx.its, K, V)[0])
        return o, HT, GT

    @staticmethod
    def twice(ctx, do, dHT, dGT):  # under create_graph: autograd through the caller's plain form
        return (None,) * 4 + first_order.replay(ctx.plain, ctx.saved_tensors[7:], (do, dHT, dGT),
                                                ctx.needs_input_grad[4:12]) + (None,)

    @staticmethod
    def backward(ctx, do, dHT, dGT):
        q, k, v, g, beta, lamb, ck = ctx.saved_tensors[:7]
        B, T, H, K = q.shape
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dHT, dGT = (None if t is None else t.contiguous() for t in (dHT, dGT))
        dq, dk, dv, dg, dbeta = (torch.empty_like(t) for t in (q, k, v, g, beta))
        dlamb = q.new_empty(B, H, K)
        dH0, dG0 = q.new_empty(B, H, K, K), q.new_empty(B, H, K, v.shape[-1])
        _, bwd = _kernels(ctx.lib, q.dtype)
        P = native.ptr
        native.run(bwd, [(P(q), P(k), P(v), P(g), P(beta), P(lamb), P(ck), P(dHT), P(dGT), P(do),
                          P(dq), P(dk), P(dv), P(dg), P(dbeta), P(dlamb), P(dH0), P(dG0),
                          *ctx.scalars, *r) for r in ctx.ranges])
        flop_count.add(flops(B * T * H, ctx.its, K, v.shape[-1])[1])
        return None, None, None, None, dq, dk, dv, dg, dbeta, dlamb.sum(0), dH0, dG0, None


def mesa(lib, q, k, v, g, beta, lamb, H0, G0, steps: int, eps: float | None, tol: float = 0.0,
         plain=None):
    """(o, H_T, G_T); `lib` = load(); eps None: the relative CG guard, tol the stopping
    tolerance (ops.mesa.conjugate_gradient). plain(q, k, v, g, beta, lamb, H0, G0) -> (o,
    H_T, G_T): the same readout in PyTorch (ops.mesa's chunk form), which the node's `twice`
    differentiates under create_graph (None: it raises there)."""
    return _NativeMesa.apply(lib, steps, eps, tol, q, k, v, g, beta, lamb, H0, G0, plain)
