"""PaTH attention in chunks (Yang et al. 2025, arXiv:2505.16381, section 3): the Householder
products between key and query in their UT (WY) form inside a chunk, whole chunk products
between chunks, and softmax attention over exactly the causal blocks.

Per head, H_t = I - beta_t w_t w_t^T and s_ts = q_t^T H_t ... H_{s+1} k_s (s <= t). In a
chunk of C steps (rows q_t, k_t, w_t of Q, K, W; strictly lower part SL, lower part tril):

    (I + SL(diag(beta) W W^T)) [Y | Z] = [diag(beta) W | SL(diag(beta) W K^T)]   (UT transform)
    H_t ... H_1          = I - W_{<=t}^T Y_{<=t}           (first rows of Y)
    intra scores          = tril(Q K^T) - tril(Q W^T) Z      (s <= t inside the chunk)
    Q' = Q - tril(Q W^T) Y      rows q_t^T H_t ... H_1        (queries moved to the chunk start)
    K' = K - Z^T W              rows (H_C ... H_{s+1} k_s)^T  (keys moved to the chunk end)
    P  = I - W^T Y              the chunk's whole product H_C ... H_1

Keys of earlier chunks moved to the start of chunk n: K^(n+1) = [K^(n) P_n^T ; K'_n], so the
scores of chunk n against them are Q'_n K^(n)T, one matrix product a chunk. Keys of a cache
(already moved to the first new step) meet the queries moved further back,
Q'_n P_{n-1} ... P_0, which costs C rows a chunk instead of the cache's L rows.

    o = softmax(scale * [cache scores | K^(n) scores | intra scores]) [V_cache ; V]

A custom autograd Function keeps only the per-chunk pieces and recomputes each chunk's
probabilities in its backward (no (B, H, T, T) tensor is saved).

Where the C kernels run (CPU, float32/64), the pieces come from ops.native.path_chunk (the UT
chunks and merges of a block in cache, one call per thread over (batch x head) rows) and the
blocks' attention from attention.c's path_fwd / path_bwd (_AttendHeads); elsewhere _UT, _merge
and _Attend run as torch products. A fresh sequence whose length is a multiple of the block
runs both kernels in one Function over the fused projection (_PathQKV: q, k, v read in place,
one gradient tensor, the keys written as the fresh cache), and path_attention_fresh takes w
and beta before their l2norm and sigmoid, which the chunk kernel applies.
"""

from __future__ import annotations

from functools import partial

import torch

from rnnzoo.ops import backend, first_order, native
from rnnzoo.ops.chunk._common import to_chunks, unit_lower_inverse
from rnnzoo.ops.finite import clean_inputs, finite_inputs, poison
from rnnzoo.ops.native import attention as native_attention
from rnnzoo.ops.native import path_chunk as native_path_chunk

__all__ = ["fresh_applies", "path_attention", "path_attention_fresh", "proj_views", "proj_weight"]

UT_CHUNK = 32  # the UT transform's chunk; attention blocks of chunk_size are merged from them


def _block_sizes(chunk_size, T):
    """(C, c, levels): attention blocks of C steps merged from UT chunks of c = C / 2^levels."""
    C = min(chunk_size, T)
    c, levels = C, 0
    while c > UT_CHUNK and c % 2 == 0:
        c, levels = c // 2, levels + 1
    return C, c, levels


def fresh_applies(T, chunk_size, *tensors):
    """Whether path_attention_fresh can run (before its inputs are computed): the native
    kernels on these tensors and T a multiple of the block; it may still decline (an input
    not finite)."""
    C = _block_sizes(chunk_size, T)[0]
    return (T % C == 0 and backend.use_native(*tensors) and native_attention.load() is not None
            and native_path_chunk.load() is not None)


