"""Row kernels of the attention family on the CPU, in C (attention.c), each differentiable:

    stick_breaking_attention(lib, q, k, v, visible, shift) -> o    stick-breaking
        attention (Tan et al. 2024, arXiv:2410.17980), o_i = sum_j A_ij v_j with
        A_ij = sigmoid(z_ij) prod_{l > j visible} sigmoid(-z_il), z = q k^T: the logits
        and weights a block of rows at a time (one pass a row each way in C, between
        matmuls), recomputed in the backward, instead of a dozen (B, H, Tq, Tk) tensors
        through autograd (layers.stickbreaking_attention keeps that form as its fallback);
        causal tiles skip the keys no query of the tile sees; a fresh (causal) sequence runs
        one C call per thread over whole (batch x head) rows.
    causal_softmax_attention(lib, q, k, v, bias) -> o    softmax attention of a fresh
        sequence, o_i = sum_{j <= i} softmax_j(q_i . k_j + b_j) v_j (b: a bias per key, FoX's
        forget gates, or none): one C call per thread over whole head-rows (sm_heads_fwd /
        sm_heads_bwd: each head's causal tiles of _SM_TILE queries, products and softmax
        rows in cache, no thread pool round trip per block); each tile's probabilities are
        kept for the backward up to _KEEP bytes in all, else recomputed there. Its products
        run on mm.h's mm (register tiles at the build's vector width; attention.c exports
        it), not MKL's bmm (AVX2 code on AMD CPUs).
    bmm(lib, a, b) -> a @ b                   the same batched product, differentiable: based
        / rebased's chunk products (ops.feature_maps), PaTH's (ops.path_attention).
    rope(lib, x, cos, sin) -> y             rotary positions (GPT-NeoX's pairs (a, a + R/2)
        of the first R = 2 cos.shape[-1] channels) on x (B, T, H, D) in one pass; y is
        (B, T, H, D) laid out as (B, H, T, D), the layout attention reads next.
    heads(lib, qkv, H, cos, sin) -> q, k, v   the same for a fused [q | k | v] projection,
        (B, H, T, D) each, split and transposed in the same pass.
    pairs(lib, x, w, lin) -> psi             ops.feature_maps.packed's features: x (..., d)
        -> (..., [1 + d +] d (d + 1) / 2), [1, x] first when lin, then w_p x_a x_b over the
        pairs a <= b in row-major order (w (P,)); gradient in x only.
    fused_sdpa(q, k, v, mask, causal, scale)  torch's F.scaled_dot_product_attention (its
        fused kernels, the C kernels' fallback), differentiable twice (`_FusedSDPA`).

All float32 or all float64 on the CPU (`ops.backend.use_native` decides); `lib` = load().
Rows are split over torch.get_num_threads() threads (ctypes lets go of the GIL).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from rnnzoo.ops import backend, first_order, native


def load():
    return native.load("attention")


def _kernel(lib, name, dtype):
    P, L, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    return native.kernel(lib, name, dtype, {"sb_fwd": [P] * 3 + [L] * 10,
                                            "sm_fwd": [P] * 2 + [L] * 7,
                                            "sm_bwd": [P] * 2 + [L] * 5,
                                            "rope": [P] * 4 + [L] * 11 + [ctypes.c_double, L, L],
                                            "qkv_rope": [P] * 6 + [L] * 5 + [ctypes.c_double, L, L],
                                            "sb_bwd": [P] * 5 + [L] * 10,
                                            "pairs_fwd": [P] * 3 + [L, i32, L, L],
                                            "pairs_bwd": [P] * 4 + [L, i32, L, L],
                                            "mm": [P] * 3 + [L] * 14,
                                            "sm_heads_fwd": [P] * 6 + [L] * 7,
                                            "path_fwd": [P] * 11 + [L] * 13,
                                            "path_bwd": [P] * 13 + [L] * 16,
                                            "sb_heads_fwd": [P] * 6 + [L] * 8,
                                            "sb_heads_bwd": [P] * 9 + [L] * 8,
                                            "sm_heads_bwd": [P] * 10 + [L] * 7}[name])


def _run(fn, ptrs, extra, rows):
    native.run(fn, [(*ptrs, *extra, *p) for p in native.rows(rows) or [(0, 0)]])


_BLOCK = 1 << 19  # entries of one block of logits (2 MB in float32): malloc reuses it
_TILE = 128       # queries a tile when causal: tile [i0, i1) reads keys [0, i1 + shift) only
_KEEP = 1 << 27   # bytes kept for a backward (128 MB: one per layer of a model); past it, recomputed


def _blocks(N, Tq, Tk, causal, shift, tile=None, block=None):
    """[(n0, n1, i0, i1, e)]: head-rows [n0, n1) and queries [i0, i1) over keys [0, e)
    (never empty: a first row with nothing visible still has its block, of zeros), blocks
    of about `block` logits (_BLOCK), query tiles of `tile` (_TILE) when causal."""
    tile, block = tile or _TILE, block or _BLOCK
    tile = min(tile, Tq) if causal else Tq
    out = []
    for i0 in range(0, Tq, tile):
        i1 = min(Tq, i0 + tile)
        e = max(1, min(Tk, i1 + shift) if causal else Tk)
        g = max(1, block // ((i1 - i0) * e))
        out += [(n0, min(N, n0 + g), i0, i1, e) for n0 in range(0, N, g)]
    return out


def _views(buf, blocks):
    """Each block's (g, t, e) view of the start of buf (one buffer of the largest block's
    size, or a list of one buffer a block)."""
    bufs = buf if isinstance(buf, list) else [buf] * len(blocks)
    return [b[:(n1 - n0) * (i1 - i0) * e].view(n1 - n0, i1 - i0, e)
            for b, (n0, n1, i0, i1, e) in zip(bufs, blocks)]


def _torch_stick_breaking(q, k, v, visible, shift):
    """stick_breaking_attention in PyTorch (layers.stickbreaking_attention's weights): the
    form the stick-breaking nodes' `twice` differentiate."""
    if visible is None:
        T = q.shape[-2]
        i = torch.arange(T, device=q.device)
        visible = i[None, :] <= i[:, None] + shift
    else:
        visible = visible[:, None]
    z = q @ k.transpose(-1, -2)
    log_om = torch.nn.functional.logsigmoid(-z).masked_fill(~visible, 0.0)
    after = log_om.flip(-1).cumsum(-1).flip(-1) - log_om          # sum over visible l > j
    A = (torch.nn.functional.logsigmoid(z) + after).masked_fill(~visible, float("-inf")).exp()
    return A @ v


class _StickBreaking(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, visible, shift):
        orig = (q, k, v, visible)  # for `twice` (the copies below have no autograd history)
        B, H, Tq, _ = q.shape
        Tk = k.shape[2]
        q2, k2, v2 = (t.reshape(B * H, *t.shape[2:]).contiguous() for t in (q, k, v))
        kT = k2.transpose(1, 2).contiguous()
        m = None if visible is None else visible.contiguous()
        fwd = _kernel(lib, "sb_fwd", q.dtype)
        Dh, Dv = q.shape[-1], v.shape[-1]
        out = q2.new_empty(B * H, Tq, Dv)
        blocks = _blocks(B * H, Tq, Tk, m is None, shift)
        # each block's logits and weights, kept for the backward in blocks of their own up to
        # _KEEP bytes in all; else two buffers reused by every block, recomputed there
        sizes = [(n1 - n0) * (i1 - i0) * e for n0, n1, i0, i1, e in blocks]
        keep = 2 * sum(sizes) * q.element_size() <= _KEEP
        zs, As = ([q2.new_empty(n) for n in sizes] for _ in range(2)) if keep else \
            q2.new_empty(2, max(sizes))
        zs, As = _views(zs, blocks), _views(As, blocks)
        for (n0, n1, i0, i1, e), z, A in zip(blocks, zs, As):
            g, t = n1 - n0, i1 - i0
            _mm(lib, q2[n0, i0], kT[n0], z, t, e, Dh, (Dh, 1), Tk, e, (Tq * Dh, Dh * Tk, t * e),
                g)
            _run(fwd, [native.ptr(z), native.ptr(m), native.ptr(A)],
                 (t, e, n0, H, Tq, Tk, i0, shift), g * t)
            _mm(lib, A, v2[n0], out[n0, i0], t, Dv, e, (e, 1), Dv, Dv, (t * e, Tk * Dv, Tq * Dv),
                g)
        ctx.save_for_backward(*orig, q2, k2, v2, kT, m, *(zs + As if keep else ()))
        ctx.lib, ctx.shift, ctx.shapes = lib, shift, (q.shape, k.shape, v.shape)
        return out.view(B, H, Tq, -1)

    @staticmethod
    def twice(ctx, do):
        return (None, *first_order.replay(_torch_stick_breaking, (*ctx.saved_tensors[:4], ctx.shift),
                                     (do,), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, do):
        q2, k2, v2, kT, m, *kept = ctx.saved_tensors[4:]
        (B, H, Tq, Dh), (_, _, Tk, _), vshape = ctx.shapes
        Dv, lib = vshape[-1], ctx.lib
        do2 = do.reshape(B * H, Tq, -1).contiguous()
        vT = v2.transpose(1, 2).contiguous()
        fwd, bwd = (_kernel(ctx.lib, n, q2.dtype) for n in ("sb_fwd", "sb_bwd"))
        dq = torch.empty_like(q2)
        dk, dv = torch.zeros_like(k2), torch.zeros_like(v2)
        blocks = _blocks(B * H, Tq, Tk, m is None, ctx.shift)
        bufs = q2.new_empty(4, max((n1 - n0) * (i1 - i0) * e for n0, n1, i0, i1, e in blocks))
        zs, As = (kept[:len(blocks)], kept[len(blocks):]) if kept else \
            (_views(bufs[0], blocks), _views(bufs[1], blocks))
        for (n0, n1, i0, i1, e), z, A, dA, dz in zip(blocks, zs, As, *(_views(b, blocks)
                                                                        for b in bufs[2:])):
            g, t = n1 - n0, i1 - i0
            extra = (t, e, n0, H, Tq, Tk, i0, ctx.shift)
            if not kept:
                _mm(lib, q2[n0, i0], kT[n0], z, t, e, Dh, (Dh, 1), Tk, e,
                    (Tq * Dh, Dh * Tk, t * e), g)
                _run(fwd, [native.ptr(z), native.ptr(m), native.ptr(A)], extra, g * t)
            _mm(lib, do2[n0, i0], vT[n0], dA, t, e, Dv, (Dv, 1), Tk, e, (Tq * Dv, Dv * Tk, t * e),
                g)
            _mm(lib, A, do2[n0, i0], dv[n0], e, Dv, t, (1, e), Dv, Dv, (t * e, Tq * Dv, Tk * Dv),
                g, acc=True)
            _run(bwd, [native.ptr(x) for x in (z, m, A, dA, dz)], extra, g * t)
            _mm(lib, dz, k2[n0], dq[n0, i0], t, Dh, e, (e, 1), Dh, Dh, (t * e, Tk * Dh, Tq * Dh),
                g)
            _mm(lib, dz, q2[n0, i0], dk[n0], e, Dh, t, (1, e), Dh, Dh, (t * e, Tq * Dh, Tk * Dh),
                g, acc=True)
        return (None, dq.view(B, H, Tq, -1), dk.view(B, H, Tk, -1), dv.view(vshape), None,
                None)


def _tile_scores(T: int, tile: int, shift: int = 0) -> int:
    """The scores a head's causal tiles keep: each tile of queries [i0, i1) against the keys
    [0, min(T, i1 + shift)), at least one (sb_heads_* and sm_heads_*'s packed P)."""
    return sum((min(T, i0 + tile) - i0) * max(1, min(T, i0 + tile + shift))
               for i0 in range(0, T, tile))


class _StickBreakingHeads(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, shift):
        orig = (q, k, v)  # for `twice`
        B, H, T, Dh = q.shape
        N, Dv, tile = B * H, v.shape[-1], min(_SB_TILE, T)
        q2, k2, v2 = (t.reshape(N, T, t.shape[-1]).contiguous() for t in (q, k, v))
        PT = _tile_scores(T, tile, shift)
        keep = 2 * N * PT * q.element_size() <= _KEEP
        Z, A = q2.new_empty(2, N, PT).unbind(0) if keep else (None, None)
        out = q2.new_empty(N, T, Dv)
        _run(_kernel(lib, "sb_heads_fwd", q.dtype),
             [native.ptr(t) for t in (q2, k2, v2, out, Z, A)], (T, Dh, Dv, tile, shift, PT), N)
        ctx.save_for_backward(q2, k2, v2, Z, A, *orig)
        ctx.lib, ctx.shift, ctx.tile, ctx.PT, ctx.vshape = lib, shift, tile, PT, v.shape
        return out.view(B, H, T, Dv)

    @staticmethod
    def twice(ctx, do):
        return (None, *first_order.replay(lambda q, k, v, s: _torch_stick_breaking(q, k, v, None, s),
                                     (*ctx.saved_tensors[5:], ctx.shift), (do,),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, do):
        q2, k2, v2, Z, A = ctx.saved_tensors[:5]
        N, T, Dh = q2.shape
        Dv = v2.shape[-1]
        do2 = do.reshape(N, T, Dv).contiguous()
        dq, dk, dv = torch.empty_like(q2), torch.empty_like(k2), torch.empty_like(v2)
        _run(_kernel(ctx.lib, "sb_heads_bwd", q2.dtype),
             [native.ptr(t) for t in (q2, k2, v2, do2, Z, A, dq, dk, dv)],
             (T, Dh, Dv, ctx.tile, ctx.shift, ctx.PT), N)
        shape = ctx.vshape[:2]
        return (None, dq.view(*shape, T, Dh), dk.view(*shape, T, Dh), dv.view(ctx.vshape),
                None)


def stick_breaking_attention(lib, q, k, v, visible=None, shift: int = 0):
    """o = A v with A the stick-breaking weights of the logits q k^T: q (B, H, Tq, Dh) (the
    scale already in), k (B, H, Tk, Dh), v (B, H, Tk, Dv) -> o (B, H, Tq, Dv). Visible keys:
    visible (B, Tq, Tk) bool (keys in position order), or None for causal with Tk = Tq: key
    j visible to query i when j <= i + shift (shift 0: the current token too; -1: before
    it): one C call per thread over whole head-rows (sb_heads_fwd / sb_heads_bwd), causal
    tiles of _SB_TILE queries reading only the keys they can see, each tile's logits and
    weights kept for the backward up to _KEEP bytes, else recomputed. With a mask: blocks of
    rows (2 MB of logits), recomputed in the backward unless they fit _KEEP."""
    if visible is None:
        return _StickBreakingHeads.apply(lib, q, k, v, shift)
    return _StickBreaking.apply(lib, q, k, v, visible, shift)



_SM_TILE = 64  # the causal softmax's tiles of queries: fastest measured
_SB_TILE = 64  # stick-breaking's causal tiles of a head-row (64: 141 ms, 128: 145, 256: 153)


def _mm(lib, A, B, C, m, n, k, a_strides, ldb, ldc, batch_strides, g, acc=False, b_cs=1):
    """C_b (m, n) = A_b (m, k) B_b (k, n) (acc: C_b += it) for the g blocks b of a batch, in C
    (mm.h: mm): A's entry (i, p) at A + b sa + i a_rs + p a_cs (a_strides = (a_rs, a_cs)),
    B's (p, j) at B + b sb + p ldb + j b_cs, rows of C ldc apart, batch_strides (sa, sb, sc);
    A, B, C the tensors whose data pointers start the first block."""
    _run(_kernel(lib, "mm", C.dtype), [native.ptr(t) for t in (A, B, C)],
         (m, n, k, *a_strides, ldb, b_cs, ldc, *batch_strides, int(acc)), g * m)


class _Bmm(first_order.Transformable):
    @staticmethod
    def forward(ctx, lib, a, b):
        (G, m, k), n = a.shape, b.shape[-1]
        c = a.new_empty(G, m, n)
        _mm(lib, a, b, c, m, n, k, a.stride()[1:], b.stride(1), n,
            (a.stride(0), b.stride(0), m * n), G, b_cs=b.stride(2))
        ctx.save_for_backward(a, b)
        ctx.lib = lib
        return c

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: torch's differentiable products
            return None, g @ b.transpose(1, 2), a.transpose(1, 2) @ g
        g = g.contiguous()
        (G, m, k), n = a.shape, b.shape[-1]
        da = db = None
        if ctx.needs_input_grad[1]:  # g b^T: b^T read through its strides
            da = a.new_empty(G, m, k)
            _mm(ctx.lib, g, b, da, m, k, n, (n, 1), b.stride(2), k,
                (m * n, b.stride(0), m * k), G, b_cs=b.stride(1))
        if ctx.needs_input_grad[2]:
            db = a.new_empty(G, k, n)
            _mm(ctx.lib, a, g, db, k, n, m, a.stride()[:0:-1], n, n,
                (a.stride(0), m * n, k * n), G)
        return None, da, db


def bmm(lib, a, b):
    """a @ b for a (..., m, k), b (..., k, n) of the same leading shape (no broadcasting) ->
    (..., m, n), through mm.h's mm (any strides of a and b: b with strided columns is packed
    a block at a time in the kernel), differentiable."""
    lead = a.shape[:-2]
    G = lead.numel()  # not -1: a product of empty matrices has no batch size to infer
    c = _Bmm.apply(lib, a.reshape(G, *a.shape[-2:]), b.reshape(G, *b.shape[-2:]))
    return c.view(*lead, *c.shape[-2:])


def _torch_causal(q, k, v, bias):
    """causal_softmax_attention in PyTorch: the form _CausalHeads's `twice` differentiates."""
    s = q @ k.transpose(-1, -2)
    s = s if bias is None else s + bias[..., None, :]
    T = q.shape[-2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v


def _torch_rope(x, cos, sin, scale=1.0):
    """x (B, T, H, D) turned by the angles of cos, sin (B, T, R/2), GPT-NeoX's pairs
    (a, a + R/2), times scale, in PyTorch (sin negated: turned back)."""
    half = cos.shape[-1]
    c, s = cos[:, :, None], sin[:, :, None]
    x1, x2 = x[..., :half], x[..., half:2 * half]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, x[..., 2 * half:]], -1) * scale


class _CausalHeads(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, bias):
        orig = (q, k, v, bias)  # for `twice` (the copies below have no autograd history)
        B, H, T, Dh = q.shape
        N, Dv, tile = B * H, v.shape[-1], min(_SM_TILE, T)
        q2, k2, v2 = (t.reshape(N, T, t.shape[-1]).contiguous() for t in (q, k, v))
        b2 = None if bias is None else bias.reshape(N, T).contiguous()
        PT = _tile_scores(T, tile)
        P = q2.new_empty(N, PT) if N * PT * q.element_size() <= _KEEP else None
        out = q2.new_empty(N, T, Dv)
        _run(_kernel(lib, "sm_heads_fwd", q.dtype),
             [native.ptr(t) for t in (q2, k2, v2, b2, out, P)], (T, Dh, Dv, tile, PT), N)
        ctx.save_for_backward(q2, k2, v2, b2, P, *orig)
        ctx.lib, ctx.shapes, ctx.tile = lib, (q.shape, v.shape, None if bias is None else
                                               bias.shape), tile
        return out.view(B, H, T, Dv)

    @staticmethod
    def twice(ctx, do):
        return (None, *first_order.replay(_torch_causal, ctx.saved_tensors[5:], (do,),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, do):
        q2, k2, v2, b2, P = ctx.saved_tensors[:5]
        (B, H, T, Dh), vshape, bshape = ctx.shapes
        N, Dv = B * H, vshape[-1]
        do2 = do.reshape(N, T, Dv).contiguous()
        dq, dk, dv = torch.empty_like(q2), torch.empty_like(k2), torch.empty_like(v2)
        db = None if b2 is None else torch.empty_like(b2)
        PT = 0 if P is None else P.shape[1]
        _run(_kernel(ctx.lib, "sm_heads_bwd", q2.dtype),
             [native.ptr(t) for t in (q2, k2, v2, b2, do2, P, dq, dk, dv, db)],
             (T, Dh, Dv, ctx.tile, PT), N)
        return (None, dq.view(B, H, T, Dh), dk.view(B, H, T, Dh), dv.view(vshape),
                None if db is None else db.view(bshape))


def causal_softmax_attention(lib, q, k, v, bias=None):
    """o_i = sum_{j <= i} softmax_j(q_i . k_j + bias_j) v_j: q, k (B, H, T, Dh) (the scale
    already in q), v (B, H, T, Dv), bias (B, H, T) or None -> o (B, H, T, Dv); gradients in
    q, k, v and bias. Causal tiles of _SM_TILE queries read only the keys they can see;
    threads split the B H head-rows (one C call each way per thread)."""
    return _CausalHeads.apply(lib, q, k, v, bias)


def _rope(lib, x, y, cos, sin, sign, scale=1.0):
    B, Tn, H, D = x.shape
    _run(_kernel(lib, "rope", x.dtype), [native.ptr(t) for t in (x, y, cos, sin)],
         (*x.stride()[:3], *y.stride()[:3], Tn, H, D, 2 * cos.shape[-1], sign, scale),
         B * Tn * H)


class _Rope(first_order.Function):
    @staticmethod
    def forward(ctx, lib, x, cos, sin):
        B, Tn, H, D = x.shape
        x = x if x.stride(-1) == 1 else x.contiguous()
        y = x.new_empty(B, H, Tn, D).transpose(1, 2)
        _rope(lib, x, y, cos, sin, 1)
        ctx.save_for_backward(cos, sin)
        ctx.lib = lib
        return y

    @staticmethod
    def twice(ctx, g):  # the turn back in PyTorch: linear in g, differentiable again
        cos, sin = ctx.saved_tensors
        return None, _torch_rope(g, cos, -sin), None, None

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.saved_tensors
        g = g if g.stride(-1) == 1 else g.contiguous()
        dx = g.new_empty(g.shape)
        _rope(ctx.lib, g, dx, cos, sin, -1)
        return None, dx, None, None


def _qkv_rope(lib, qkv, q, k, v, cos, sin, back, scale):
    """attention.c's qkv_rope: qkv (B, T, 3 H D) contiguous, q, k, v (B, H, T, D) contiguous
    (backward: None for a gradient not taken), cos, sin (B, T, R/2) contiguous."""
    B, Tn, _ = qkv.shape
    _, H, _, D = next(t for t in (q, k, v) if t is not None).shape
    _run(_kernel(lib, "qkv_rope", qkv.dtype), [native.ptr(t) for t in (qkv, q, k, v, cos, sin)],
         (Tn, H, D, 2 * cos.shape[-1], int(back), scale), B * Tn)


class _Heads(first_order.Function):
    @staticmethod
    def forward(ctx, lib, qkv, H, cos, sin, scale):
        B, Tn, HD3 = qkv.shape
        ys = [qkv.new_empty(B, H, Tn, HD3 // (3 * H)) for _ in range(3)]
        # v: no channel turned, a copy; q scaled
        _qkv_rope(lib, qkv.contiguous(), *ys, cos, sin, False, scale)
        ctx.save_for_backward(cos, sin)
        ctx.lib, ctx.scale = lib, scale
        return tuple(ys)

    @staticmethod
    def twice(ctx, *gs):  # the turns back in PyTorch: linear in gs, differentiable again
        cos, sin = ctx.saved_tensors
        B, H, Tn, D = next(g for g in gs if g is not None).shape
        parts = [g.new_zeros(B, Tn, H, D) if g is None else
                 _torch_rope(g.transpose(1, 2), c, -s, ctx.scale if i == 0 else 1.0)
                 for i, (g, c, s) in enumerate(zip(gs, (cos, cos, cos[..., :0]),
                                                   (sin, sin, sin[..., :0])))]
        return None, torch.stack(parts, 2).reshape(B, Tn, 3 * H * D), None, None, None, None

    @staticmethod
    def backward(ctx, *gs):
        cos, sin = ctx.saved_tensors
        B, H, Tn, D = next(g for g in gs if g is not None).shape
        dqkv = cos.new_empty(B, Tn, 3 * H * D)
        _qkv_rope(ctx.lib, dqkv, *(None if g is None else g.contiguous() for g in gs), cos, sin,
                  True, ctx.scale)
        return None, dqkv, None, None, None, None


def heads(lib, qkv, H: int, cos, sin, scale: float = 1.0):
    """q, k, v (B, H, T, D), contiguous, from the fused projection qkv (B, T, 3 H D) laid
    out [q | k | v], each head's D channels together; q and k turned by the rotary angles
    whose cos and sin are cos, sin (B, T, R/2) (rope), q times scale, v copied: one pass
    each way, the split and transposes and the gradient's cat included. Gradient in qkv."""
    return _Heads.apply(lib, qkv, H, cos.contiguous(), sin.contiguous(), scale)


def rope(lib, x, cos, sin):
    """x (B, T, H, D) turned by the angles whose cos and sin are cos, sin (B, T, R/2), R <= D
    even, contiguous: y (B, T, H, D), a transposed view of a contiguous (B, H, T, D);
    gradient in x only."""
    return _Rope.apply(lib, x, cos.contiguous(), sin.contiguous())


class _Pairs(first_order.Function):
    @staticmethod
    def forward(ctx, lib, x, w, lin, plain=None):
        orig = (x, w)  # for `twice` (copies carry no history)
        x, w = x.contiguous(), w.contiguous()
        d = x.shape[-1]
        F = (1 + d if lin else 0) + d * (d + 1) // 2
        out = x.new_empty(*x.shape[:-1], F)
        rows = x.numel() // d if d else 0
        _run(_kernel(lib, "pairs_fwd", x.dtype), [native.ptr(t) for t in (x, w, out)],
             (d, int(lin)), rows)
        ctx.save_for_backward(x, w, *orig)
        ctx.lib, ctx.lin, ctx.plain = lib, lin, plain
        return out

    @staticmethod
    def twice(ctx, g):  # under create_graph: autograd through the caller's PyTorch form
        first_order.plain_given(ctx.plain, "_Pairs")
        return (None, *first_order.replay(ctx.plain, (*ctx.saved_tensors[2:], ctx.lin), (g,),
                                          ctx.needs_input_grad[1:]), None)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors[:2]
        d = x.shape[-1]
        g = g.contiguous()
        dx = torch.empty_like(x)
        _run(_kernel(ctx.lib, "pairs_bwd", x.dtype), [native.ptr(t) for t in (x, w, g, dx)],
             (d, int(ctx.lin)), x.numel() // d if d else 0)
        return None, dx, None, None, None


def pairs(lib, x, w, lin: bool, plain=None):
    """psi (..., [1 + d +] P) from x (..., d) and the pair weights w (P,); plain: the same
    function of (x, w, lin) in PyTorch (ops.feature_maps'), which the node's `twice`
    differentiates (None: first order only)."""
    return _Pairs.apply(lib, x, w, lin, plain)


def _math_sdpa(q, k, v, mask, causal, scale):
    """F.scaled_dot_product_attention by its math form (differentiable twice)."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=scale)


class _FusedSDPA(first_order.Function):
    """torch's fused F.scaled_dot_product_attention as it runs, forward and backward: its
    own graph, built in forward on detached inputs and run back in backward (the same
    kernels, bit for bit); under create_graph its `twice` replays the math form (the fused
    kernels' backward, CPU flash attention's too, has no derivative in torch)."""

    plain = staticmethod(_math_sdpa)  # torch.func (the fused kernels have no forward AD)

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, scale):
        with torch.enable_grad():
            ins = [t.detach().requires_grad_(n) for t, n in zip((q, k, v), ctx.needs_input_grad)]
            out = F.scaled_dot_product_attention(*ins, attn_mask=mask, is_causal=causal,
                                                 scale=scale)
        ctx.inner = out, ins
        ctx.save_for_backward(q, k, v, mask)
        ctx.causal, ctx.scale = causal, scale
        return out.detach()

    @staticmethod
    def twice(ctx, g):
        q, k, v, mask = ctx.saved_tensors
        return (*first_order.replay(_math_sdpa, (q, k, v, mask, ctx.causal, ctx.scale), (g,),
                                    ctx.needs_input_grad[:3]), None, None, None)

    @staticmethod
    def backward(ctx, g):
        out, ins = ctx.inner
        wrt = [t for t in ins if t.requires_grad]
        # retained: a backward run again (retain_graph, gradcheck) runs it again
        got = iter(torch.autograd.grad(out, wrt, g, retain_graph=True))
        return (*(next(got) if t.requires_grad else None for t in ins), None, None, None)


def fused_sdpa(q, k, v, mask=None, causal=False, scale=None):
    """F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale),
    differentiable twice: where a gradient is taken through a fused kernel (flash attention
    not switched off, e.g. by sdpa_kernel(SDPBackend.MATH)), through `_FusedSDPA`."""
    if backend.transforming():  # torch.func: the math form (`_FusedSDPA.plain`)
        return _FusedSDPA.apply(q, k, v, mask, causal, scale)
    if (torch.compiler.is_compiling() or not torch.backends.cuda.flash_sdp_enabled()
            or not torch.is_grad_enabled() or not any(t.requires_grad for t in (q, k, v))):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=scale)
    return _FusedSDPA.apply(q, k, v, mask, causal, scale)
