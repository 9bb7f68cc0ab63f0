"""`linear_scan` in Triton: h_t = a_t * h_{t-1} + b_t along dim 1, forward and backward.

Same signature and results as `rnnzoo.ops.scan.linear_scan` (the reference).

Layout. b (B, T, *S) is seen as (B, T, N) with N = prod(S); complex tensors as two
interleaved real planes (`torch.view_as_real`), so the kernels only see real numbers.
a keeps its broadcast batch and time dims (stride 0, never expanded in memory).

Kernel (`_scan_kernel`). One program owns BN channels of one batch row and a segment
of steps; it walks the segment in tiles of CT steps: a tile of a and b is loaded at
once, solved in registers by an associative scan with the operator

    (A1, B1) . (A2, B2) = (A2 A1, A2 B1 + B2)       (cumulative a, state from zero)

and the carried state enters as h = B + A * carry. Each element of a and b is read
once and h written once: the memory floor of the op. States accumulate in float32
(float64 for float64/complex128 inputs) whatever the storage dtype.

Long T with few channels (too few programs to fill the GPU) is cut into NSEG segments
run in parallel: pass 1 writes each segment's end state from zero and its product of
a; pass 2 scans those (B, NSEG, N) values (the same kernel, one level down); pass 3
reruns each segment from its true incoming state and writes h. That reads a and b
twice (5/3 of the one-pass traffic) but uses the whole GPU.

Backward, with lambda = dLoss/dh accumulated through the recurrence:

    lambda_t = g_t + conj(a_{t+1}) lambda_{t+1}        (a scan the other way, a shifted)
    grad b_t = lambda_t,  grad a_t = lambda_t conj(h_{t-1}),  grad h0 = conj(a_0) lambda_0

(indices mirrored when reverse=True). The same kernel runs it, in the opposite
direction, with the coefficients read one step shifted and conjugated, and grad a
computed in the same pass from the saved h (h_{-1} = h0).

The kernels call only triton.language's core builtins (tl.full, tl.reduce, ...), none of
the @triton.jit functions of triton.language.standard (tl.zeros, tl.sum, tl.cdiv): those
are decorated when triton is imported, so under TRITON_INTERPRET=1 set after that import
(another library imported triton first) the interpreter could not call them. Our own
kernels are decorated at this module's import, which must come after the variable is set.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from rnnzoo.ops import first_order
from rnnzoo.ops import triton as _triton

# Tests set this to (CT, BN, NSEG) to force tile sizes and the segmented path at tiny shapes.
_CONFIG_OVERRIDE: tuple[int, int, int] | None = None


@triton.jit
def _acc(x, F64: tl.constexpr):
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _add(x, y):
    return x + y


@triton.jit
def _sum(x, axis: tl.constexpr):
    """tl.sum by tl.reduce: only core builtins in the kernels (see the module docstring)."""
    return tl.reduce(x, axis, _add)


@triton.jit
def _combine_real(a1, b1, a2, b2):
    return a2 * a1, a2 * b1 + b2


@triton.jit
def _combine_cplx(ar1, ai1, br1, bi1, ar2, ai2, br2, bi2):
    return (ar2 * ar1 - ai2 * ai1, ar2 * ai1 + ai2 * ar1,
            ar2 * br1 - ai2 * bi1 + br2, ar2 * bi1 + ai2 * br1 + bi2)


@triton.jit
def _last_row(x, is_last):
    return _sum(tl.where(is_last[:, None], x, 0.0), axis=0)


@triton.jit
def _scan_kernel(a_ptr, b_ptr, c0_ptr, h_ptr, hs_ptr, fh0_ptr, ga_ptr, endh_ptr, enda_ptr,
                 T, N, SEG, NSEG, n_nblk, sa_b, sa_t, sb_b, sb_t,
                 REVERSE: tl.constexpr, SHIFT: tl.constexpr, CONJ: tl.constexpr,
                 CPLX: tl.constexpr, A_CPLX: tl.constexpr, F64: tl.constexpr,
                 HAS_C0: tl.constexpr, STORE_H: tl.constexpr, STORE_END: tl.constexpr,
                 GRAD_A: tl.constexpr, HAS_FH0: tl.constexpr,
                 CT: tl.constexpr, BN: tl.constexpr):
    """One segment of x_t = c_t x_{t-1} + b_t for BN channels of one batch row.

    Processing step i runs over [0, T); its time index is t = i (T-1-i if REVERSE).
    The coefficient c at step i is a[t], or with SHIFT a[t of step i-1] (1 past the ends),
    conjugated if CONJ. Storage (all in real units, channel c at c*W (+1 imaginary), with
    W = 2 if CPLX else 1, WA likewise for a): a, b strided by (sa_b, sa_t), (sb_b, sb_t);
    h, hs (saved forward states) and ga contiguous (B, T, N*W) / (B, T, N*WA);
    c0 (carry into each segment), endh: (B, NSEG, N*W); enda: (B, NSEG, N*WA).
    GRAD_A: ga[t] = x_t conj(hs[t of step i+1]) (fh0, or 0, after the last step).
    STORE_END: the segment's end state from zero and its product of c, instead of h.
    """
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    bat = pid // n_nblk
    cols = (pid % n_nblk) * BN + tl.arange(0, BN)
    cmask = cols < N
    W = 1
    if CPLX:
        W = 2
    WA = 1
    if A_CPLX:
        WA = 2
    rows = tl.arange(0, CT)
    is_last = rows == CT - 1

    a_base = a_ptr + bat * sa_b + cols[None, :] * WA
    b_base = b_ptr + bat * sb_b + cols[None, :] * W
    h_off = bat * T * N * W + cols[None, :] * W
    ga_off = bat * T * N * WA + cols[None, :] * WA

    cr = tl.full([BN], 0.0, tl.float32)
    ci = tl.full([BN], 0.0, tl.float32)
    cr = _acc(cr, F64)
    ci = _acc(ci, F64)
    if HAS_C0:
        c0 = c0_ptr + (bat * NSEG + seg) * N * W + cols * W
        cr = _acc(tl.load(c0, mask=cmask, other=0.0), F64)
        if CPLX:
            ci = _acc(tl.load(c0 + 1, mask=cmask, other=0.0), F64)
    pr = cr * 0.0 + 1.0  # running product of the coefficients (STORE_END)
    pi = cr * 0.0

    i0 = seg * SEG
    i1 = tl.minimum(i0 + SEG, T)
    for k in range(0, (i1 - i0 + CT - 1) // CT):
        ii = i0 + k * CT + rows
        rmask = ii < i1
        if REVERSE:
            t = T - 1 - ii
        else:
            t = ii
        if SHIFT:  # the coefficient of the step before in processing order
            if REVERSE:
                ta = t + 1
            else:
                ta = t - 1
            amask = rmask & (ta >= 0) & (ta < T)
        else:
            ta = t
            amask = rmask
        m2 = amask[:, None] & cmask[None, :]
        bm2 = rmask[:, None] & cmask[None, :]
        ar = _acc(tl.load(a_base + ta[:, None] * sa_t, mask=m2, other=1.0), F64)
        br = _acc(tl.load(b_base + t[:, None] * sb_t, mask=bm2, other=0.0), F64)
        if CPLX:
            bi = _acc(tl.load(b_base + t[:, None] * sb_t + 1, mask=bm2, other=0.0), F64)
            if A_CPLX:
                ai = _acc(tl.load(a_base + ta[:, None] * sa_t + 1, mask=m2, other=0.0), F64)
                if CONJ:
                    ai = -ai
            else:
                ai = ar * 0.0
            Ar, Ai, Br, Bi = tl.associative_scan((ar, ai, br, bi), 0, _combine_cplx)
            hr = Br + Ar * cr[None, :] - Ai * ci[None, :]
            hi = Bi + Ar * ci[None, :] + Ai * cr[None, :]
        else:
            Ar, Br = tl.associative_scan((ar, br), 0, _combine_real)
            hr = Br + Ar * cr[None, :]
        if STORE_H:
            hp = h_ptr + h_off + t[:, None] * N * W
            tl.store(hp, hr.to(h_ptr.dtype.element_ty), mask=bm2)
            if CPLX:
                tl.store(hp + 1, hi.to(h_ptr.dtype.element_ty), mask=bm2)
        if GRAD_A:  # grad a_t = x_t conj(h_prev(t)), h_prev(t) = hs at the next step's t
            if REVERSE:
                tp = t - 1
            else:
                tp = t + 1
            pin = (tp >= 0) & (tp < T)
            pm2 = (rmask & pin)[:, None] & cmask[None, :]
            sp = hs_ptr + h_off + tp[:, None] * N * W
            qr = _acc(tl.load(sp, mask=pm2, other=0.0), F64)
            if HAS_FH0:
                f0r = _acc(tl.load(fh0_ptr + bat * N * W + cols * W, mask=cmask, other=0.0), F64)
                qr = tl.where(pin[:, None], qr, f0r[None, :])
            if CPLX:
                qi = _acc(tl.load(sp + 1, mask=pm2, other=0.0), F64)
                if HAS_FH0:
                    f0i = _acc(tl.load(fh0_ptr + bat * N * W + cols * W + 1, mask=cmask,
                                       other=0.0), F64)
                    qi = tl.where(pin[:, None], qi, f0i[None, :])
                gr = hr * qr + hi * qi  # x conj(q)
                gp = ga_ptr + ga_off + t[:, None] * N * WA
                tl.store(gp, gr.to(ga_ptr.dtype.element_ty), mask=bm2)
                if A_CPLX:
                    gi = hi * qr - hr * qi
                    tl.store(gp + 1, gi.to(ga_ptr.dtype.element_ty), mask=bm2)
            else:
                gp = ga_ptr + ga_off + t[:, None] * N * WA
                tl.store(gp, (hr * qr).to(ga_ptr.dtype.element_ty), mask=bm2)
        # masked rows pass the state through (c = 1, b = 0): the last row is the carry
        if STORE_END:
            lar = _last_row(Ar, is_last)
            if CPLX:
                lai = _last_row(Ai, is_last)
                pr, pi = lar * pr - lai * pi, lar * pi + lai * pr
            else:
                pr = lar * pr
        if CPLX:
            cr, ci = _last_row(hr, is_last), _last_row(hi, is_last)
        else:
            cr = _last_row(hr, is_last)
    if STORE_END:
        e = (bat * NSEG + seg) * N
        tl.store(endh_ptr + e * W + cols * W, cr.to(endh_ptr.dtype.element_ty), mask=cmask)
        tl.store(enda_ptr + e * WA + cols * WA, pr.to(enda_ptr.dtype.element_ty), mask=cmask)
        if CPLX:
            tl.store(endh_ptr + e * W + cols * W + 1, ci.to(endh_ptr.dtype.element_ty),
                     mask=cmask)
            if A_CPLX:
                tl.store(enda_ptr + e * WA + cols * WA + 1, pi.to(enda_ptr.dtype.element_ty),
                         mask=cmask)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _config(B: int, T: int, N: int, cuda: bool) -> tuple[int, int, int, int]:
    """(CT, BN, NSEG, num_warps), fixed by size: no autotuning.

    On the GPU: tiles of 32 steps x 32 channels (16 when that leaves too few programs);
    when B * N / BN programs still cannot fill the GPU (< 264, two per SM of an H100/H200),
    T is cut into segments of at least 4 tiles to reach ~528 programs. On the CPU
    (the interpreter, whose scans cost per element) tiles of 4 x 8, one segment.
    """
    if _CONFIG_OVERRIDE is not None:
        CT, BN, NSEG = _CONFIG_OVERRIDE
        return CT, BN, max(1, min(NSEG, T)), 1
    if not cuda:
        return 4, min(8, _pow2(N)), 1, 1
    CT = min(32, _pow2(T))
    BN = min(32, _pow2(N))
    if B * math.ceil(N / BN) < 264 and BN > 16:
        BN = 16
    progs = B * math.ceil(N / BN)
    NSEG = 1
    if progs < 264:
        NSEG = max(1, min(math.ceil(528 / progs), T // (4 * CT)))
    return CT, BN, NSEG, max(1, min(4, CT * BN // 256))


def _launch(a3, b3, c0, T, reverse, shift, conj, cplx, a_cplx, f64, hs=None, fh0=None,
            ga=None, out_dtype=None):
    """x = the scan of (coefficients from a3, inputs b3) in processing order, see `_scan_kernel`.

    a3: (Ba, Ta, N*WA) with Ba in {1, B}, Ta in {1, T}; b3: (B, T, N*W), unit inner stride.
    c0: (B, N*W) contiguous or None. Returns x (B, T, N*W) contiguous, in out_dtype.
    """
    B = b3.shape[0]
    W = 2 if cplx else 1
    N = b3.shape[2] // W
    CT, BN, NSEG, warps = _config(B, T, N, b3.is_cuda)
    SEG = CT * math.ceil(math.ceil(T / NSEG) / CT)
    NSEG = math.ceil(T / SEG)
    n_nblk = math.ceil(N / BN)
    x = torch.empty(b3.shape, dtype=out_dtype or b3.dtype, device=b3.device)
    sa_b = a3.stride(0) if a3.shape[0] > 1 else 0
    sa_t = a3.stride(1) if a3.shape[1] > 1 else 0
    dummy = x
    flags = dict(REVERSE=reverse, SHIFT=shift, CONJ=conj, CPLX=cplx, A_CPLX=a_cplx, F64=f64,
                 CT=CT, BN=BN, num_warps=warps)
    if NSEG > 1:
        acc = torch.float64 if f64 else torch.float32
        endh = torch.empty(B, NSEG, N * W, dtype=acc, device=b3.device)
        enda = torch.empty(B, NSEG, N * (2 if a_cplx else 1), dtype=acc, device=b3.device)
        _scan_kernel[(B * n_nblk, NSEG)](
            a3, b3, dummy, dummy, dummy, dummy, dummy, endh, enda, T, N, SEG, NSEG, n_nblk,
            sa_b, sa_t, b3.stride(0), b3.stride(1), HAS_C0=False, STORE_H=False,
            STORE_END=True, GRAD_A=False, HAS_FH0=False, **flags)
        # states after each segment: the same scan over segments, in processing order
        ends = _launch(enda, endh, c0, NSEG, False, False, False, cplx, a_cplx, f64)
        first = c0.reshape(B, 1, N * W).to(acc) if c0 is not None else ends.new_zeros(B, 1, N * W)
        cin = torch.cat([first, ends[:, :-1]], 1).contiguous()
    else:
        cin = c0
    _scan_kernel[(B * n_nblk, NSEG)](
        a3, b3, dummy if cin is None else cin, x, dummy if hs is None else hs,
        dummy if fh0 is None else fh0, dummy if ga is None else ga, dummy, dummy,
        T, N, SEG, NSEG, n_nblk, sa_b, sa_t, b3.stride(0), b3.stride(1),
        HAS_C0=cin is not None, STORE_H=True, STORE_END=False, GRAD_A=ga is not None,
        HAS_FH0=fh0 is not None, **flags)
    return x


def _planes(x: torch.Tensor, *shape) -> torch.Tensor:
    """x as real numbers (B, T, N * W) with unit inner stride (complex: interleaved planes)."""
    if x.is_complex():
        x = torch.view_as_real(x)
    x = x.reshape(*shape, -1)
    return x if x.stride(-1) == 1 else x.contiguous()


def _unplanes(x: torch.Tensor, shape, cplx: bool) -> torch.Tensor:
    if cplx:
        return torch.view_as_complex(x.reshape(*shape, 2))
    return x.reshape(shape)


class _TritonLinearScan(first_order.Function):
    @staticmethod
    def forward(ctx, a, b, h0, reverse, plain):
        B, T = b.shape[:2]
        S, a0 = tuple(b.shape[2:]), a
        cplx, a_cplx = b.is_complex(), a.is_complex()
        if tuple(a.shape[2:]) != S:  # broadcast in the trailing dims only: made real
            a = a.expand(*a.shape[:2], *S).contiguous()
        a3 = _planes(a, *a.shape[:2])
        b3 = _planes(b, B, T)
        f64 = b3.dtype == torch.float64
        c0 = None if h0 is None else _planes(h0, B, 1).reshape(B, -1).contiguous()
        x = _launch(a3, b3, c0, T, reverse, False, False, cplx, a_cplx, f64)
        ctx.reverse, ctx.cplx, ctx.a_cplx, ctx.f64 = reverse, cplx, a_cplx, f64
        ctx.a_shape, ctx.plain = a.shape, plain
        ctx.save_for_backward(a3, x, c0, h0, a0, b)  # a0, b (references) for `twice`
        return _unplanes(x, b.shape, cplx)

    @staticmethod
    def twice(ctx, g):  # under create_graph: autograd through the caller's PyTorch form
        plain, reverse = ctx.plain, ctx.reverse
        _, _, _, h0, a, b = ctx.saved_tensors

        def fn(a, b, h0):
            return plain(a, b, h0, reverse=reverse)[0]
        return (*_triton.replay("_TritonLinearScan", plain, fn, (a, b, h0), (g,),
                                ctx.needs_input_grad[:3]), None, None)

    @staticmethod
    def backward(ctx, g):
        a3, x, c0, h0 = ctx.saved_tensors[:4]
        reverse, cplx, a_cplx = ctx.reverse, ctx.cplx, ctx.a_cplx
        B, T = x.shape[:2]
        shape = (B, T, *ctx.a_shape[2:])
        g3 = _planes(g.to(torch.complex128 if ctx.f64 else torch.complex64) if cplx
                     else g.to(x.dtype), B, T)
        ga = None
        if ctx.needs_input_grad[0]:
            ga = torch.empty(B, T, x.shape[2] // (2 if cplx else 1) * (2 if a_cplx else 1),
                             dtype=x.dtype, device=x.device)
        lam3 = _launch(a3, g3, None, T, not reverse, True, True, cplx, a_cplx, ctx.f64, hs=x,
                       fh0=c0, ga=ga, out_dtype=x.dtype)
        lam = _unplanes(lam3, shape, cplx)
        grad_a = grad_h0 = None
        if ga is not None:
            grad_a = _unplanes(ga, shape, a_cplx).sum_to_size(ctx.a_shape)
        if h0 is not None and ctx.needs_input_grad[2]:
            first = T - 1 if reverse else 0
            a_first = _unplanes(a3[:, min(first, a3.shape[1] - 1)],
                                (a3.shape[0], *ctx.a_shape[2:]), a_cplx)
            grad_h0 = (lam[:, first] * (a_first.conj() if a_cplx else a_first)).sum_to_size(h0.shape)
        return grad_a, lam if ctx.needs_input_grad[1] else None, grad_h0, None, None


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *,
                reverse: bool = False, plain=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve h_t = a_t * h_{t-1} + b_t for all t at once (h_t = a_t * h_{t+1} + b_t if reverse).

    a: (B, T, *S) or broadcastable to b's shape (any dim of size 1, time included).
    b: (B, T, *S), real or complex.
    h0: (B, *S) or None (zeros): the state before step 0 (after step T-1 if reverse).
    Returns (h, h_last): h is (B, T, *S) in the promoted dtype of a and b; h_last is
    h[:, -1] (h[:, 0] if reverse). States accumulate in float32 (float64 for float64 and
    complex128). Same contract as `rnnzoo.ops.scan.linear_scan`, differentiable in a, b, h0.
    plain: the op's PyTorch form (same arguments and returns), replayed by the node's `twice`
    under create_graph=True; None: create_graph raises (the package docstring).
    """
    a, b, h0 = _check(a, b, h0)
    out = torch.promote_types(a.dtype, b.dtype)
    b = b.to(out)
    if h0 is not None:
        h0 = h0.to(out)
    h = _TritonLinearScan.apply(a, b, h0, reverse, plain)
    return h, (h[:, 0] if reverse else h[:, -1])