def path_attention_fresh(proj, heads, *, scale, chunk_size=64, keys_len=None, eps=1e-6,
                         beta_bias=None, values=None):
    """path_attention of a fresh sequence (no cache) from one projection before its
    normalisation, proj (B, T, 4 H Dh + H) = [q_0 | k_0 | v_0 | w_0 | q_1 | ... | w_{H-1} |
    beta] per token (each (Dh,), beta (H); proj_weight builds its weight), heads = H: w = w / max(|w|, eps) per head and beta = 2 sigmoid(beta +
    beta_bias) (beta_bias (H,) or None) are applied in the chunk kernel (forward and backward;
    no torch passes over w and beta), every input's finiteness is summed there (no host read
    of each tensor's sums), and the gradient is one (B, T, 4 H Dh + H) tensor written by the
    kernels (the projection's one product each way).
    values: None or a cache of values (B, H, L, Dh), L >= T, proj's dtype: then a third
    result, that cache with its first T slots replaced by v (the layer's write_front),
    written by the forward kernel (which reads v there: no transposing copy of v), its
    gradient's first T slots added to v's by the backward one.
    Returns (o (B, T, H, Dh), keys (B, H, keys_len or T, Dh), zero past T[, values]), or None
    where this C path does not run (fresh_applies false, or an input not finite): then the
    caller normalises and calls path_attention."""
    B, T, _ = proj.shape
    C, c, levels = _block_sizes(chunk_size, T)
    if not fresh_applies(T, chunk_size, proj, beta_bias):
        return None
    lib, pc = native_attention.load(), native_path_chunk.load()
    o, keys, fin, vals = _PathQKV.apply(lib, pc, None, None, None, scale, c, levels,
                                        T if keys_len is None else keys_len, eps, beta_bias,
                                        proj, heads, values)
    if not bool(torch.isfinite(fin).all()):
        return None
    return (o, keys) if values is None else (o, keys, vals)


