"""Tile helpers shared by the chunk kernels (chunk_linear, chunk_mlstm, chunk_delta,
chunk_rwkv7); `@triton.jit` functions, inlined into each kernel at compile time.

    load_rows(ptr, t, T, row_stride, offs, n) -> (C, BD) float32: rows t of a (T, row_stride)
        strided array, columns offs < n, zero outside (t >= T or offs >= n)
    head_tile(T, H, K, V, BK, BV) -> (pid_v, pid_bh, b, h, offs_k, offs_bv, nv, row_k, row_v,
        kv_offs, kv_mask): the tile of program (value block pid_v, batch * head pid_bh) in the
        chunk kernels' grid. row_k = b T H K + h K: where this head's (T, K) rows start in a
        (B, T, H, K) array (row stride H K); row_v = b T H V + h V + pid_v BV: where this
        value block's (T, BV) rows start in a (B, T, H, V) array; nv = V - pid_v BV; kv_offs,
        kv_mask: the (BK, BV) block of this head's (K, V) state
    load_state(ptr, pid_bh, K, V, kv_offs, kv_mask, PRESENT, BK, BV) -> (BK, BV) float32:
        that block of a (B * H, K, V) state, or zeros when not PRESENT
    unit_lower_inverse(A, offs_c, C) -> (I + A)^{-1} for a strictly lower-triangular (C, C)
        tile, by forward substitution: row i of the inverse is e_i - A_i (I + A)^{-1}, the
        rows above i being final already

Like every kernel module, importing this one imports triton; TRITON_INTERPRET=1 must be set
before (see rnnzoo.ops.triton).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["head_tile", "load_rows", "load_state", "unit_lower_inverse"]


@triton.jit
def load_rows(ptr, t, T, row_stride, offs, n):
    mask = (t[:, None] < T) & (offs[None, :] < n)
    return tl.load(ptr + t[:, None] * row_stride + offs[None, :], mask=mask, other=0.0).to(
        tl.float32)


@triton.jit
def head_tile(T, H, K, V, BK: tl.constexpr, BV: tl.constexpr):
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_k = tl.arange(0, BK)
    offs_bv = tl.arange(0, BV)
    offs_v = pid_v * BV + offs_bv
    row_k = b * T * H * K + h * K
    row_v = b * T * H * V + h * V + pid_v * BV
    nv = V - pid_v * BV
    kv_offs = offs_k[:, None] * V + offs_v[None, :]
    kv_mask = (offs_k[:, None] < K) & (offs_v[None, :] < V)
    return pid_v, pid_bh, b, h, offs_k, offs_bv, nv, row_k, row_v, kv_offs, kv_mask


@triton.jit
def load_state(ptr, pid_bh, K, V, kv_offs, kv_mask, PRESENT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr):
    if PRESENT:
        S = tl.load(ptr + pid_bh * K * V + kv_offs, mask=kv_mask, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BK, BV), dtype=tl.float32)
    return S


@triton.jit
def unit_lower_inverse(A, offs_c, C: tl.constexpr):
    Tinv = tl.zeros((C, C), dtype=tl.float32)
    for i in range(C):
        a_i = tl.sum(tl.where(offs_c[:, None] == i, A, 0.0), 0)
        x_i = tl.where(offs_c == i, 1.0, 0.0) - tl.sum(a_i[:, None] * Tinv, 0)
        Tinv = tl.where(offs_c[:, None] == i, x_i[None, :], Tinv)
    return Tinv