def _check(a, b, h0):
    """The argument checks of the reference op (same errors, same messages)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"linear_scan: {name} must be a tensor, got {type(t).__name__}")
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"linear_scan: {name} must be real or complex floating point, "
                            f"got {t.dtype}")
    if b.dim() < 2:
        raise ValueError(f"linear_scan: b must be (batch, time, ...), got shape {tuple(b.shape)}")
    if a.dim() != b.dim() or any(sa not in (1, sb) for sa, sb in zip(a.shape, b.shape)):
        raise ValueError(f"linear_scan: a must have b's number of dims and each dim 1 or b's "
                         f"size; got a {tuple(a.shape)} for b {tuple(b.shape)}")
    if a.is_complex() and not b.is_complex():
        b = b.to(a.dtype)
    if a.dtype != b.dtype and a.is_complex() == b.is_complex():
        raise TypeError(f"linear_scan: a and b must share a dtype, got {a.dtype} and {b.dtype}")
    if h0 is not None:
        if not isinstance(h0, torch.Tensor):
            raise TypeError(f"linear_scan: h0 must be a tensor or None, got {type(h0).__name__}")
        want = (b.shape[0],) + tuple(b.shape[2:])
        if tuple(h0.shape) != want:
            raise ValueError(f"linear_scan: h0 must have shape {want}, got {tuple(h0.shape)}")
    return a, b, h0
