"""Log-linear attention's intra-chunk block in C (log_linear.c), forward and backward:
y = (Q K^T o M) V per chunk with M[t, s] = lam[t, lev(t, s)] e^(G_t - G_s) (s <= t), the
level of each pair from the offsets themselves (Fenwick runs of a chunk on the aligned grid,
`ops.log_linear._aligned`), plus the chunks' reads of the Fenwick blocks' states and the final
buckets. The kernels read the layer's time-major tensors in place (`chunks_tm`: q, k (B, Tp,
G, K) strided, a group shared by H / G heads; v, lam (B, Tp, H, .)); `chunks` is the same on
heads-first (B, H, N, C, .) tensors. Float32 or float64 on the CPU (`ops.backend.use_native`).
Differentiable in all inputs; threads split the (batch, head, chunk) blocks. The PyTorch form
is `ops.log_linear._Intra` and the torch chunk states (the fallback and the tests' oracle)."""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native

TILE = 32  # rows of a causal tile: its products run over columns [0, i1) only


def load():
    return native.load("log_linear")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "ll_fwd", dtype, [P] * 19 + [L] * 2),
            native.kernel(lib, "ll_bwd", dtype, [P] * 29 + [L] * 2))


def _sizes(*z):
    """The kernels' sizes and strides as one int64 array: with them as separate arguments
    ll_fwd / ll_bwd took 35 / 50 integers, over the 32 that team.c passes, and ops.native.run
    ran their second range on a pool thread beside torch's spinning OpenMP worker."""
    return torch.tensor(z, dtype=torch.int64)


