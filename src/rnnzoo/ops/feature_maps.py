"""Normalised linear attention through a polynomial feature map (Based, Arora et al. 2024,
arXiv:2402.18668; ReBased, Aksenov et al. 2024, arXiv:2402.10644).

A kernel k(q, k) = phi(q) . phi(k) stands in for exp(q . k):

    taylor:  phi(x) = [1, x, vec(x x^T) / sqrt(2)]     phi(q) . phi(k) = 1 + q.k + (q.k)^2 / 2
    square:  phi(x) = vec(x x^T)                        phi(q) . phi(k) = (q.k)^2

(the second-order Taylor expansion of exp, and ReBased's square of a normalised affine map,
whose normalisation the layer does before). Attention with the kernel, normalised:

    o_t = sum_{s<=t} k(q_t, k_s) v_s / (sum_{s<=t} k(q_t, k_s) + eps)

is a linear attention on the features with the value widened by a column of ones, whose
last output column is the normaliser:

    S_t = S_{t-1} + phi(k_t) [v_t, 1]^T          S: (F, V + 1) per head, F = the feature size
    [num_t, den_t] = S_t^T phi(q_t),              o_t = num_t / (den_t + eps)

so the recurrent form is ops.chunk.linear's (no decay), and the parallel form is the
masked (T, T) kernel matrix (on the C kernels, ops/native/poly_attn.c, by causal tiles,
never whole), which never builds the F-wide features of the sequence's own tokens (only
those of q, to read an initial state, and the packed ones of k for the final state). The chunk form (`_chunk`) takes the
kernel matrix inside each chunk and, across chunks, the packed features (`packed`: the
quadratic part over the pairs a <= b only, about half of F, by the kernel's symmetry);
under sequence parallelism or on CUDA it is ops.chunk.linear's on the full features. Its
batched products run on ops.native.attention.bmm where the C kernels do (CPU, float32/64).
"""

from __future__ import annotations

import ctypes
import math

import torch

from rnnzoo.checks import choice, positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.ops import backend, first_order, flop_count, native, sequence_parallel
from rnnzoo.ops.chunk.linear import gated_linear_attention, gated_linear_attention_recurrent
from rnnzoo.ops.finite import clean_inputs, finite_inputs, marked, poison
from rnnzoo.ops.native import attention as native_attention

__all__ = ["FEATURE_MAPS", "feature_attention", "feature_size", "features", "kernel"]

FEATURE_MAPS = ("taylor", "square")


def feature_size(feature_map: str, d: int) -> int:
    """F, the width of phi(x) for x of width d."""
    return 1 + d + d * d if feature_map == "taylor" else d * d


def features(x: torch.Tensor, feature_map: str) -> torch.Tensor:
    """phi(x): (..., d) -> (..., F)."""
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2)
    if feature_map == "square":
        return outer
    return torch.cat([torch.ones_like(x[..., :1]), x, outer / math.sqrt(2)], -1)


def kernel(s: torch.Tensor, feature_map: str) -> torch.Tensor:
    """phi(q) . phi(k) from s = q . k."""
    return s * s if feature_map == "square" else 1 + s + 0.5 * s * s


def feature_attention(q, k, v, feature_map: str = "taylor", *, mode: str = "chunk",
                      initial_state=None, eps: float = 1e-12, chunk_size: int = 64):
    """q, k: (B, T, H, d); v: (B, T, H, V); initial_state: (B, H, F, V + 1) or None.
    -> (o (B, T, H, V) in q's dtype, final state (B, H, F, V + 1), float32 / float64).
    mode: "sequential" (the recurrent loop), "chunk" or "parallel" (the kernel matrix)."""
    choice("feature_map", feature_map, FEATURE_MAPS)
    choice("mode", mode, ("sequential", "chunk", "parallel"))
    positive_int("chunk_size", chunk_size)
    B, T, H, _ = q.shape
    V = v.shape[-1]
    if initial_state is None:
        initial_state = torch.zeros(B, H, feature_size(feature_map, q.shape[-1]), V + 1,
                                    device=q.device, dtype=state_dtype(q.dtype))
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], -1)
    if mode == "parallel" and T and poly_lib(q, k, v) is not None:  # (T = 0: no tiles)
        o, S = _parallel_heads(poly_lib(q, k, v), q, k, v1, feature_map, initial_state, eps)
        return o.to(q.dtype), S
    if mode == "parallel":
        o, S = _parallel(q, k, v1, feature_map, initial_state)
    elif mode == "chunk" and not sequence_parallel.active() and not backend.use_triton(q, k, v):
        o, S = _chunk(q, k, v1, feature_map, initial_state, chunk_size)
    else:
        run = gated_linear_attention_recurrent if mode == "sequential" else gated_linear_attention
        extra = {} if mode == "sequential" else {"chunk_size": chunk_size}
        o, S = run(features(q, feature_map), features(k, feature_map), v1, None, scale=1.0,
                   initial_state=initial_state, **extra)
    return (o[..., :V] / (o[..., V:] + eps)).to(q.dtype), S


