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
from torch.autograd.function import once_differentiable

from rnnzoo.ops import native


def load():
    return native.load("ttt_read")


def _call(lib, name, tensors, M, Di, Do, n):
    P, L = ctypes.c_void_p, ctypes.c_long
    fn = native.kernel(lib, name, tensors[0].dtype, [P] * len(tensors) + [L] * 5)
    ptrs = [native.ptr(t) for t in tensors]
    native.run(fn, [(*ptrs, M, Di, Do, *p) for p in native.rows(n) or [(0, 0)]])


class _Read(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, x, X, W, c, G, tok):
        x, X, W, c, G, tok = (t.contiguous() for t in (x, X, W, c, G, tok))
        (N, M, Di), Do = x.shape, W.shape[-1]
        z = x.new_empty(N, M, Do)
        S1 = x.new_empty(N, M, M)
        _call(lib, "ttt_read_fwd", (x, X, W, c, G, tok, z, S1), M, Di, Do, N)
        ctx.save_for_backward(x, X, W, G, tok, S1)
        ctx.lib = lib
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, dz):
        x, X, W, G, tok, S1 = ctx.saved_tensors
        (N, M, Di), Do = x.shape, W.shape[-1]
        dx, dX, dW, dG = (torch.empty_like(t) for t in (x, X, W, G))
        dc, dtok = x.new_empty(N, Do), x.new_empty(N, M)
        _call(ctx.lib, "ttt_read_bwd", (x, X, W, G, tok, S1, dz.contiguous(), dx, dX, dW, dc,
                                        dG, dtok), M, Di, Do, N)
        return None, dx, dX, dW, dc, dG, dtok.sum(0)


def read(lib, x, X, W, c, G, tok):
    """z (N, M, O); `lib` = load()."""
    return _Read.apply(lib, x, X, W, c, G, tok)
