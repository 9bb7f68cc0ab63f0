"""PaTH attention's chunk pieces in C (path_chunk.c): every sub-chunk's UT transform and the
pairwise merges up to the attention block, forward and backward, one C call per thread over
whole (batch x head) rows, a block's pieces in cache (ops.path_attention's torch form, _UT
and _merge, ran ~50 batched products, a triangular solve and ~60 elementwise passes over
(B, H, N, ...) tensors a fwd+bwd).

    pieces(lib, q, k, w, beta, scale, c, levels) -> qs, k1, P, intra
        q, k, w (B, T, H, D), beta (B, T, H); blocks of C = c 2^levels steps (the last
        zero-padded), N of them: qs = scale Q' and k1 = K' (B, H, N, C, D), P (B, H, N, D, D),
        intra (B, H, N, C, C) times scale, zero above the diagonal (ops.path_attention's
        module docstring names the pieces). Differentiable in q, k, w and beta; the backward
        recomputes each block's forward.
    pieces_qkv(lib, qkv, w, beta, scale, c, levels) -> qs, k1, P, intra, v
        the same from the fused projection qkv (B, T, 3, H, D), q, k, v = qkv.unbind(2):
        q and k read in place, v returned as (B, H, T, D) contiguous (the layout the
        attention kernel reads), the gradient of q, k and v written into one tensor (no
        split into heads and no stack of the three gradients).

    chunk_args / chunk_fwd / chunk_bwd / fused_fwd: the kernels' calls themselves, for a
        Function that runs them with others (ops.path_attention._PathQKV: w and beta given
        raw, their l2norm and 2 sigmoid in the kernel, and the inputs' finiteness summed
        there; fused_fwd runs the block attention's forward on each block's pieces in cache).

All float32 or all float64 on the CPU (`ops.backend.use_native`); `lib` = load().
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native


def load():
    return native.load("path_chunk")


def _kernel(lib, name, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    D = ctypes.c_double
    if "fused" in name:  # the sizes in one array (_sizes): run() takes the team (<= 32 ints)
        n = {"path_fused_fwd": 16, "path_fused_bwd": 20}[name]
        return native.kernel(lib, name, dtype, [P] * n + [D, D, L, L])
    n = {"path_chunk_fwd": 11, "path_chunk_bwd": 13}[name]
    return native.kernel(lib, name, dtype, [P] * n + [L] * 16 + [D, D, L, L])


def _sizes(extra, *more):
    """The fused kernels' array of sizes and strides: chunk_args' 16 integers, then more
    (KT, PT, Lk, Lv), int64; and chunk_args' two floats (eps, scale)."""
    return torch.tensor([*extra[:16], *more], dtype=torch.int64), extra[16:]


def _dense(t):
    """t with a unit channel stride and no zero stride (its gradient is written with its
    strides)."""
    return t if t.stride(-1) == 1 and 0 not in t.stride() else t.contiguous()