def _parallel(q, k, v1, feature_map, S0):
    """o (B, T, H, V + 1), S: the masked kernel matrix plus the initial state's reading."""
    (q,), (k, v1), marks = finite_inputs((q,), (k, v1))
    dt = S0.dtype
    q, k, v1 = (t.to(dt).transpose(1, 2) for t in (q, k, v1))          # (B, H, T, .)
    o = _poly_heads(q, k, v1, feature_map == "square") + features(q, feature_map) @ S0
    S = S0 + features(k, feature_map).transpose(-1, -2) @ v1
    return poison(o.transpose(1, 2), marks.outputs), poison(S, marks.state)


def _poly_heads(q, k, v, square):
    """P v, P = kernel(q k^T) on and below the diagonal: q, k (B, H, T, d), v (B, H, T, W) ->
    (B, H, T, W), the masked kernel matrix whole (the form _PolyHeads's `twice`
    differentiates)."""
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    A = torch.where(causal, kernel(q @ k.transpose(-1, -2), "square" if square else "taylor"),
                    0.0)
    return A @ v


def poly_lib(*tensors):
    """ops/native/poly_attn.c's library where the C kernels run for these tensors, else None
    (inside bench.layer_flops' counting, where the CPU timing runs them: ops.flop_count)."""
    return native.load("poly_attn") if flop_count.native(*tensors) else None


def band_entries(T: int, tile: int) -> int:
    """The score entries poly_attn.c's products cover on one head-row: its causal tiles of
    `tile` queries over T, each by bands.h's bands (rows x keys; the key bands cover the same
    entries); each entry is d multiply-adds for s and W for P v, and so on."""
    n = 0
    for i0 in range(0, T, tile):
        t = min(tile, T - i0)
        e, m, r = i0 + t, 1, 0
        while r < t:
            rr, cc = 16 * m // 6 * 6, i0 + 16 * m
            r1, c = (t, e) if cc >= e or rr >= t else (rr, cc)
            n += (r1 - r) * c
            m, r = m + 1, r1
    return n


_PA_TILE = 64  # the parallel form's causal tiles of queries (as attention.c's _SM_TILE)


def _parallel_heads(lib, q, k, v1, feature_map, S0, eps):
    """`_parallel` on C head-rows (poly_attn.c: the kernel matrix a causal tile at a time,
    never whole), normalised (`_Normalised`): -> o (B, T, H, V), S. The initial state read
    through the packed features of q (skipped for a zero state that takes no gradient, where
    reading it is free), the final state summed through those of k. Inputs checked by one sum
    each (`clean_inputs`: no copies when finite)."""
    (q,), (k, v1), marks = clean_inputs((q,), (k, v1))
    dt = S0.dtype
    d = q.shape[-1]
    q, k, v1 = (t.to(dt).transpose(1, 2) for t in (q, k, v1))          # (B, H, T, .)
    o = _PolyHeads.apply(lib, q, k, v1, feature_map == "square")       # (B, H, T, W)
    alib = native_attention.load() if backend.use_native(q) else None  # (counted: torch's)
    mm = (lambda a, b: native_attention.bmm(alib, a, b)) if alib is not None else torch.matmul
    if S0.requires_grad or not backend.host_readable(S0) or bool(S0.any()):
        o = o + mm(packed(q, feature_map)[0], fold(S0, d, feature_map))
    Ut = mm(v1.transpose(-1, -2), packed(k, feature_map)[0])         # (B, H, W, F'): W rows
    S = S0 + unfold(Ut.transpose(-1, -2), d, feature_map)
    return marked(_Normalised.apply(o, eps), S, marks)


