"""The per-step reads of Miras' chunk form on the CPU, fused in C (miras_read.c): for one
dense layer of the memory, inside every chunk from its start U_0,

    W_t = a_t W_t-1 - e_t X_t^T G_t  (W_-1 = U_0),    y_t = x_t phi(U_init + W_t)

with phi the row softmax ("softmax", Memora), V |V|_q^(2-q) ("qscale", Moneta) or the identity
("identity", Yaad), each step's weights made and used in cache, never stored: the backward
recomputes them a chunk at a time.

x: (B, H, N, C, I); a, e: (B, H, N, C); U_init: (H, I, O); U_0, X, G: lists of the N chunks
(B, H, I, O), (B, H, C, I) and (B, H, C, O), as the Python chunk loop makes them (stacking them
cost a copy of every chunk's weights), or (each of them) a chunk-major tensor (N, B, H, ...), as
the C loop (miras_chunk) writes X and G. Returns y (B, H, N, C, O), differentiable in all of them.
All float32 or all float64 on the CPU (`ops.backend.use_native` decides). Work is split over
torch.get_num_threads() threads by chunks (ctypes lets go of the GIL during each call).
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, flop_count, native

KINDS = {"softmax": 0, "qscale": 1, "identity": 2}


def flops(steps: int, n_in: int, n_out: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of the kernels over `steps` (batch, head, step)s of one
    (n_in, n_out) = (I, O) layer, 2 a multiply-add (as mesa_scan books a rank-one
    update): forward the step's update W_t = a_t W_t-1 - e_t X_t^T G_t (2 I O) and its read x_t phi(V_t) (2 I O);
    backward the update recomputed, dx_t (V_t dy_t, or P_t dy_t), dV_t's outer product
    x_t dy_t^T, da_t = <dW, W_t-1>, dX_t = dW G_t and dG_t = X_t dW (6 x 2 I O). The
    softmax's exponentials, the q-norms and the identity's dU_init (a torch product, which
    the counter sees) are not in it."""
    n = steps * n_in * n_out
    return 4 * n, 12 * n


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    real = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return (native.kernel(lib, "miras_read_fwd", dtype, [P] * 9 + [L] * 5 + [ctypes.c_int, real, L, L]),
            native.kernel(lib, "miras_read_bwd", dtype,
                          [P] * 17 + [L] * 5 + [ctypes.c_int, real, L, L]))


def _array(ts, N):
    """The data pointers of N chunks as a C array (void *[N]): a list of tensors, or a
    chunk-major tensor (N, ...) whose slices are the chunks."""
    if isinstance(ts, torch.Tensor):
        step = ts.stride(0) * ts.element_size()
        return (ctypes.c_void_p * N)(*(ts.data_ptr() + n * step for n in range(N)))
    return (ctypes.c_void_p * N)(*(t.data_ptr() for t in ts))


def _unflat(flat, stacked, N):
    """[U0, X, G] from the Function's flat trailing inputs: each N tensors or one stacked."""
    out, i = [], 0
    for st in stacked:
        n = 1 if st else N
        out.append(flat[i] if st else list(flat[i:i + n]))
        i += n
    return out