def chunk_args(q, w, beta, scale, c, levels, raw_eps=None):
    """The kernels' trailing arguments for q (B, T, H, D) (k with q's strides), w, beta.
    raw_eps: w and beta are the projections before the l2norm (that eps: w / max(|w|, eps))
    and 2 sigmoid, which the kernels apply (forward and backward)."""
    _, Tn, H, D = q.shape
    N = -(-Tn // (c << levels))
    strides = [s for t in (q, w, beta) for s in (t.stride(0), t.stride(2), t.stride(1))]
    return (Tn, H, D, c, levels, N, *strides, int(raw_eps is not None), float(raw_eps or 0),
            float(scale))


def chunk_fwd(lib, q, k, w, beta, extra, v=None, check=False, bias=None):
    """The kernel's pieces qs, k1, P, intra of q, k, w, beta (q and k with one set of
    strides; extra = chunk_args), and with check fin (B H): 0 where the head-row's q, k, w,
    beta (and v, with q's strides, when given) are finite, else inf or NaN (else None).
    bias (H,): added to raw beta before its sigmoid."""
    B, _, H, D = q.shape
    _, _, _, c, levels, N = extra[:6]
    C = c << levels
    qs, k1 = q.new_empty(B, H, N, C, D), q.new_empty(B, H, N, C, D)
    P, intra = q.new_empty(B, H, N, D, D), q.new_empty(B, H, N, C, C)
    fin = q.new_zeros(B * H) if check else None
    native.run(_kernel(lib, "path_chunk_fwd", q.dtype),
               [(*(native.ptr(t) for t in (q, k, w, beta, qs, k1, P, intra, v, fin, bias)),
                 *extra, *r) for r in native.rows(B * H) or [(0, 0)]])
    return qs, k1, P, intra, fin


def fused_fwd(lib, q, k, w, beta, v, extra, bias, Lk, vals=None):
    """chunk_fwd with check and the block attention (ops.path_attention._attend_fwd, no
    cache) in one kernel (path_fused_fwd: k1 and intra never leave cache), for T a multiple
    of the block: o (B, T, H, D), keys (B, H, Lk, D) (zero past T), KS, PS (what the
    attention backward reads), fin, qs, P (chunk_fwd's), and IN (B H N, 3 C D + 3 C), each
    block's inputs as the kernel loaded them (w normalised, beta's sigmoid, w's 1 / norm and
    floor flag), which fused_bwd reads instead of the projection's strided rows.
    vals: None or (B, H, Lv, D) contiguous, Lv >= T: the values v written into its first T
    slots (a fresh cache of values; the kernel reads them there), the rest left as it is."""
    B, Tn, H, D = q.shape
    c, levels, N = extra[3:6]
    C = c << levels
    KT, PT = sum(n * C for n in range(N)) * D, sum(C * (n + 1) * C for n in range(N))
    qs, P = q.new_empty(B, H, N, C, D), q.new_empty(B, H, N, D, D)
    o, keys = q.new_empty(B, N * C, H, D), q.new_empty(B, H, Lk, D)
    KS, PS, fin = q.new_empty(B * H, KT), q.new_empty(B * H, PT), q.new_zeros(B * H)
    IN = q.new_empty(B * H * N, 3 * C * D + 3 * C)
    Lv = 0 if vals is None else vals.shape[2]
    assert vals is None or (vals.shape == (B, H, Lv, D) and vals.is_contiguous() and Lv >= Tn)
    sizes, floats = _sizes(extra, KT, PT, Lk, Lv)
    native.run(_kernel(lib, "path_fused_fwd", q.dtype),
               [(*(native.ptr(t) for t in (q, k, w, beta, v, fin, bias, o, keys, KS, PS, qs,
                                            P, IN, vals, sizes)), *floats, *r)
                for r in native.rows(B * H) or [(0, 0)]])
    return o, keys, KS, PS, fin, qs, P, IN


def fused_bwd(lib, q, k, w, beta, v, qs, P, KS, PS, IN, do, dkeys, dq, dk, dv, dw, db, extra,
              bias, dvals=None):
    """fused_fwd's backward in one kernel (path_fused_bwd: each block's piece gradients
    from cache into its chunk backward; IN fused_fwd's): do (B, T, H, D), dkeys (B, H, Lk, D)
    or None, dvals (fused_fwd's vals' gradient, (B, H, Lv, D)) or None -> dq, dk, dv
    (written, q's strides; dv plus dvals' first T slots), dw, db (written, w's and beta's
    strides)."""
    B, Tn, H, D = q.shape
    c, levels, N = extra[3:6]
    KT, PT = KS.shape[1], PS.shape[1]
    do = do.contiguous()
    dkeys = None if dkeys is None else dkeys.contiguous()
    Lk = 0 if dkeys is None else dkeys.shape[2]
    dvals = None if dvals is None else dvals.contiguous()
    Lv = 0 if dvals is None else dvals.shape[2]
    assert dq.stride() == q.stride() and dk.stride() == q.stride() and dv.stride() == q.stride()
    assert dw.stride() == w.stride() and db.stride() == beta.stride()
    sizes, floats = _sizes(extra, KT, PT, Lk, Lv)
    native.run(_kernel(lib, "path_fused_bwd", q.dtype),
               [(*(native.ptr(t) for t in (q, k, w, beta, v, qs, P, KS, PS, IN, do, dkeys, dq,
                                            dk, dv, dw, db, bias, dvals, sizes)), *floats, *r)
                for r in native.rows(B * H) or [(0, 0)]])


def chunk_bwd(lib, q, k, w, beta, grads, dq, dk, extra, dw=None, db=None, bias=None):
    """The input gradients into dq, dk (q's strides) and dw, dbeta (given with w's and
    beta's strides, else new) from the gradients of the four pieces; bias as chunk_fwd's."""
    B, _, H, _ = q.shape
    dqs, dk1, dP, dintra = (g.contiguous() for g in grads)
    dw, db = (torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
              if d is None else d for t, d in ((w, dw), (beta, db)))
    assert dw.stride() == w.stride() and db.stride() == beta.stride()
    native.run(_kernel(lib, "path_chunk_bwd", q.dtype),
               [(*(native.ptr(t) for t in (q, k, w, beta, dqs, dk1, dP, dintra,
                                            dq, dk, dw, db, bias)), *extra, *r)
                for r in native.rows(B * H) or [(0, 0)]])
    return dw, db


def _forward(ctx, lib, q, k, w, beta, scale, c, levels):
    """chunk_fwd; ctx keeps what _backward reads."""
    ctx.lib, ctx.extra = lib, chunk_args(q, w, beta, scale, c, levels)
    return chunk_fwd(lib, q, k, w, beta, ctx.extra)[:4]


def _backward(ctx, q, k, w, beta, grads, dq, dk):
    return chunk_bwd(ctx.lib, q, k, w, beta, grads, dq, dk, ctx.extra)


def _twice(ctx, args, grads, needs):
    """The pieces' `twice`: replay of the caller's plain form (ops.path_attention's
    _pieces_plain, passed in: ops.native imports nothing above it) over the inputs as given."""
    first_order.plain_given(ctx.plain, ctx.name)
    return first_order.replay(ctx.plain, args, grads, needs)


class _Pieces(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, w, beta, scale, c, levels, plain):
        orig = (q, k, w, beta)  # for `twice` (the copies below have no autograd history)
        q, k, w, beta = (_dense(t) for t in (q, k, w, beta))
        if q.stride() != k.stride():  # one set of strides for both
            q, k = q.contiguous(), k.contiguous()
        ctx.save_for_backward(q, k, w, beta, *orig)
        ctx.name = "_Pieces"
        ctx.plain = None if plain is None else (
            lambda q, k, w, beta: plain(q, k, w, beta, scale, c, levels))
        return _forward(ctx, lib, q, k, w, beta, scale, c, levels)

    @staticmethod
    def twice(ctx, *grads):
        return (None, *_twice(ctx, ctx.saved_tensors[4:], grads, ctx.needs_input_grad[1:5]),
                None, None, None, None)

    @staticmethod
    def backward(ctx, *grads):
        q, k, w, beta = ctx.saved_tensors[:4]
        dq, dk = (torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
                  for t in (q, k))
        return (None, dq, dk, *_backward(ctx, q, k, w, beta, grads, dq, dk), None, None, None,
                None)


class _PiecesQKV(first_order.Function):
    @staticmethod
    def forward(ctx, lib, qkv, w, beta, scale, c, levels, plain):
        orig = (qkv, w, beta)  # for `twice`
        qkv, w, beta = qkv.contiguous(), _dense(w), _dense(beta)
        q, k, v = qkv.unbind(2)
        ctx.save_for_backward(qkv, w, beta, *orig)
        ctx.name = "_PiecesQKV"
        ctx.plain = None if plain is None else (
            lambda qkv, w, beta: (*plain(*qkv.unbind(2)[:2], w, beta, scale, c, levels),
                                  qkv.unbind(2)[2].transpose(1, 2)))
        return (*_forward(ctx, lib, q, k, w, beta, scale, c, levels),
                v.transpose(1, 2).contiguous())

    @staticmethod
    def twice(ctx, *grads):
        return (None, *_twice(ctx, ctx.saved_tensors[3:], grads, ctx.needs_input_grad[1:4]),
                None, None, None, None)

    @staticmethod
    def backward(ctx, dqs, dk1, dP, dintra, dv):
        qkv, w, beta = ctx.saved_tensors[:3]
        q, k, _ = qkv.unbind(2)
        dqkv = torch.empty_like(qkv)
        dq, dk, dvs = dqkv.unbind(2)  # q's strides: the kernel writes them in place
        dw, db = _backward(ctx, q, k, w, beta, (dqs, dk1, dP, dintra), dq, dk)
        if dv is None:
            dvs.zero_()
        else:
            dvs.copy_(dv.transpose(1, 2))
        return None, dqkv, dw, db, None, None, None, None


def pieces(lib, q, k, w, beta, scale, c, levels, plain=None):
    """plain: the same pieces in PyTorch, plain(q, k, w, beta, scale, c, levels) (the
    node's `twice` replays it; None: create_graph=True through the node raises)."""
    return _Pieces.apply(lib, q, k, w, beta, scale, c, levels, plain)


def pieces_qkv(lib, qkv, w, beta, scale, c, levels, plain=None):
    """plain as pieces'."""
    return _PiecesQKV.apply(lib, qkv, w, beta, scale, c, levels, plain)
