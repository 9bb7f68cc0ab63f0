"""Titans' linear weight-only memory in its chunk form (ops.memory._titans_linear_chunks) in C
(titans_scan.c), forward and backward: the chunk loop and every read of a chunk, one
(batch row, head) pair at a time with its (K, K) memory M and surprise S in cache, instead of
batches of small (C, K) x (K, K) products over all chunks and their stacked states.

    G = k P + R,   o_t = A_t q_t M + f_t q_t S - sum_{s<=t} att_ts G_s,
    M <- A_T M + f_T S - sum_s cl_s k_s G_s^T,   S <- E_T S - sum_s re_s k_s G_s^T

(P: the state's M' for the first chunk, the chunk's starting M after it.) q, k, R
(B, H, N, C, K); att (B, H, N, C, C) (read on and below its diagonal only: its gradient is
zero above); ga (A), gf (f), cl, re (B, H, N, C); gE (E_T) (B, H, N); P0, M0, S0 (B, H, K, K); all one dtype (float32 or
float64) on the CPU (`ops.backend.use_native`). Returns o (B, H, N, C, K) and every chunk's
starting (M, S), Ms and Ss (B, H, N + 1, K, K) (the last the final state), differentiable in
all twelve inputs. Threads split the (batch row, head) pairs.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import flop_count, native


def flops(chunks: int, C: int, K: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of the kernels over `chunks` (pair, chunk)s, 2 a
    multiply-add. Forward: G (C K^2), the reads q M, q S (2 C K^2) and att G (C (C+1) / 2 K),
    the update (2 C K^2). Backward: G again, the update's dG and gM G, gS G (4 C K^2), the
    reads' M do, S do (2 C K^2), datt (C^2 K) and att^T do (C (C+1) / 2 K), the gradients of
    M, S (2 C K^2), dk and dP (2 C K^2), the update's scalars (3 K^2)."""
    CKK, tri = C * K * K, C * (C + 1) // 2 * K
    return 2 * chunks * (5 * CKK + tri), 2 * chunks * (11 * CKK + C * C * K + tri + 3 * K * K)


def load():
    return native.load("titans_scan")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "titans_fwd", dtype, [P] * 15 + [L] * 5),
            native.kernel(lib, "titans_bwd", dtype, [P] * 27 + [L] * 5))


class _NativeTitans(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0):
        ins = [t.contiguous() for t in (q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0)]
        B, H, N, C, K = q.shape
        fwd, _ = _kernels(lib, q.dtype)
        o = torch.empty_like(ins[0])
        Ms, Ss = (q.new_empty(B, H, N + 1, K, K) for _ in range(2))
        native.run(fwd, [(*map(native.ptr, ins), *map(native.ptr, (o, Ms, Ss)), N, C, K, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        ctx.save_for_backward(*ins[:10], Ms, Ss)
        ctx.lib = lib
        flop_count.add(flops(B * H * N, C, K)[0])
        return o, Ms, Ss

    @staticmethod
    def backward(ctx, do, dMs, dSs):
        *ins, Ms, Ss = ctx.saved_tensors
        q, P0 = ins[0], ins[9]
        B, H, N, C, K = q.shape
        _, bwd = _kernels(ctx.lib, q.dtype)
        do = torch.zeros_like(q) if do is None else do.contiguous()
        dMs, dSs = (None if t is None else t.contiguous() for t in (dMs, dSs))
        grads = [torch.empty_like(t) for t in ins[:9]]
        dP0 = torch.zeros_like(P0)
        dM0, dS0 = torch.empty_like(P0), torch.empty_like(P0)
        args = [native.ptr(t) for t in (*ins, Ms, Ss, do, dMs, dSs, *grads, dP0, dM0, dS0)]
        native.run(bwd, [(*args, N, C, K, p0, p1) for p0, p1 in native.rows(B * H)])
        flop_count.add(flops(B * H * N, C, K)[1])
        return None, *grads, dP0, dM0, dS0


def titans_linear(lib, q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0):
    """(o, Ms, Ss) as the module docstring says; `lib` = load()."""
    return _NativeTitans.apply(lib, q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0)