class _NativeRead(first_order.Function):
    @staticmethod
    def forward(ctx, lib, kind, q, stacked, plain, x, u0, a, e, *chunks):
        orig = (x, u0, a, e, *chunks)  # for `twice` (copies carry no history)
        x, u0, a, e = (t.contiguous() for t in (x, u0, a, e))
        B, H, N, C, n_in = x.shape
        chunks = [t.contiguous() for t in chunks]
        U0, X, G = _unflat(chunks, stacked, N)
        n_out = G[0].shape[-1]
        fwd, _ = _kernels(lib, x.dtype)
        y = x.new_empty(B, H, N, C, n_out)
        kind, qv = KINDS[kind], float(q or 0.0)
        # the softmax's row maxima and inverse sums, the q-scale's norms, per step
        nrm = (a.new_empty(*a.shape, 2, n_in) if kind == 0 else a.new_empty(a.shape)
               if kind == 1 else None)
        ptrs = [native.ptr(x), native.ptr(u0), _array(U0, N), native.ptr(a), native.ptr(e),
                _array(X, N), _array(G, N), native.ptr(y), native.ptr(nrm)]
        native.run(fwd, [(*ptrs, H, N, C, n_in, n_out, kind, qv, *p)
                         for p in native.rows(B * H * N) or [(0, 0)]])
        ctx.save_for_backward(*orig, x, u0, a, e, *chunks, *((y, nrm) if kind < 2 else ()))
        ctx.lib, ctx.kind, ctx.q, ctx.stacked, ctx.plain = lib, kind, qv, stacked, plain
        ctx.n_orig = len(orig)
        flop_count.add(flops(B * H * N * C, n_in, n_out)[0])
        return y

    @staticmethod
    def twice(ctx, dy):  # under create_graph: autograd through the PyTorch reads
        first_order.plain_given(ctx.plain, "_NativeRead")
        def fn(x, u0, a, e, *flat):
            return ctx.plain(x, u0, a, e, *_unflat(flat, ctx.stacked, x.shape[2]))
        return (None,) * 5 + first_order.replay(fn, ctx.saved_tensors[:ctx.n_orig], (dy,),
                                                 ctx.needs_input_grad[5:])

    @staticmethod
    def backward(ctx, dy):
        x, u0, a, e, *rest = ctx.saved_tensors[ctx.n_orig:]
        B, H, N, C, n_in = x.shape
        M = sum(1 if st else N for st in ctx.stacked)
        U0, X, G = _unflat(rest[:M], ctx.stacked, N)
        y, nrm = rest[M:] or (None, None)
        n_out = G[0].shape[-1]
        _, bwd = _kernels(ctx.lib, x.dtype)
        dy = dy.contiguous()
        dx, da, de = (torch.empty_like(t) for t in (x, a, e))
        dU0, dX, dG = (torch.empty_like(t) if isinstance(t, torch.Tensor) else
                       [torch.empty_like(c) for c in t] for t in (U0, X, G))
        parts = native.rows(B * H * N) or [(0, 0)]
        du0 = u0.new_zeros(len(parts), *u0.shape)       # one dU_init per thread
        ptrs = [native.ptr(x), native.ptr(u0), _array(U0, N), native.ptr(a), native.ptr(e),
                _array(X, N), _array(G, N), native.ptr(dy), native.ptr(y), native.ptr(nrm),
                native.ptr(dx), _array(dU0, N)]
        rest = [native.ptr(da), native.ptr(de), _array(dX, N), _array(dG, N)]
        native.run(bwd, [(*ptrs, native.ptr(du0[i]), *rest, H, N, C, n_in, n_out, ctx.kind,
                          ctx.q, *p) for i, p in enumerate(parts)])
        du0 = du0.sum(0)
        flop_count.add(flops(B * H * N * C, n_in, n_out)[1])
        if ctx.kind == 2:    # dU_init = sum_t x_t^T dy_t: a product per (batch, head) on
            # views (a product per head took copies of the whole x and dy), summed over batch
            du0 = torch.bmm(x.view(B * H, N * C, n_in).transpose(1, 2),
                            dy.view(B * H, N * C, n_out)).view(B, H, n_in, n_out).sum(0)
        flat = [d for t in (dU0, dX, dG) for d in ([t] if isinstance(t, torch.Tensor) else t)]
        return (None, None, None, None, None, dx, du0, da, de, *flat)


def miras_read(lib, kind, q, x, u0, U0, a, e, X, G, plain=None):
    """y (B, H, N, C, O); `lib` = native.load("miras_read"); kind one of KINDS (q: qscale's);
    U0, X, G: each a list of N chunks or a chunk-major tensor (N, B, H, ...) (no list, no
    stack: its gradient is one tensor too); plain: the same function of (x, u0, a, e, U0, X,
    G) in PyTorch (ops.memory's), which the node's `twice` differentiates (None: first
    order only)."""
    stacked = tuple(isinstance(t, torch.Tensor) for t in (U0, X, G))
    flat = [c for t in (U0, X, G) for c in ([t] if isinstance(t, torch.Tensor) else t)]
    return _NativeRead.apply(lib, kind, q, stacked, plain, x, u0, a, e, *flat)


def load():
    return native.load("miras_read")