def path_attention(q, k, v, w, beta, *, scale, chunk_size=64, k_cache=None, v_cache=None,
                   cache_visible=None, qkv=None, keys_len=None):
    """q, k, v, w: (B, T, H, Dh) (w of unit norm), beta: (B, T, H); optional cache of earlier
    tokens: k_cache (B, H, L, Dh) their keys moved through every reflection so far, v_cache
    (B, H, L, Dh) (finite), cache_visible (B, L) bool, the slots that hold a token (the
    others are read as empty: zero keys, never attended).
    v must be finite (the caller marks outputs that read a non-finite value).
    qkv: optional (B, T, 3, H, Dh), the fused projection whose unbind(2) is q, k, v: where the
    C kernels run and q, k, w, beta are finite, the chunk kernel reads q and k from it in
    place and its gradient comes as one tensor (ops.native.path_chunk.pieces_qkv: no
    split into heads, no stack of the three gradients).
    keys_len: without a cache, the keys returned as a fresh cache of that many slots
    (B, H, keys_len, D), zero past T (keys_len >= T); on the C path with qkv and T a
    multiple of the block, written so by the kernel (_PathQKV: v read in place too).

    Returns o (B, T, H, Dh), the new keys moved to the last step (B, H, T, Dh), and the cache's
    keys moved through the new reflections (B, H, L, Dh, zero in empty slots; None without a
    cache). A non-finite
    q, k, w or beta at step t makes the outputs from t on NaN (ops.finite), and both keys."""
    B, T, H, D = q.shape
    # the C kernels: no copies and no marks when every input is finite (one host read, free there)
    (q,), (k, w, beta), marks = (clean_inputs if backend.use_native(q) else finite_inputs)(
        (q,), (k, w, beta))
    C, c, levels = _block_sizes(chunk_size, T)  # attention blocks, UT chunks: C / 2^levels
    lib = native_attention.load() if backend.use_native(q) else None
    pc = native_path_chunk.load() if lib is not None else None
    N = -(-T // C)
    if pc is not None and qkv is not None and marks is None and k_cache is None and N * C == T:
        o, keys = _PathQKV.apply(lib, pc, qkv, w, beta, scale, c, levels,
                                 T if keys_len is None else keys_len)[:2]
        return o, keys, None
    if pc is not None and qkv is not None and marks is None:  # v (B, H, T, D) from it
        q1, k1, P, intra, v = native_path_chunk.pieces_qkv(pc, qkv, w, beta, scale, c,
                                                           levels, _pieces_plain)
        v = to_chunks(v.transpose(1, 2), C)                          # (B, H, N, C, D)
    elif pc is not None:  # the UT chunks and merges in C, scale in: qs, k1, P, scale intra
        v = to_chunks(v, C)
        q1, k1, P, intra = native_path_chunk.pieces(pc, q, k, w, beta, scale, c, levels,
                                                    _pieces_plain)
    else:
        v = to_chunks(v, C)
        q, k, w = (to_chunks(t, C) for t in (q, k, w))               # (B, H, N, C, D)
        beta = to_chunks(beta[..., None], C)
        mm = _products(lib)
        q1, k1, P, intra = _UT.apply(mm, *(t.unflatten(3, (-1, c)).flatten(2, 3)
                                           for t in (q, k, w, beta)))
        for _ in range(levels):
            q1, k1, P, intra = _merge(mm, q1, k1, P, intra)
    if k_cache is None:
        keys0 = v0 = v.new_zeros(B, H, 0, D)
        bias0 = v.new_zeros(B, 1, 1, 0)
    else:
        hide = ~cache_visible[:, None, :, None]                      # (B, 1, L, 1)
        keys0 = k_cache.to(v.dtype).masked_fill(hide, 0)              # empty slots hold nothing
        v0 = v_cache.to(v.dtype)
        bias0 = torch.zeros((), dtype=v.dtype, device=v.device).masked_fill(
            hide.transpose(-1, -2), float("-inf"))                    # (B, 1, 1, L)
    if pc is not None:  # o (B, N C, H, D)
        o, keys = _AttendHeads.apply(lib, q1, k1, P, intra, v, keys0, v0, bias0)
    else:
        o, keys = _Attend.apply(_products(lib), q1, k1, P, intra, v, keys0, v0, bias0, scale)
        o = o.movedim(1, 3).reshape(B, N * C, H, D)
    L = keys0.shape[2]
    o, keys, moved = o[:, :T], keys[:, :, L:L + T], keys[:, :, :L] if k_cache is not None else None
    if marks is not None:
        o, keys, moved = _marked(o, keys, moved, marks)
    if keys_len is not None and k_cache is None:  # a fresh cache: empty + two slice writes
        new = keys.new_empty(B, H, keys_len, D)
        new[:, :, :T] = keys
        new[:, :, T:] = 0
        keys = new
    return o, keys, moved


def _marked(o, keys, moved, marks):
    """NaN from a non-finite input on: o's steps (marks.outputs), the keys' sequences."""
    return (poison(o, marks.outputs), poison(keys, marks.state),
            None if moved is None else poison(moved, marks.state))


def _products(lib):
    """The batched matrix product (a @ b, same leading dims): mm.h's register tiles
    (ops.native.attention.bmm) where the C kernels run (lib, CPU, float32/64; MKL's bmm ran
    these 32 x 32 chunk products at ~16 GFLOP/s), else torch's."""
    return torch.matmul if lib is None else partial(native_attention.bmm, lib)


def _merge(mm, q1, k1, P, intra):
    """Chunks (B, H, 2M, c, ...) pairwise into (B, H, M, 2c, ...): the right chunk's queries
    move back through the left chunk's product, the left chunk's keys forward through the
    right one's, and the right queries meet the left keys in the lower-left block."""
    (qa, qb), (ka, kb), (Pa, Pb), (Sa, Sb) = (t.unflatten(2, (-1, 2)).unbind(3)
                                              for t in (q1, k1, P, intra))
    q1 = torch.cat([qa, mm(qb, Pa)], -2)
    k1 = torch.cat([mm(ka, Pb.transpose(-1, -2)), kb], -2)
    cross = mm(qb, ka.transpose(-1, -2))
    intra = torch.cat([torch.cat([Sa, torch.full_like(Sa, float("-inf"))], -1),
                       torch.cat([cross, Sb], -1)], -2)
    return q1, k1, mm(Pb, Pa), intra


def _ut_core(mm, q, k, w, beta):
    """_UT's forward (q, k, w (..., C, D), beta (..., C, 1)): its four pieces, and what its
    backward reads (Tinv, [Y | Z], tril(Q W^T), SL(W W^T), SL(W K^T)); plain differentiable
    ops with mm = torch.matmul (the form _UT's `twice` differentiates)."""
    C, D = q.shape[-2:]
    lower = torch.ones(C, C, dtype=q.dtype, device=q.device).tril()
    strict = lower.tril(-1)
    wt = w.transpose(-1, -2)
    sww = mm(w, wt).mul_(strict)                                  # SL(W W^T)
    swk = mm(w, k.transpose(-1, -2)).mul_(strict)                 # SL(W K^T)
    qw = mm(q, wt).mul_(lower)                                    # tril(Q W^T)
    Tinv = unit_lower_inverse(sww * beta)                         # (I + diag(beta) SL(W W^T))^-1
    YZ = mm(Tinv, torch.cat([w * beta, swk * beta], -1))
    Y, Z = YZ.split([D, C], -1)
    qYZ = mm(qw, YZ)
    q1 = q - qYZ[..., :D]
    intra = mm(q, k.transpose(-1, -2)).mul_(lower).sub_(qYZ[..., D:])
    intra.masked_fill_(lower == 0, float("-inf"))
    k1 = k - mm(Z.transpose(-1, -2), w)
    P = torch.eye(D, dtype=q.dtype, device=q.device) - mm(wt, Y)
    return (q1, k1, P, intra), (Tinv, YZ, qw, sww, swk)


class _UT(first_order.Function):
    """The chunk pieces of the module docstring from q, k, w: (B, H, N, C, D) and beta
    (B, H, N, C, 1): Q', K', P (B, H, N, D, D) and the intra scores (B, H, N, C, C), -inf
    above the diagonal; the backward written out (no autograd graph of masks, cats and
    slices); `twice` replays _ut_core in torch ops."""

    @staticmethod
    def forward(ctx, mm, q, k, w, beta):
        orig = (q, k, w, beta)  # for `twice` (the copies below have no autograd history)
        q, k, w = (t.contiguous() for t in (q, k, w))                 # read by many products
        pieces, saved = _ut_core(mm, q, k, w, beta)
        ctx.save_for_backward(q, k, w, beta, *saved, *orig)
        ctx.mm = mm
        return pieces

    @staticmethod
    def twice(ctx, *grads):
        return (None, *first_order.replay(lambda *a: _ut_core(torch.matmul, *a)[0],
                                          ctx.saved_tensors[9:], grads,
                                          ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dq1, dk1, dP, dintra):
        q, k, w, beta, Tinv, YZ, qw, sww, swk = ctx.saved_tensors[:9]
        mm = ctx.mm
        C, D = q.shape[-2:]
        dq1, dk1, dintra = (torch.zeros_like(t) if g is None else g
                            for g, t in ((dq1, q), (dk1, k), (dintra, sww)))
        dP = q.new_zeros(*q.shape[:-2], D, D) if dP is None else dP
        lower = torch.ones(C, C, dtype=q.dtype, device=q.device).tril()
        strict = lower.tril(-1)
        Y, Z = YZ.split([D, C], -1)
        dI = dintra * lower
        dqw = mm(dq1, Y.transpose(-1, -2)).add_(mm(dI, Z.transpose(-1, -2))).mul_(-lower)
        qwt = qw.transpose(-1, -2)
        dY = mm(qwt, dq1).add_(mm(w, dP)).neg_()
        dZ = mm(qwt, dI).add_(mm(w, dk1.transpose(-1, -2))).neg_()
        dq = dq1 + mm(dI, k) + mm(dqw, w)
        dk = dk1 + mm(dI.transpose(-1, -2), q)
        dw = mm(dqw.transpose(-1, -2), q) - mm(Y, dP.transpose(-1, -2)) - mm(Z, dk1)
        dR = mm(Tinv.transpose(-1, -2), torch.cat([dY, dZ], -1))
        dA = mm(dR, YZ.transpose(-1, -2)).mul_(-strict)
        dR1, dR2 = dR.split([D, C], -1)
        dbeta = ((dA * sww).sum(-1, keepdim=True) + (dR1 * w).sum(-1, keepdim=True)
                 + (dR2 * swk).sum(-1, keepdim=True))
        dsww = dA * beta
        dswk = dR2.mul(beta).mul_(strict)
        dw += mm(dsww + dsww.transpose(-1, -2), w) + dR1 * beta + mm(dswk, k)
        dk += mm(dswk.transpose(-1, -2), w)
        return None, dq, dk, dw, dbeta


def _attend_core(mm, q1, k1, P, intra, v, keys0, v0, bias0, scale):
    """_Attend's forward: o, the keys moved to the last step, and what its backward reads
    (the values, each chunk's keys and probabilities); plain differentiable ops with mm =
    torch.matmul (the form _Attend's and _AttendHeads' `twice` differentiate)."""
    N, C = q1.shape[2:4]
    L = keys0.shape[2]
    values = torch.cat([v0, v.flatten(2, 3)], 2)                      # (B, H, L + N C, D)
    keys, outs, read, probs = keys0, [], [], []
    for n in range(N):
        s = mm(q1[:, :, n], keys.transpose(-1, -2))                   # (B, H, C, L + n C)
        if L:
            s[..., :L] += bias0
        p = torch.cat([s, intra[:, :, n]], -1).mul_(scale).softmax(-1)
        outs.append(mm(p, values[:, :, :L + (n + 1) * C]))
        read.append(keys)
        probs.append(p)
        keys = torch.cat([mm(keys, P[:, :, n].transpose(-1, -2)), k1[:, :, n]], 2)
    return torch.stack(outs, 2), keys, values, read, probs


def _attend_heads_plain(qs, k1, P, intra_s, v, keys0, v0, bias0):
    """_AttendHeads in PyTorch (its `twice`): intra_s read on and below the diagonal, no
    scale; o (B, N C, H, D)."""
    B, H, N, C, D = qs.shape
    upper = torch.ones(C, C, dtype=torch.bool, device=qs.device).triu(1)
    o, keys = _attend_core(torch.matmul, qs, k1, P, intra_s.masked_fill(upper, float("-inf")),
                           v, keys0, v0, bias0, 1.0)[:2]
    return o.movedim(1, 3).reshape(B, N * C, H, D), keys


def _pieces_plain(q, k, w, beta, scale, c, levels):
    """ops.native.path_chunk's pieces in PyTorch (their nodes' `twice`): q, k, w (B, T, H, D),
    beta (B, T, H) -> qs = scale Q', K' (B, H, N, C, D), P (B, H, N, D, D), scale intra
    (B, H, N, C, C), zero above the diagonal."""
    C = c << levels
    q, k, w = (to_chunks(t, C) for t in (q, k, w))
    beta = to_chunks(beta[..., None], C)
    q1, k1, P, intra = _ut_core(torch.matmul, *(t.unflatten(3, (-1, c)).flatten(2, 3)
                                                for t in (q, k, w, beta)))[0]
    for _ in range(levels):
        q1, k1, P, intra = _merge(torch.matmul, q1, k1, P, intra)
    upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    return q1 * scale, k1, P, intra.masked_fill(upper, 0) * scale


def _fresh_plain(qkv, w, beta, bias, proj, values, *, H, scale, c, levels, Lk, raw_eps):
    """_PathQKV in PyTorch (its `twice`): its inputs as given -> o, keys, None (fin), vals."""
    if proj is None:
        q, k, v = qkv.unbind(2)
    else:
        q, k, v, w, beta = proj_views(proj, H)
    if raw_eps is not None:  # the kernel's l2norm (w / max(|w|, eps)) and 2 sigmoid
        w = w * w.square().sum(-1, keepdim=True).clamp(min=raw_eps * raw_eps).rsqrt()
        beta = 2 * torch.sigmoid(beta if bias is None else beta + bias)
    B, T, Hh, D = q.shape
    qs, k1, P, intra_s = _pieces_plain(q, k, w, beta, scale, c, levels)
    N, C = qs.shape[2:4]
    v = v.transpose(1, 2)                                             # (B, H, T, D)
    empty = v.new_zeros(B, Hh, 0, D)
    o, keys = _attend_heads_plain(qs, k1, P, intra_s, v.unflatten(2, (N, C)), empty, empty,
                                  v.new_zeros(B, 1, 1, 0))
    keys = torch.cat([keys, keys.new_zeros(B, Hh, Lk - T, D)], 2)
    vals = None if values is None else torch.cat([v, values[:, :, T:].to(v.dtype)], 2)
    return o, keys, None, vals


class _Attend(first_order.Function):
    """Softmax attention of each chunk's moved queries over the keys moved to its start
    (the cache's first, then the earlier chunks'), and over its own keys by the intra scores.

    q1, k1, v: (B, H, N, C, D); P: (B, H, N, D, D); intra: (B, H, N, C, C), -inf above the
    diagonal; keys0, v0: (B, H, L, D) the cache; bias0: (B, 1, 1, L), 0 or -inf (hidden slot).
    Returns o (B, H, N, C, D) and every key moved to the last step, (B, H, L + N C, D).
    Saves each chunk's probabilities and the keys it read (about half of a (T, T) score
    matrix and N C^2 / 2 keys a head); the backward runs the chunks in reverse."""

    @staticmethod
    def forward(ctx, mm, q1, k1, P, intra, v, keys0, v0, bias0, scale):
        o, keys, values, read, probs = _attend_core(mm, q1, k1, P, intra, v, keys0, v0, bias0,
                                                    scale)
        ctx.save_for_backward(q1, P, values, o, *read, *probs, q1, k1, P, intra, v, keys0,
                              v0, bias0)  # the last eight: the inputs, for `twice`
        ctx.scale, ctx.L, ctx.mm = scale, keys0.shape[2], mm
        return o, keys

    @staticmethod
    def twice(ctx, do, dkeys):
        return (None, *first_order.replay(
            lambda *a: _attend_core(torch.matmul, *a, ctx.scale)[:2], ctx.saved_tensors[-8:],
            (do, dkeys), ctx.needs_input_grad[1:9]), None)

    @staticmethod
    def backward(ctx, do, dkeys):
        q1, P, values, o, *saved = ctx.saved_tensors[:-8]
        B, H, N, C, D = q1.shape
        L, scale, mm = ctx.L, ctx.scale, ctx.mm
        dkeys = torch.zeros_like(values) if dkeys is None else dkeys
        dvalues = torch.zeros_like(values)
        dq1, dk1, dP = torch.empty_like(q1), torch.empty_like(q1), torch.empty_like(P)
        dintra = q1.new_empty(B, H, N, C, C)
        for n in reversed(range(N)):
            keys, p = saved[n], saved[N + n]
            m = L + n * C
            dk1[:, :, n] = dkeys[:, :, m:m + C]
            dmoved = dkeys[:, :, :m]                                  # of keys @ P_n^T
            dP[:, :, n] = mm(dmoved.transpose(-1, -2), keys)
            dkeys = mm(dmoved, P[:, :, n])
            do_n = do[:, :, n]
            dvalues[:, :, :m + C] += mm(p.transpose(-1, -2), do_n)
            dp = mm(do_n, values[:, :, :m + C].transpose(-1, -2))
            ds = p * (dp - (do_n * o[:, :, n]).sum(-1, keepdim=True)).mul_(scale)
            dintra[:, :, n] = ds[..., m:]
            ds = ds[..., :m]
            dq1[:, :, n] = mm(ds, keys)
            dkeys += mm(ds.transpose(-1, -2), q1[:, :, n])
        dv = dvalues[:, :, L:].reshape(B, H, N, C, D)
        return None, dq1, dk1, dP, dintra, dv, dkeys, dvalues[:, :, :L], None, None


def _value_strides(v):
    """(b, h, t) element strides of values v (B, H, Lt, D) (any strides, unit channels)."""
    return v.stride(0), v.stride(1), v.stride(2)


def _attend_fwd(lib, qs, k1, P, intra_s, values, keys0, bias0, Lk=None):
    """path_fwd over every head-row: values (B, H, L + N C, D) with unit channel stride (read
    through its strides); keys (B, H, Lk, D), zero past L + N C (Lk None: L + N C). Returns
    o (B, N C, H, D), keys, and what the backward reads (KS, PS)."""
    B, H, N, C, D = qs.shape
    L = keys0.shape[2]
    Lk = L + N * C if Lk is None else Lk
    qs, intra_s, k1, P, keys0 = (t.contiguous() for t in (qs, intra_s, k1, P, keys0))
    bias = bias0.reshape(B, L).contiguous() if L else None
    KT = sum(L + n * C for n in range(N)) * D
    PT = sum(C * (L + (n + 1) * C) for n in range(N))
    o, keys = qs.new_empty(B, N * C, H, D), qs.new_empty(B, H, Lk, D)
    KS, PS = qs.new_empty(B * H, KT), qs.new_empty(B * H, PT)
    native_attention._run(native_attention._kernel(lib, "path_fwd", qs.dtype),
                          [native.ptr(t) for t in (qs, k1, P, intra_s, values, keys0,
                                                   bias, o, keys, KS, PS)],
                          (N, C, D, L, H, KT, PT, *_value_strides(values), Lk), B * H)
    return o, keys, KS, PS


def _attend_bwd(lib, qs, P, values, KS, PS, do, dkeys, dvalues, L):
    """path_bwd over every head-row: the gradients of _attend_fwd's qs, k1, P, intra_s
    (new) and of keys0 (B, H, L, D); dvalues (values' shape, any strides with unit channels)
    written whole."""
    B, H, N, C, D = qs.shape
    do = qs.new_zeros(B, N * C, H, D) if do is None else do.contiguous()
    dkeys = None if dkeys is None else dkeys.contiguous()
    Lk = 0 if dkeys is None else dkeys.shape[2]
    dq1, dk1, dP = torch.empty_like(qs), torch.empty_like(qs), torch.empty_like(P)
    dintra = qs.new_empty(B, H, N, C, C)
    dkeys0 = qs.new_empty(B, H, L, D)
    native_attention._run(native_attention._kernel(lib, "path_bwd", qs.dtype),
                          [native.ptr(t) for t in (qs, P, values, KS, PS, do, dkeys, dq1,
                                                   dk1, dP, dintra, dvalues, dkeys0)],
                          (N, C, D, L, H, KS.shape[1], PS.shape[1], *_value_strides(values),
                           *_value_strides(dvalues), Lk), B * H)
    return dq1, dk1, dP, dintra, dkeys0


class _AttendHeads(first_order.Function):
    """_Attend in one C call per thread over whole head-rows (attention.c: path_fwd /
    path_bwd): each head's chunks in order, its scores written next to the chunk's intra
    scores, the softmax rows in place (sm_fwd; backward dS = P (dP - rowsum(P dP)), sm_bwd),
    the products and the moved keys in cache, where a thread-pool run per block product and
    torch's cats of the keys ran before; a fresh lib. Takes the queries and intra scores
    with the scale in (qs, intra_s: ops.native.path_chunk's pieces, read on and below
    the diagonal) and no scale, and returns o as (B, N C, H, D) (the layout the output
    projection reads: no transposing copy each way); else _Attend's arguments and results."""

    @staticmethod
    def forward(ctx, lib, qs, k1, P, intra_s, v, keys0, v0, bias0):
        L = keys0.shape[2]
        values = (torch.cat([v0, v.flatten(2, 3)], 2) if L else v.flatten(2, 3)).contiguous()
        o, keys, KS, PS = _attend_fwd(lib, qs, k1, P, intra_s, values, keys0, bias0)
        ctx.save_for_backward(qs.contiguous(), P.contiguous(), values, KS, PS, qs, k1, P,
                              intra_s, v, keys0, v0, bias0)  # the last eight: for `twice`
        ctx.lib, ctx.L = lib, L
        return o, keys

    @staticmethod
    def twice(ctx, do, dkeys):
        return (None, *first_order.replay(_attend_heads_plain, ctx.saved_tensors[5:],
                                          (do, dkeys), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, do, dkeys):
        qs, P, values, KS, PS = ctx.saved_tensors[:5]
        L = ctx.L
        B, H, N, C, D = qs.shape
        dvalues = torch.empty_like(values)
        dq1, dk1, dP, dintra, dkeys0 = _attend_bwd(ctx.lib, qs, P, values, KS, PS, do, dkeys,
                                                   dvalues, L)
        dv = dvalues[:, :, L:].reshape(B, H, N, C, D)
        return None, dq1, dk1, dP, dintra, dv, dkeys0, dvalues[:, :, :L], None


class _PathQKV(first_order.Function):
    """A fresh sequence (no cache) whose T is a multiple of the block, from the fused
    projection qkv (B, T, 3, H, D): the chunk pieces (ops.native.path_chunk, q and k read in
    place) and the block attention (_AttendHeads' kernels) with v read in place too (each
    way in one kernel, path_chunk.fused_fwd / fused_bwd: the pieces k1 and intra, and every
    piece's gradient, stay in cache), and
    the gradient of q, k and v written into one tensor by the two kernels (no copy of v
    either way, one autograd node). Returns o (B, T, H, D), the keys moved to the last
    step as a fresh cache (B, H, Lk, D), zero past T, fin (B H), 0 where a head-row's
    inputs are finite (not differentiable), and vals: with values (B, H, L, D) a copy of it
    whose first T slots are v, written by the forward kernel (else None). raw_eps: w and
    beta are the projections before the l2norm (that eps) and 2 sigmoid, which the chunk
    kernels apply. Gradients not given stay None (no zero-filled do, dkeys or dvals: the
    kernel takes None for zero)."""

    @staticmethod
    def forward(ctx, lib, pc, qkv, w, beta, scale, c, levels, Lk, raw_eps=None, bias=None,
                proj=None, H=None, values=None):
        ctx.set_materialize_grads(False)
        orig = (qkv, w, beta, bias, proj, values)  # for `twice` (copies below: no history)
        ctx.plain = dict(H=H, scale=scale, c=c, levels=levels, Lk=Lk, raw_eps=raw_eps)
        if proj is None:
            qkv = qkv.contiguous()
            w, beta = native_path_chunk._dense(w), native_path_chunk._dense(beta)
            q, k, v = qkv.unbind(2)
        else:  # one projection, per head [q | k | v | w] then beta: its views
            proj = proj.contiguous()
            q, k, v, w, beta = proj_views(proj, H)
        extra = native_path_chunk.chunk_args(q, w, beta, scale, c, levels, raw_eps)
        vals = None
        if values is not None:  # the kernel writes v into the first T slots
            T = q.shape[1]
            vals = torch.empty(values.shape, dtype=q.dtype, device=q.device)
            vals[:, :, T:] = values[:, :, T:]
        o, keys, KS, PS, fin, qs, P, IN = native_path_chunk.fused_fwd(pc, q, k, w, beta, v,
                                                                      extra, bias, Lk, vals)
        ctx.save_for_backward(qkv, w, beta, qs, P, KS, PS, IN, bias, proj, *orig)
        ctx.lib, ctx.pc, ctx.extra, ctx.H = lib, pc, extra, H
        ctx.mark_non_differentiable(fin)
        return o, keys, fin, vals

    @staticmethod
    def twice(ctx, do, dkeys, _, dvals):
        needs = ctx.needs_input_grad  # 9 entries when called without the last five
        at = (2, 3, 4, 10, 11, 13)  # qkv, w, beta, bias, proj, values among the arguments
        got = first_order.replay(partial(_fresh_plain, **ctx.plain), ctx.saved_tensors[10:],
                                 (do, dkeys, None, dvals),
                                 [i < len(needs) and needs[i] for i in at])
        grads = [None] * len(needs)
        for i, g in zip(at, got):
            if i < len(needs):
                grads[i] = g
        return tuple(grads)

    @staticmethod
    def backward(ctx, do, dkeys, _, dvals):
        qkv, w, beta, qs, P, KS, PS, IN, bias, proj = ctx.saved_tensors[:10]
        dqkv = dproj = None
        if proj is None:
            q, k, v = qkv.unbind(2)
            dqkv = torch.empty_like(qkv)
            dq, dk, dv = dqkv.unbind(2)  # q's strides: the kernels write them in place
            dw, db = (torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
                      for t in (w, beta))  # w's and beta's strides (the kernel writes them so)
        else:
            q, k, v = proj_views(proj, ctx.H)[:3]
            dproj = torch.empty_like(proj)
            dq, dk, dv, dw, db = proj_views(dproj, ctx.H)
        do = qs.new_zeros(q.shape) if do is None else do
        native_path_chunk.fused_bwd(ctx.pc, q, k, w, beta, v, qs, P, KS, PS, IN, do, dkeys, dq,
                                    dk, dv, dw, db, ctx.extra, bias, dvals)
        dbias = db.sum((0, 1)) if bias is not None and ctx.needs_input_grad[10] else None
        dvalues = None
        if dvals is not None and ctx.needs_input_grad[13]:  # the slots past T: values' own
            dvalues = dvals.clone()
            dvalues[:, :, :q.shape[1]] = 0
        if proj is not None:
            return (None,) * 10 + (dbias, dproj, None, dvalues)
        return None, None, dqkv, dw, db, None, None, None, None, None, dbias, None, None, None


def proj_views(proj, H):
    """q, k, v, w (B, T, H, D) and beta (B, T, H): views of proj (B, T, 4 H D + H), laid out
    per head [q_h | k_h | v_h | w_h] (h = 0 .. H - 1), then beta: a head's four rows of a
    step in 4 D contiguous values (the kernels read a head-row's steps: 9 cache lines a step
    where the four parts H D apart touched 12)."""
    B, T, F = proj.shape
    D = (F - H) // (4 * H)
    return (*proj[..., :4 * H * D].view(B, T, H, 4, D).unbind(3), proj[..., 4 * H * D:])


def proj_weight(wq, wk, wv, ww, wb, H):
    """The weight of path_attention_fresh's projection (4 H D + H, d) from those of q, k, v,
    w (H D, d each, heads in order) and beta (H, d): its rows in proj_views' order."""
    d = wq.shape[-1]
    return torch.cat([torch.stack([t.view(H, -1, d) for t in (wq, wk, wv, ww)], 1).flatten(0, 2),
                      wb])
