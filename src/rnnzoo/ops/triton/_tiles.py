"""Tile helpers shared by the chunk kernels (chunk_linear, chunk_mlstm, chunk_delta,
chunk_rwkv7); `@triton.jit` functions, inlined into each kernel at compile time.

    load_rows(ptr, t, T, row_stride, offs, n) -> (C, BD) float32: rows t of a (T, row_stride)
        strided array, columns offs < n, zero outside (t >= T or offs >= n)
    unit_lower_inverse(A, offs_c, C) -> (I + A)^{-1} for a strictly lower-triangular (C, C)
        tile, by forward substitution: row i of the inverse is e_i - A_i (I + A)^{-1}, the
        rows above i being final already

Like every kernel module, importing this one imports triton; TRITON_INTERPRET=1 must be set
before (see rnnzoo.ops.triton).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["load_rows", "unit_lower_inverse"]


@triton.jit
def load_rows(ptr, t, T, row_stride, offs, n):
    mask = (t[:, None] < T) & (offs[None, :] < n)
    return tl.load(ptr + t[:, None] * row_stride + offs[None, :], mask=mask, other=0.0).to(
        tl.float32)


@triton.jit
def unit_lower_inverse(A, offs_c, C: tl.constexpr):
    Tinv = tl.zeros((C, C), dtype=tl.float32)
    for i in range(C):
        a_i = tl.sum(tl.where(offs_c[:, None] == i, A, 0.0), 0)
        x_i = tl.where(offs_c == i, 1.0, 0.0) - tl.sum(a_i[:, None] * Tinv, 0)
        Tinv = tl.where(offs_c[:, None] == i, x_i[None, :], Tinv)
    return Tinv