def _normalised(o, eps):
    """_Normalised's plain form (its `twice`)."""
    W = o.shape[-1]
    return (o[..., :W - 1] / (o[..., W - 1:] + eps)).transpose(1, 2)


class _Normalised(first_order.Function):
    """o (B, H, T, V + 1) -> o[..., :V] / (o[..., V:] + eps) laid out (B, T, H, V), contiguous
    (the output projection's layout): one pass each way, the gradient (B, H, T, V + 1)
    contiguous for the kernel's backward (where the sliced division's autograd took a zeroed
    gradient, slice copies and the transposes' copies)."""

    @staticmethod
    def forward(ctx, o, eps):
        B, H, T, W = o.shape
        den = o[..., W - 1:] + eps
        y = o.new_empty(B, T, H, W - 1)
        torch.div(o[..., :W - 1], den, out=y.transpose(1, 2))
        ctx.save_for_backward(y, den, o)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g):
        y, den, _ = ctx.saved_tensors
        gt, yt = g.transpose(1, 2), y.transpose(1, 2)
        B, H, T, V = gt.shape
        do = g.new_empty(B, H, T, V + 1)
        torch.div(gt, den, out=do[..., :V])
        do[..., V:] = torch.mul(gt, yt).sum(-1, keepdim=True).div_(den).neg_()
        return do, None

    @staticmethod
    def twice(ctx, g):
        return first_order.replay(_normalised, (ctx.saved_tensors[2], ctx.eps), (g,),
                                  ctx.needs_input_grad)


