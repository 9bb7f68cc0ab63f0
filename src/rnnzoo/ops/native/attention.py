"""Row kernels of the attention family on the CPU, in C (attention.c), each differentiable:

    stick_breaking_attention(lib, q, k, v, visible, shift) -> o    stick-breaking
        attention (Tan et al. 2024, arXiv:2410.17980), o_i = sum_j A_ij v_j with
        A_ij = sigmoid(z_ij) prod_{l > j visible} sigmoid(-z_il), z = q k^T: the logits
        and weights a block of rows at a time (one pass a row each way in C, between
        matmuls), recomputed in the backward, instead of a dozen (B, H, Tq, Tk) tensors
        through autograd (layers.stickbreaking_attention keeps that form as its fallback);
        causal tiles skip the keys no query of the tile sees.
    pairs(lib, x, w, lin) -> psi             ops.feature_maps.packed's features: x (..., d)
        -> (..., [1 + d +] d (d + 1) / 2), [1, x] first when lin, then w_p x_a x_b over the
        pairs a <= b in row-major order (w (P,)); gradient in x only.

All float32 or all float64 on the CPU (`ops.backend.use_native` decides); `lib` = load().
Rows are split over torch.get_num_threads() threads (ctypes lets go of the GIL).
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native


def load():
    return native.load("attention")


def _kernel(lib, name, dtype):
    P, L, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    return native.kernel(lib, name, dtype, {"sb_fwd": [P] * 3 + [L] * 10,
                                            "sb_bwd": [P] * 5 + [L] * 10,
                                            "pairs_fwd": [P] * 3 + [L, i32, L, L],
                                            "pairs_bwd": [P] * 4 + [L, i32, L, L]}[name])


def _run(fn, ptrs, extra, rows):
    native.run(fn, [(*ptrs, *extra, *p) for p in native.rows(rows) or [(0, 0)]])


_BLOCK = 1 << 19  # entries of one block of logits (2 MB in float32): malloc reuses it
_TILE = 128       # queries a tile when causal: tile [i0, i1) reads keys [0, i1 + shift) only


def _blocks(N, Tq, Tk, causal, shift):
    """[(n0, n1, i0, i1, e)]: head-rows [n0, n1) and queries [i0, i1) over keys [0, e)
    (never empty: a first row with nothing visible still has its block, of zeros)."""
    tile = min(_TILE, Tq) if causal else Tq
    out = []
    for i0 in range(0, Tq, tile):
        i1 = min(Tq, i0 + tile)
        e = max(1, min(Tk, i1 + shift) if causal else Tk)
        g = max(1, _BLOCK // ((i1 - i0) * e))
        out += [(n0, min(N, n0 + g), i0, i1, e) for n0 in range(0, N, g)]
    return out


def _views(buf, blocks):
    """Each block's (g, t, e) view of the start of buf (buf: the largest block's size)."""
    return [buf[:(n1 - n0) * (i1 - i0) * e].view(n1 - n0, i1 - i0, e)
            for n0, n1, i0, i1, e in blocks]


class _StickBreaking(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, visible, shift):
        B, H, Tq, _ = q.shape
        Tk = k.shape[2]
        q2, k2, v2 = (t.reshape(B * H, *t.shape[2:]).contiguous() for t in (q, k, v))
        m = None if visible is None else visible.contiguous()
        fwd = _kernel(lib, "sb_fwd", q.dtype)
        out = q2.new_empty(B * H, Tq, v.shape[-1])
        blocks = _blocks(B * H, Tq, Tk, m is None, shift)
        zbuf, abuf = q2.new_empty(2, max((n1 - n0) * (i1 - i0) * e for n0, n1, i0, i1, e in blocks))
        for (n0, n1, i0, i1, e), z, A in zip(blocks, _views(zbuf, blocks), _views(abuf, blocks)):
            torch.bmm(q2[n0:n1, i0:i1], k2[n0:n1, :e].transpose(1, 2), out=z)
            _run(fwd, [native.ptr(z), native.ptr(m), native.ptr(A)],
                 (i1 - i0, e, n0, H, Tq, Tk, i0, shift), (n1 - n0) * (i1 - i0))
            out[n0:n1, i0:i1] = torch.bmm(A, v2[n0:n1, :e])
        ctx.save_for_backward(q2, k2, v2, m)  # the logits and weights: recomputed, not kept
        ctx.lib, ctx.shift, ctx.shapes = lib, shift, (q.shape, k.shape, v.shape)
        return out.view(B, H, Tq, -1)

    @staticmethod
    def backward(ctx, do):
        q2, k2, v2, m = ctx.saved_tensors
        (B, H, Tq, _), (_, _, Tk, _), vshape = ctx.shapes
        do2 = do.reshape(B * H, Tq, -1).contiguous()
        fwd, bwd = (_kernel(ctx.lib, n, q2.dtype) for n in ("sb_fwd", "sb_bwd"))
        dq = torch.empty_like(q2)
        dk, dv = torch.zeros_like(k2), torch.zeros_like(v2)
        blocks = _blocks(B * H, Tq, Tk, m is None, ctx.shift)
        bufs = q2.new_empty(4, max((n1 - n0) * (i1 - i0) * e for n0, n1, i0, i1, e in blocks))
        for (n0, n1, i0, i1, e), z, A, dA, dz in zip(blocks, *(_views(b, blocks) for b in bufs)):
            qb, kb, vb, dob = q2[n0:n1, i0:i1], k2[n0:n1, :e], v2[n0:n1, :e], do2[n0:n1, i0:i1]
            extra = (i1 - i0, e, n0, H, Tq, Tk, i0, ctx.shift)
            rows = (n1 - n0) * (i1 - i0)
            torch.bmm(qb, kb.transpose(1, 2), out=z)
            _run(fwd, [native.ptr(z), native.ptr(m), native.ptr(A)], extra, rows)
            torch.bmm(dob, vb.transpose(1, 2), out=dA)
            dv[n0:n1, :e] += torch.bmm(A.transpose(1, 2), dob)  # (strided: not baddbmm_)
            _run(bwd, [native.ptr(t) for t in (z, m, A, dA, dz)], extra, rows)
            dq[n0:n1, i0:i1] = torch.bmm(dz, kb)
            dk[n0:n1, :e] += torch.bmm(dz.transpose(1, 2), qb)
        return (None, dq.view(B, H, Tq, -1), dk.view(B, H, Tk, -1), dv.view(vshape), None,
                None)


def stick_breaking_attention(lib, q, k, v, visible=None, shift: int = 0):
    """o = A v with A the stick-breaking weights of the logits q k^T: q (B, H, Tq, Dh) (the
    scale already in), k (B, H, Tk, Dh), v (B, H, Tk, Dv) -> o (B, H, Tq, Dv). Visible keys:
    visible (B, Tq, Tk) bool (keys in position order), or None for causal with Tk = Tq: key
    j visible to query i when j <= i + shift (shift 0: the current token too; -1: before
    it), when each tile of queries reads only the keys it can see. The logits exist a block
    at a time (2 MB), forward and again in the backward (recomputed, never stored)."""
    return _StickBreaking.apply(lib, q, k, v, visible, shift)


class _Pairs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, x, w, lin):
        x, w = x.contiguous(), w.contiguous()
        d = x.shape[-1]
        F = (1 + d if lin else 0) + d * (d + 1) // 2
        out = x.new_empty(*x.shape[:-1], F)
        rows = x.numel() // d if d else 0
        _run(_kernel(lib, "pairs_fwd", x.dtype), [native.ptr(t) for t in (x, w, out)],
             (d, int(lin)), rows)
        ctx.save_for_backward(x, w)
        ctx.lib, ctx.lin = lib, lin
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        d = x.shape[-1]
        g = g.contiguous()
        dx = torch.empty_like(x)
        _run(_kernel(ctx.lib, "pairs_bwd", x.dtype), [native.ptr(t) for t in (x, w, g, dx)],
             (d, int(ctx.lin)), x.numel() // d if d else 0)
        return None, dx, None, None


def pairs(lib, x, w, lin: bool):
    """psi (..., [1 + d +] P) from x (..., d) and the pair weights w (P,)."""
    return _Pairs.apply(lib, x, w, lin)