def _qk_layout(q, k, H):
    """q, k (B, Tp, G, K) with unit last stride and the same strides (else contiguous copies)
    -> (q, k, (qb, qt, qg, hg)): the batch, step and group strides, heads per group."""
    if q.stride() != k.stride() or q.stride(-1) != 1 or q.shape != k.shape:
        q, k = q.contiguous(), k.contiguous()
    return q, k, (*q.stride()[:3], H // q.shape[2])


def _v_layout(v):
    """v (B, Tp, H, V) with its heads V apart and unit last stride (a column view of the
    layer's conv output), else a contiguous copy -> (v, (vb, vt)): the batch and step strides."""
    if v.stride(-1) != 1 or v.stride(2) != v.shape[-1]:
        v = v.contiguous()
    return v, tuple(v.stride()[:2])


def _wide(q, k, v):
    """The tensor whose last dim q, k (B, Tp, G, K) and v (B, Tp, H, V) tile as column views
    (the layer's conv output (B, Tp, W), W = 2 G K + H V), contiguous, in the layouts the C
    block reads in place; else None."""
    base = q._base
    if base is None or k._base is not base or v._base is not base or base.dim() != 3:
        return None
    if not base.is_contiguous() or base.shape[:2] != q.shape[:2]:
        return None
    Gq, K = q.shape[2:]
    H, V = v.shape[2:]
    if (q.stride() != k.stride() or q.stride() != (*base.stride()[:2], K, 1)
            or v.stride() != (*base.stride()[:2], V, 1)):
        return None
    cols = sorted((t.storage_offset() - base.storage_offset(), n)
                  for t, n in ((q, Gq * K), (k, Gq * K), (v, H * V)))
    at = 0
    for o, n in cols:
        if o != at:
            return None
        at += n
    return base if at == base.shape[2] else None


class _NativeChunks(first_order.Function):
    @staticmethod
    def forward(ctx, lib, ip, N, check, q, k, v, u, G, lam, f, w, cP, cF, sk, wide, lp, plain):
        # for `twice` (the copies below have no autograd history)
        orig = (ip, q, k, v, u, G, lam, f, w, cP, cF, sk, wide, lp)
        B, Tp, _, K = q.shape
        H, V, L = v.shape[2], v.shape[-1], lam.shape[-1]
        C, P, NL = Tp // N, ip.shape[0], cF.shape[2]
        # the gradients of q, k, v as column views of one gradient of `wide` (no cat of three)
        ctx.wide = None if wide is None else tuple(t.storage_offset() - wide.storage_offset()
                                                   for t in (q, k, v))
        q, k, lay = _qk_layout(q, k, H)
        v, vlay = _v_layout(v)
        G, lam, f, cP, cF = (t.contiguous() for t in (G, lam, f, cP, cF))
        w = None if w is None else w.contiguous()
        u = None if u is None else u.contiguous()
        sk = None if sk is None else sk.contiguous()
        y = v.new_empty(v.shape)
        S = q.new_empty(B * H * N, C, C)
        F = v.new_empty(B, H, NL, K, V)
        U = v.new_empty(B, H, N, K, V)
        bad = v.new_empty(B * H) if check else None
        kern = _kernels(lib, q.dtype)
        ctx.set_materialize_grads(False)  # no (B, H, NL, K, V) zeros for unused final buckets
        z = _sizes(N, C, K, V, L, P, NL, min(TILE, C), H, *lay, *vlay)
        native.run(kern[0], [(*(native.ptr(t) for t in (q, k, v, u, G, lam, f, w, cP, cF, ip, lp,
                                                        sk, y, S, F, U, bad, z)), *p)
                             for p in native.rows(B * H)])
        ctx.save_for_backward(ip, lp, q, k, v, u, G, lam, f, w, cP, cF, S, U, sk, *orig)
        ctx.lib, ctx.N, ctx.lay, ctx.vlay, ctx.plain = lib, N, lay, vlay, plain
        if bad is None:
            return y, F
        ctx.mark_non_differentiable(bad)
        return y, F, bad

    @staticmethod
    def twice(ctx, dy, dF, *_):
        first_order.plain_given(ctx.plain, "_NativeChunks")
        ip, *rest = ctx.saved_tensors[15:]
        return (None, *first_order.replay(ctx.plain, (ip, ctx.N, False, *rest), (dy, dF),
                                          ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dy, dF, *_):
        ip, lp, q, k, v, u, G, lam, f, w, cP, cF, S, U, sk = ctx.saved_tensors[:15]
        B, Tp, Gq, K = q.shape
        H, V, L = v.shape[2], v.shape[-1], lam.shape[-1]
        N, lay, vlay = ctx.N, ctx.lay, ctx.vlay
        C, P, NL = Tp // N, ip.shape[0], cF.shape[2]
        dy = v.new_zeros(v.shape) if dy is None else dy.contiguous()
        dF = None if dF is None else dF.contiguous()
        # a group's heads summed in C where the threads can split whole batches (each call
        # then holds every head of its batches); else each head's, summed here
        gd = H // Gq if B >= torch.get_num_threads() else 1
        parts = ([(b0 * H, b1 * H) for b0, b1 in native.rows(B)] if gd > 1
                 else native.rows(B * H))
        dwide = None
        if ctx.wide is not None:  # dq, dk, dv written into their columns of one (B, Tp, W)
            W = 2 * Gq * K + H * V
            dwide = q.new_empty(B, Tp, W)
            dq_w, dk_w, dv = (dwide.as_strided((B, Tp, n, d), (Tp * W, W, d, 1), o)
                              for o, n, d in zip(ctx.wide, (Gq, Gq, H), (K, K, V)))
        else:
            dv = v.new_empty(v.shape)
        if dwide is not None and gd * Gq == H:  # each group's heads summed in C
            dq, dk = dq_w, dk_w
        else:
            dq, dk = (q.new_empty(B, Tp, H // gd, K) for _ in range(2))
        du = None if u is None else torch.empty_like(u)
        dsk = None if sk is None else v.new_empty(B, H)
        dG, dlam, df, dcP, dcF = (torch.empty_like(t) for t in (G, lam, f, cP, cF))
        dw = None if w is None else torch.empty_like(w)
        kern = _kernels(ctx.lib, q.dtype)
        z = _sizes(N, C, K, V, L, P, NL, min(TILE, C), H, *lay, gd, *vlay, *dq.stride()[:2],
                   *dv.stride()[:2])
        native.run(kern[1], [(*(native.ptr(t) for t in (q, k, v, u, G, lam, f, w, cP, cF, ip, lp,
                                                        S, U, dy, dF, sk, dsk, dq, dk, dv, du, dG,
                                                        dlam, df, dw, dcP, dcF, z)), *p)
                             for p in parts])
        if dq.shape[2] != Gq:
            dq, dk = (t.view(B, Tp, Gq, H // Gq, K).sum(3) for t in (dq, dk))
        if dwide is not None:
            if dq is not dq_w:
                dq_w.copy_(dq)
                dk_w.copy_(dk)
            dq = dk = dv = None
        dsk = None if dsk is None else dsk.sum(0)
        return (None, None, None, None, dq, dk, dv, du, dG, dlam, df, dw, dcP, dcF, dsk, dwide,
                None, None)


def chunks_tm(lib, ip, q, k, v, G, lam, f, w, cP, cF, u=None, check=False, skip=None, lp=None,
              plain=None):
    """The aligned chunk form's products (`ops.log_linear._aligned`) on time-major tensors:
    q, k (B, Tp, G, K) (any strides with a unit last one; head h reads group h // (H / G)),
    v (B, Tp, H, V), lam (B, Tp, H, L) the level weights, Tp = N C (the chunks in order);
    heads first: G (B, H, N, C) the decays' running sums within each chunk, f (B, H, N, C) the
    decay of each step to its chunk's end, w (B, H, P, C) the pairs' row weights, cP (B, H, P,
    N) the pairs' coefficients of the chunk states, cF (B, H, NL, N) the final buckets', ip
    (P,) int64 the pairs' chunks -> y (B, Tp, H, V): the intra-chunk block (ll_intra) plus the
    pairs' reads, and the final buckets F (B, H, NL, K, V) (ll_inter); `lib` = load().
    v may be a strided view (heads V apart, unit last stride: read in place). u (B, Tp, H) or
    None: per-step scales of v (the products read u_t v_t; its gradient du_t = v_t . dv'_t).
    check: a third output, (B H,) 0 for each (batch, head) row whose q, k, v, lam, G, u are all
    finite, NaN where one is not (each block's inputs summed while in cache), so that the caller
    needs no host pass of its own over them. skip (H,) or None: y also holds skip_h v_t (the
    unscaled v; Mamba-2's D x), added (and its gradients dv += skip dy, dskip = sum v . dy)
    while each row is in cache. lp (P,) int64 or None: the pairs' levels; then w is None and
    the kernels make w = lam[.., lp] e^G at each pair's chunk themselves (no indexed copy of
    lam and its scatter back each way). plain(ip, N, check, q, k, v, u, G, lam, f, w, cP, cF,
    skip, wide, lp) -> (y, F): the same in PyTorch (ops.log_linear's chunk form), which the
    node's `twice` differentiates (None: create_graph=True through it raises)."""
    if (w is None) == (lp is None):
        raise ValueError("chunks_tm: give w or lp, not both")
    return _NativeChunks.apply(lib, ip, G.shape[2], check, q, k, v, u, G, lam, f, w, cP, cF,
                               skip, _wide(q, k, v), lp, plain)


def chunks(lib, ip, q, k, v, G, lam, f, w, cP, cF, plain=None):
    """`chunks_tm` on heads-first tensors: q, k (B, H, N, C, K), v (.., V), lam (.., L), the
    rest as there -> y (B, H, N, C, V), F (B, H, NL, K, V)."""
    B, H, N, C = G.shape
    tm = [t.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, t.shape[-1]) for t in (q, k, v, lam)]
    y, F = chunks_tm(lib, ip, *tm[:3], G, tm[3], f, w, cP, cF, plain=plain)
    return y.view(B, N, C, H, -1).permute(0, 3, 1, 2, 4), F