class _PolyHeads(first_order.Function):
    """o = P v with P = kernel(q k^T) on and below the diagonal: q, k (B, H, T, d), v (B, H,
    T, W) -> (B, H, T, W), one C call per thread over whole head-rows each way; the tiles'
    scores kept for the backward up to attention's _KEEP bytes, else recomputed."""

    @staticmethod
    def forward(ctx, lib, q, k, v, square):
        B, H, T, d = q.shape
        N, W, tile = B * H, v.shape[-1], min(_PA_TILE, T)
        q2, k2, v2 = (t.reshape(N, T, t.shape[-1]).contiguous() for t in (q, k, v))
        PT = native_attention._tile_scores(T, tile)
        S = q2.new_empty(N, PT) if N * PT * q.element_size() <= native_attention._KEEP else None
        out = q2.new_empty(N, T, W)
        native_attention._run(native.kernel(lib, "pa_heads_fwd", q.dtype, _PA_ARGS["pa_heads_fwd"]),
                              [native.ptr(t) for t in (q2, k2, v2, out, S)],
                              (T, d, W, tile, int(square), PT), N)
        ctx.save_for_backward(q2, k2, v2, S, q, k, v)  # q, k, v for `twice` (no copies)
        ctx.lib, ctx.square, ctx.tile, ctx.PT, ctx.shape = lib, square, tile, PT, (B, H)
        flop_count.add(2 * N * band_entries(T, tile) * (d + W))  # s = q k^T, P v
        return out.view(B, H, T, W)

    @staticmethod
    def twice(ctx, do):  # under create_graph: autograd through the whole kernel matrix
        return (None, *first_order.replay(_poly_heads, (*ctx.saved_tensors[4:], ctx.square),
                                          (do,), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, do):
        q2, k2, v2, S = ctx.saved_tensors[:4]
        N, T, d = q2.shape
        W = v2.shape[-1]
        do2 = do.reshape(N, T, W).contiguous()
        dq, dk, dv = torch.empty_like(q2), torch.empty_like(k2), torch.empty_like(v2)
        fn = native.kernel(ctx.lib, "pa_heads_bwd", q2.dtype, _PA_ARGS["pa_heads_bwd"])
        native_attention._run(fn, [native.ptr(t) for t in (q2, k2, v2, do2, S, dq, dk, dv)],
                              (T, d, W, ctx.tile, int(ctx.square), ctx.PT), N)
        n = band_entries(T, ctx.tile)  # dP, dv, dq, dk (and s again without S)
        flop_count.add(2 * N * n * (2 * (W + d) + (d if S is None else 0)))
        B, H = ctx.shape
        return (None, dq.view(B, H, T, d), dk.view(B, H, T, d), dv.view(B, H, T, W), None)


_PA_ARGS = {"pa_heads_fwd": [ctypes.c_void_p] * 5 + [ctypes.c_long] * 8,
            "pa_heads_bwd": [ctypes.c_void_p] * 8 + [ctypes.c_long] * 8}


def _torch_pairs(x, w, lin):
    """ops.native.attention.pairs in PyTorch: psi (..., [1 + d +] P) from x (..., d) and the
    pair weights w (P,), the pairs a <= b by one-hot gathers as matmuls (the form its node's
    `twice` differentiates)."""
    d = x.shape[-1]
    a, b = torch.triu_indices(d, d, device=x.device)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    psi = (x @ (eye[:, a] * w)) * (x @ eye[:, b])
    return torch.cat([torch.ones_like(x[..., :1]), x, psi], -1) if lin else psi


def packed(x: torch.Tensor, feature_map: str) -> tuple[torch.Tensor, torch.Tensor]:
    """psi(x): (..., d) -> (..., F'), the feature map with its quadratic part over the pairs
    a <= b only (F' = [1 + d +] d (d + 1) / 2 rather than F = [1 + d +] d^2), so that
    psi(q) . psi(k) = phi(q) . phi(k) (the kernel is symmetric in the pair); and the fold
    R: (F', F), psi(q)^T (R S) = phi(q)^T S for any state S (F, W), so R S is S read packed
    and R^T P a packed sum P of psi(k) v^T unpacked (S's (a, b) and (b, a) entries of the
    pair each get its half; the chunk form applies R as index gathers, `fold` and `unfold`).
    Packed quadratic entries: x_a x_b c on the diagonal and
    x_a x_b c sqrt(2) off it, c = 1 / sqrt(2) (taylor) or 1 (square); R is 1 on the
    constant, linear and diagonal entries, 1 / sqrt(2) at both (a, b) and (b, a)."""
    d = x.shape[-1]
    a, b = torch.triu_indices(d, d, device=x.device)
    c = 1.0 if feature_map == "square" else math.sqrt(0.5)
    diag = a == b
    one = torch.ones((), dtype=x.dtype, device=x.device)
    w = torch.where(diag, c * one, c * math.sqrt(2.0) * one)
    P = a.shape[0]
    R = x.new_zeros(P, d, d)
    half = torch.where(diag, one, math.sqrt(0.5) * one)
    R[torch.arange(P, device=x.device), a, b] = half
    R[torch.arange(P, device=x.device), b, a] = half
    R = R.flatten(1)
    lib = native_attention.load() if backend.use_native(x) else None
    if lib is not None:  # the C kernel: no (..., P) intermediates in autograd
        psi = native_attention.pairs(lib, x, w, feature_map != "square", plain=_torch_pairs)
    else:
        psi = _torch_pairs(x, w, feature_map != "square")
    if feature_map == "square":
        return psi, R
    lin = 1 + d
    Rf = x.new_zeros(lin + P, lin + d * d)
    Rf[:lin, :lin] = torch.eye(lin, dtype=x.dtype, device=x.device)
    Rf[lin:, lin:] = R
    return psi, Rf


def _pairs(d: int, feature_map: str, device):
    """The constant and linear rows' count, and the quadratic rows' indices: (a, b) and
    (b, a) flattened (d d), for the pairs a <= b."""
    a, b = torch.triu_indices(d, d, device=device)
    return (0 if feature_map == "square" else 1 + d), a * d + b, b * d + a


def fold(S: torch.Tensor, d: int, feature_map: str) -> torch.Tensor:
    """R S: a state S (..., F, W) read packed (..., F', W), psi(q)^T R S = phi(q)^T S: the
    constant and linear rows as they are, pair (a, b)'s row (S_ab + S_ba) / sqrt(2) (S_aa on
    the diagonal). Index gathers, where R as a matrix cost a dense (F', F) product."""
    lin, ab, ba = _pairs(d, feature_map, S.device)
    Q = S[..., lin:, :]
    diag = (ab == ba)[:, None]
    P = torch.where(diag, Q[..., ab, :], (Q[..., ab, :] + Q[..., ba, :]) * math.sqrt(0.5))
    return torch.cat([S[..., :lin, :], P], -2)


def unfold(P: torch.Tensor, d: int, feature_map: str) -> torch.Tensor:
    """R^T P: a packed sum P (..., F', W) of psi(k) v^T unpacked (..., F, W): pair (a, b)'s
    row over sqrt(2) at both (a, b) and (b, a) (as it is on the diagonal)."""
    lin, ab, ba = _pairs(d, feature_map, P.device)
    n = ab.shape[0]
    at = torch.empty(d * d, dtype=torch.long, device=P.device)  # the pair of each (a, b)
    at[ab] = torch.arange(n, device=P.device)
    at[ba] = torch.arange(n, device=P.device)
    Q = P[..., lin:, :]
    Q = torch.where((ab == ba)[:, None], Q, Q * math.sqrt(0.5))[..., at, :]
    return torch.cat([P[..., :lin, :], Q], -2)


def _chunk(q, k, v1, feature_map, S0, C):
    """o (B, T, H, W), S: chunkwise, the kernel matrix inside each chunk (from the d-wide
    q.k, never the F-wide features) and the packed features psi (`packed`) across chunks:

        o_i = sum_{j<=i, i's chunk} kernel(q_i.k_j) v_j + psi(q_i)^T (R S0 + sum_{chunks
              before i's} psi(k)^T v),         S = S0 + R^T sum_all psi(k)^T v"""
    (q,), (k, v1), marks = finite_inputs((q,), (k, v1))
    dt = S0.dtype
    B, T, H, d = q.shape
    C = min(C, T)
    N = -(-T // C)
    q, k, v1 = (t.to(dt).transpose(1, 2) for t in (q, k, v1))          # (B, H, T, .)
    if N * C != T:  # zero keys and values after the end: psi(0) 0^T adds nothing
        q, k, v1 = (torch.nn.functional.pad(t, (0, 0, 0, N * C - T)) for t in (q, k, v1))
    q, k, v1 = (t.unflatten(2, (N, C)).contiguous() for t in (q, k, v1))  # (B, H, N, C, .)
    lib = native_attention.load() if backend.use_native(q, k, v1) else None
    mm = (lambda a, b: native_attention.bmm(lib, a, b)) if lib is not None else torch.matmul
    # the products laid out (W, .): W = V + 1 (17, 33) is a vector and one column, their
    # other side (C, F') whole vectors; o^T and U^T, transposed once at the end
    At = _CausalKernel.apply(mm(k, q.transpose(-1, -2)), feature_map == "square", True)
    psi_q, psi_k = packed(q, feature_map)[0], packed(k, feature_map)[0]
    Ut = mm(v1.transpose(-1, -2), psi_k)                                # (B, H, N, W, F')
    before, total = _Starts.apply(fold(S0, d, feature_map).transpose(-1, -2), Ut)
    read = (_Read.apply(lib, before, psi_q) if lib is not None
            else mm(before, psi_q.transpose(-1, -2)))
    o = _Transposed.apply(mm(v1.transpose(-1, -2), At) + read)         # (B, H, N, C, W)
    S = S0 + unfold(total.transpose(-1, -2), d, feature_map)
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2)
    return poison(o, marks.outputs), poison(S, marks.state)



class _CausalKernel(first_order.Transformable):
    """`kernel` of the scores s (..., C, C) on and below the diagonal, 0 above (upper: on and
    above, 0 below, for the transposed scores k q^T): three passes forward and two backward,
    where torch.where over the composed kernel took some eleven. The backward is written in
    differentiable ops over the saved input: differentiable twice as it is."""

    @staticmethod
    def forward(ctx, s, square, upper=False):
        ctx.save_for_backward(s)
        ctx.square, ctx.upper = square, upper
        A = s * s if square else torch.addcmul(s + 1, s, s, value=0.5)
        return A.triu_() if upper else A.tril_()

    @staticmethod
    def backward(ctx, dA):
        (s,) = ctx.saved_tensors
        ds = torch.mul(dA, s).mul_(2) if ctx.square else torch.addcmul(dA, dA, s)
        return (ds.triu_() if ctx.upper else ds.tril_()), None, None


class _Starts(first_order.Function):
    """A running sum over chunks entered with `first`: first (B, H, F', W), U (B, H, N, F', W)
    -> before (B, H, N, F', W), before_n = first + sum_{m<n} U_m, and total = sum_m U_m
    (B, H, F', W). A pass each way (one add per chunk), where a cat and cumsum took three
    forward and five backward (the cat's zero-filled slices, cumsum's flip-cumsum-flip)."""

    @staticmethod
    def forward(ctx, first, U):
        if torch.compiler.is_compiling():  # dynamo refuses out= into a slice: a cumsum
            return _Starts.plain(first, U)
        before = U.new_empty(U.shape)
        before[:, :, 0] = first
        for n in range(1, U.shape[2]):
            torch.add(before[:, :, n - 1], U[:, :, n - 1], out=before[:, :, n])
        return before, U.sum(2)

    @staticmethod
    def plain(first, U):  # torch.func and torch.compile: the same sums, out of place
        return torch.cat([first[:, :, None], U[:, :, :-1]], 2).cumsum(2), U.sum(2)

    @staticmethod
    def backward(ctx, d_before, d_total):  # dU_n = d_total + sum_{m>n} d_before_m
        if torch.compiler.is_compiling():  # as in forward: the out-of-place form
            return _Starts.twice(ctx, d_before, d_total)
        dU = d_before.new_empty(d_before.shape)
        dU[:, :, -1] = d_total
        for n in range(dU.shape[2] - 2, -1, -1):
            torch.add(dU[:, :, n + 1], d_before[:, :, n + 1], out=dU[:, :, n])
        return d_before.sum(2), dU

    @staticmethod
    def twice(ctx, d_before, d_total):  # out of place: dU_n = d_total + sum_{m>n} d_before_m
        later = d_before[:, :, 1:].flip(2).cumsum(2).flip(2)
        dU = torch.cat([later, torch.zeros_like(d_total[:, :, None])], 2) + d_total[:, :, None]
        return d_before.sum(2), dU


class _Read(first_order.Function):
    """before (..., W, F') psi_q^T: psi_q (..., C, F') -> (..., W, C) on `bmm`, whose
    gradient in psi_q comes as g^T before (C, F') directly (bmm's backward of the
    transposed operand gave its transpose (F', C), copied back for `pairs`)."""

    @staticmethod
    def forward(ctx, lib, before, psi_q):
        ctx.save_for_backward(before, psi_q)
        ctx.lib = lib
        return native_attention.bmm(lib, before, psi_q.transpose(-1, -2))

    @staticmethod
    def backward(ctx, g):
        before, psi_q = ctx.saved_tensors
        d_before = native_attention.bmm(ctx.lib, g, psi_q) if ctx.needs_input_grad[1] else None
        d_psi = (native_attention.bmm(ctx.lib, g.transpose(-1, -2), before)
                 if ctx.needs_input_grad[2] else None)
        return None, d_before, d_psi

    @staticmethod
    def twice(ctx, g):
        before, psi_q = ctx.saved_tensors
        return first_order.replay(lambda lib, b, p: b @ p.transpose(-1, -2),
                                  (None, before, psi_q), (g,), ctx.needs_input_grad)


class _Transposed(first_order.Transformable):
    """x (..., m, n) -> its transpose (..., n, m), contiguous, and the gradient's transpose
    contiguous too (once, where each product reading it copied it); differentiable twice."""

    @staticmethod
    def forward(ctx, x):
        return x.transpose(-1, -2).contiguous()

    @staticmethod
    def backward(ctx, g):
        return g.transpose(-1, -2).contiguous()
