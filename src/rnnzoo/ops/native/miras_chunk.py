"""The chunk loop of Miras' chunk form (ops.memory.miras_chunked) for the two-layer MLP memory
in C (miras_chunk.c), forward and backward by hand: one (batch row, head) pair at a time with
its weights in cache, instead of ~30 batched small products and elementwise passes over every
pair's weights per chunk (and autograd's as many again backward).

    W = phi(U_init + Pg),  G2 = dloss(gelu(k W1) W2 - v),  G1 = gelu'(k W1) o (G2 W2^T)
    U1 <- aT U1 - k^T (c o G1),  U2 <- aT U2 - gelu(k W1)^T (c o G2)

(Pg: the state's U' for the first chunk, the chunk's starting U after it.) k, v (B, H, N, C, K);
delta, c (B, H, N, C); aT (B, H, N); U_init [(H, K, F), (H, F, K)]; Pg, U0 [(B, H, K, F),
(B, H, F, K)]; phi one of miras_read.KINDS ("softmax", "qscale" with q = 4, "identity"), loss
one of LOSSES ("l2", "l3": 3 E |E|, "huber": E within delta, else delta sign(E)). Returns the
chunks' starting accumulators Us, per weight a list of N + 1 tensors (B, H, K, F) or
(B, H, F, K) (the last the final U), X2 (N, B, H, C, F), G1 (N, B, H, C, F) and G2
(N, B, H, C, K), chunk-major (each chunk's slice one block, as miras_read takes it),
differentiable in every input. All float32
or all float64 on the CPU (`ops.backend.use_native`); threads split the (batch, head) pairs.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, flop_count, native
from rnnzoo.ops.native.miras_read import KINDS

LOSSES = {"l2": 0, "l3": 1, "huber": 2}


def flops(chunks: int, C: int, K: int, F: int) -> tuple[int, int]:
    """(forward, backward) FLOPs over `chunks` (pair, chunk)s, 2 a multiply-add: forward the
    products k W1, X2 W2, G2 W2^T and the two updates (5 C K F); backward (which takes the
    forward's X2, G1, G2, E and GELU factors, recomputing only phi) the update's four
    vector-matrix products and the two dc dots (4 C K F), and dR W2, dR^T G2, dE W2^T,
    X2^T dE, dZ1 W1^T, k^T dZ1 (6 C K F)."""
    ckf = C * K * F
    return 2 * chunks * 5 * ckf, 2 * chunks * 10 * ckf


def load():
    return native.load("miras_chunk")


def _kernels(lib, dtype):
    P, L, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    return (native.kernel(lib, "miras_chunk_fwd", dtype, [P] * 19 + [L] * 6 + [i, i, L, L]),
            native.kernel(lib, "miras_chunk_bwd", dtype, [P] * 29 + [L, L]))


def _array(ts):
    """Data pointers (NULL for None) as a C array (void *[len])."""
    return (ctypes.c_void_p * len(ts))(*(None if t is None else t.data_ptr() for t in ts))


class _NativeChunks(first_order.Function):
    @staticmethod
    def forward(ctx, lib, phi, loss, plain, k, v, dl, aT, c, u1, u2, P1, P2, U1, U2):
        orig = (k, v, dl, aT, c, u1, u2, P1, P2, U1, U2)  # for `twice` (copies: no history)
        ins = [t.contiguous() for t in (k, v, dl, aT, c, u1, u2, P1, P2, U1, U2)]
        B, H, N, C, K = k.shape
        F = u1.shape[-1]
        fwd, _ = _kernels(lib, k.dtype)
        # every chunk start its own tensor: one (N + 1, B, H, K, F) was over glibc's mmap
        # threshold (32 MB at the #17 size), its pages faulted in anew on every call
        Us1 = [k.new_empty(B, H, K, F) for _ in range(N + 1)]
        Us2 = [k.new_empty(B, H, F, K) for _ in range(N + 1)]
        X2, G1, G2 = (k.new_empty(N, B, H, C, w) for w in (F, F, K))
        # for the backward, which then recomputes no product of the chunk's gradients: the
        # GELU's factors gelu'(Z1) and R gelu''(Z1) and the error E
        D1, D2, E = (k.new_empty(N, B, H, C, w) for w in (F, F, K))
        native.run(fwd, [(*map(native.ptr, ins), _array(Us1), _array(Us2),
                          *map(native.ptr, (X2, G1, G2, D1, D2, E)), H, N, C, K, F, B * H,
                          KINDS[phi], LOSSES[loss], p0, p1) for p0, p1 in native.rows(B * H)])
        ctx.save_for_backward(*ins[:9], X2, G1, G2, D1, D2, E, *Us1, *Us2, *orig)
        ctx.lib, ctx.kinds, ctx.plain = lib, (KINDS[phi], LOSSES[loss]), plain
        flop_count.add(flops(B * H * N, C, K, F)[0])
        return *Us1, *Us2, X2, G1, G2

    @staticmethod
    def twice(ctx, *douts):  # under create_graph: autograd through the PyTorch chunk loop
        first_order.plain_given(ctx.plain, "_NativeChunks")
        return (None,) * 4 + first_order.replay(ctx.plain, ctx.saved_tensors[-11:], douts,
                                                 ctx.needs_input_grad[4:])

    @staticmethod
    def backward(ctx, *douts):
        k, v, dl, aT, c, u1, u2, P1, P2, *rest = ctx.saved_tensors[:-11]
        fwd_out, Us = rest[:6], rest[6:]
        B, H, N, C, K = k.shape
        F = u1.shape[-1]
        _, bwd = _kernels(ctx.lib, k.dtype)
        douts = [None if t is None else t.contiguous() for t in douts]
        dUs1, dUs2, (dX2, dG1, dG2) = douts[:N + 1], douts[N + 1:2 * N + 2], douts[2 * N + 2:]
        grads = [torch.empty_like(t) for t in (k, v, dl, aT, c)]
        parts = native.rows(B * H)
        du = [u.new_zeros(len(parts), *u.shape) for u in (u1, u2)]   # one per thread
        dP1, dP2, dU1, dU2 = (torch.empty_like(t) for t in (P1, P2, P1, P2))
        args = [*map(native.ptr, (k, v, dl, aT, c, u1, u2, P1, P2)), _array(Us[:N + 1]),
                _array(Us[N + 1:]), _array(dUs1), _array(dUs2),
                *map(native.ptr, (dX2, dG1, dG2, *grads))]
        # the forward's blocks in one pointer array and the sizes in one long array: 31
        # integer arguments, so run() gives the ranges to torch's OpenMP team (<= 32)
        sizes = (ctypes.c_long * 8)(H, N, C, K, F, B * H, *ctx.kinds)
        native.run(bwd, [(*args, native.ptr(du[0][i]), native.ptr(du[1][i]),
                          *map(native.ptr, (dP1, dP2, dU1, dU2)), _array(fwd_out), sizes, p0, p1)
                         for i, (p0, p1) in enumerate(parts)])
        flop_count.add(flops(B * H * N, C, K, F)[1])
        return (None, None, None, None, *grads, du[0].sum(0), du[1].sum(0), dP1, dP2, dU1, dU2)


def miras_chunks(lib, phi, loss, k, v, dl, aT, c, init, Pg, U0, plain=None):
    """(Us, X2, G1, G2) as the module docstring says; `lib` = load(); plain: the same
    function of (k, v, dl, aT, c, *init, *Pg, *U0) in PyTorch, returning (*Us1, *Us2, X2,
    G1, G2) (ops.memory's chunk loop), which the node's `twice` differentiates (None: first order
    only)."""
    N = k.shape[2]
    *Us, X2, G1, G2 = _NativeChunks.apply(lib, phi, loss, plain, k, v, dl, aT, c, *init, *Pg,
                                          *U0)
    return [Us[:N + 1], Us[N + 1:]], X2, G1, G2
