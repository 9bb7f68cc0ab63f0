"""The dual-form read of test-time training's dense layers in C (ttt_read.c), a mini-batch
block at a time, forward and backward:

    read(lib, x, X, W, c, G, tok) -> z = x W + c - A G,   A_ij = tok_i (x_i . X_j + 1) (j <= i)

x, X: (N, M, I) the blocks' queries and the mini-batch's inputs; W (N, I, O), c (N, O) each
block's start weights; G (N, M, O) its lr-weighted gradients; tok (M,) shared. Returns z
(N, M, O), differentiable in all six, once (ops.memory's reads run it where its torch form
ran three batched products and their scale, tril and adds). float32 or float64 on the CPU
(`ops.backend.use_native` decides); threads split the blocks.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native


def load():
    return native.load("ttt_read")


def _call(lib, name, tensors, st, M, Di, Do, n):
    P, L = ctypes.c_void_p, ctypes.c_long
    fn = native.kernel(lib, name, tensors[0].dtype, [P] * (len(tensors) + 1) + [L] * 5)
    ptrs = [native.ptr(t) for t in (*tensors, st)]
    native.run(fn, [(*ptrs, M, Di, Do, *p) for p in native.rows(n) or [(0, 0)]])


def _rows(t):
    """t (..., M, D) with unit columns (else a contiguous copy)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(lead, *ts):
    """The kernels' st: H, NT and each tensor's (B, H, NT, row) strides; lead the blocks'
    leading shape, (N,) or (B, H, NT)."""
    H, NT = (1, 1) if len(lead) == 1 else lead[1:]
    st = [H, NT]
    for t in ts:
        st += [t.stride(0), 0, 0, t.stride(1)] if len(lead) == 1 else [*t.stride()[:4]]
    return torch.tensor(st, dtype=torch.long)


def tokens_major(x, D=None):
    """An empty tensor of x's (B, H, NT, M, .) shape (last dim D if given) laid out as a
    layer's (B, T, H, D) (T = NT M) viewed as blocks; x (N, M, .): a contiguous one."""
    *lead, M, Dx = x.shape
    D = Dx if D is None else D
    if len(lead) != 3:
        return x.new_empty(*lead, M, D)
    B, H, NT = lead
    return x.new_empty(B, NT, M, H, D).permute(0, 3, 1, 2, 4)


def _grad_like(t):
    """t's gradient: t's layout if contiguous, else tokens_major's (a view of a layer's
    (B, T, H, K) input takes its gradient in that layout)."""
    return torch.empty_like(t) if t.is_contiguous() else tokens_major(t)


class _Read(first_order.Function):
    @staticmethod
    def forward(ctx, lib, like, plain, x, X, W, c, G, tok):
        orig = (x, X, W, c, G, tok)  # for `twice` (copies carry no history)
        x, X = _rows(x), _rows(X)
        W, c, G, tok = (t.contiguous() for t in (W, c, G, tok))
        lead, (M, Di), Do = x.shape[:-2], x.shape[-2:], W.shape[-1]
        N = lead.numel()
        z = torch.empty_like(like) if like is not None else x.new_empty(*lead, M, Do)
        S1 = x.new_empty(N, M, M)
        st = _strides(lead, x, X, z)
        _call(lib, "ttt_read_fwd", (x, X, W, c, G, tok, z, S1), st, M, Di, Do, N)
        ctx.save_for_backward(x, X, W, G, tok, S1, *orig)
        ctx.lib, ctx.plain = lib, plain
        return z

    @staticmethod
    def twice(ctx, dz):  # under create_graph: autograd through the PyTorch read
        first_order.plain_given(ctx.plain, "_Read")
        return (None,) * 3 + first_order.replay(ctx.plain, ctx.saved_tensors[6:], (dz,),
                                                 ctx.needs_input_grad[3:])

    @staticmethod
    def backward(ctx, dz):
        x, X, W, G, tok, S1 = ctx.saved_tensors[:6]
        lead, (M, Di), Do = x.shape[:-2], x.shape[-2:], W.shape[-1]
        N = lead.numel()
        dz = _rows(dz)
        dx, dX = _grad_like(x), _grad_like(X)
        dW, dG = torch.empty_like(W), torch.empty_like(G)
        dc, dtok = x.new_empty(*W.shape[:-2], Do), x.new_empty(N, M)
        st = _strides(lead, x, X, dz, dx, dX)
        _call(ctx.lib, "ttt_read_bwd", (x, X, W, G, tok, S1, dz, dx, dX, dW, dc, dG, dtok), st,
              M, Di, Do, N)
        return None, None, None, dx, dX, dW, dc, dG, dtok.sum(0)


def read(lib, x, X, W, c, G, tok, like=None, plain=None):
    """z (N, M, O); `lib` = load(). x, X may also be (B, H, NT, M, I) views at any strides
    with unit columns (a layer's (B, T, H, K) tensors as mini-batch blocks: no copies), W, c,
    G then (B, H, NT, ...); z is laid out as `like` (a tensor of z's shape, e.g. tokens_major's)
    where given; plain: the same function of (x, X, W, c, G, tok) in PyTorch (ops.memory's),
    which the node's `twice` differentiates (None: first order only)."""
    return _Read.apply(lib, like, plain, x, X, W, c, G, tok)
