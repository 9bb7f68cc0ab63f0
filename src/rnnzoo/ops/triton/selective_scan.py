"""Mamba's selective scan, fused in Triton: same contract as `rnnzoo.layers.mamba.selective_scan`.

    a_t = exp(delta_t A)            (2 exp(delta_t A) - 1 with allow_neg_eigval)   (d_inner, d_state)
    h_t = a_t * h_{t-1} + (delta_t u_t) B_t                                         (d_inner, d_state)
    y_t = C_t . h_t + D u_t                                                         (d_inner,)

Forward (`_fwd_kernel`): one program per (batch row, block of BD inner channels) holds
its (BD, d_state) state in registers and walks T in tiles of CT steps: it loads the
tile's u, delta (CT, BD) and B, C (CT, d_state), discretises in registers, solves the
tile by an associative scan over (a, b) pairs (operator (A1, B1).(A2, B2) = (A2 A1,
A2 B1 + B2)), contracts with C and writes y. The (B, T, d_inner, d_state) states never
reach memory; only the state entering each tile is written (when a backward will run),
(B, T / CT, d_inner, d_state), and the final state.

Backward (`_bwd_kernel`), tiles in reverse order, from the checkpoint entering each tile:
h_{t-1} by an exclusive scan of the tile, h_t = a_t h_{t-1} + b_t, then the adjoint

    lambda_t = C_t dy_t + a_{t+1} lambda_{t+1}     (lambda_{T-1} gets dh_{T-1} added)

by a reverse associative scan, and

    grad u_t = delta_t (lambda_t . B_t) + D dy_t
    grad delta_t = sum_s grad(delta A)_ts A_s + u_t (lambda_t . B_t),
        grad(delta A)_t = lambda_t h_{t-1} da/d(delta A)   (da/dx = a, or a + 1 if neg)
    grad A = sum_t grad(delta A)_t delta_t,  grad B_t = sum_d lambda_t delta_t u_t,
    grad C_t = sum_d h_t dy_t,  grad h0 = a_0 lambda_0,  grad D = sum_t dy_t u_t.

grad B, grad C, grad A are summed over channel blocks / batch rows outside the kernel
(per-block partials, then a torch sum: deterministic, no atomics). States and sums
accumulate in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from rnnzoo.ops import first_order
from rnnzoo.ops import triton as _triton
from rnnzoo.ops.triton.scan import _acc, _combine_real, _sum

# Tests set this to (CT, BD) to force tile sizes at tiny shapes.
_CONFIG_OVERRIDE: tuple[int, int] | None = None


@triton.jit
def _transition(dl, A, NEG: tl.constexpr):
    """a = exp(delta A), or 2 exp(delta A) - 1; dl: (CT, BD), A: (BD, DSP) -> (CT, BD, DSP)."""
    a = tl.exp(dl[:, :, None] * A[None, :, :])
    if NEG:
        a = 2.0 * a - 1.0
    return a


@triton.jit
def _pick_row(x, sel):
    return _sum(tl.where(sel[:, None, None], x, 0.0), axis=0)


@triton.jit
def _fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, y_ptr, hT_ptr, ck_ptr,
                T, DI, DS, NT, n_dblk, su_b, su_t, sd_b, sd_t, sB_b, sB_t, sC_b, sC_t,
                NEG: tl.constexpr, HAS_H0: tl.constexpr, SAVE_CK: tl.constexpr,
                F64: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, DSP: tl.constexpr):
    """u, delta: (B, T, DI) strided (su_*, sd_*); B, C: (B, T, DS) strided; A (DI, DS),
    D (DI,), h0, hT (B, DI, DS), y (B, T, DI), ck (B, NT, DI, DS): contiguous."""
    pid = tl.program_id(0)
    bat = pid // n_dblk
    dc = (pid % n_dblk) * BD + tl.arange(0, BD)
    sc = tl.arange(0, DSP)
    dm = dc < DI
    sm = sc < DS
    mds = dm[:, None] & sm[None, :]
    rows = tl.arange(0, CT)
    is_last = rows == CT - 1
    A = _acc(tl.load(A_ptr + dc[:, None] * DS + sc[None, :], mask=mds, other=0.0), F64)
    D = _acc(tl.load(D_ptr + dc, mask=dm, other=0.0), F64)
    st = (bat * DI + dc[:, None]) * DS + sc[None, :]
    h = _acc(tl.full([BD, DSP], 0.0, tl.float32), F64)
    if HAS_H0:
        h = _acc(tl.load(h0_ptr + st, mask=mds, other=0.0), F64)
    for k in range(0, NT):
        t = k * CT + rows
        rm = t < T
        mtd = rm[:, None] & dm[None, :]
        mts = rm[:, None] & sm[None, :]
        u = _acc(tl.load(u_ptr + bat * su_b + t[:, None] * su_t + dc[None, :], mask=mtd,
                         other=0.0), F64)
        dl = _acc(tl.load(dt_ptr + bat * sd_b + t[:, None] * sd_t + dc[None, :], mask=mtd,
                          other=0.0), F64)
        Bt = _acc(tl.load(B_ptr + bat * sB_b + t[:, None] * sB_t + sc[None, :], mask=mts,
                          other=0.0), F64)
        Ct = _acc(tl.load(C_ptr + bat * sC_b + t[:, None] * sC_t + sc[None, :], mask=mts,
                          other=0.0), F64)
        if SAVE_CK:
            tl.store(ck_ptr + ((bat * NT + k) * DI + dc[:, None]) * DS + sc[None, :],
                     h.to(ck_ptr.dtype.element_ty), mask=mds)
        a = _transition(dl, A, NEG)
        b = (dl * u)[:, :, None] * Bt[:, None, :]
        Ac, Bc = tl.associative_scan((a, b), 0, _combine_real)
        hs = Bc + Ac * h[None, :, :]
        y = _sum(hs * Ct[:, None, :], axis=2) + D[None, :] * u
        tl.store(y_ptr + (bat * T + t[:, None]) * DI + dc[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=mtd)
        h = _pick_row(hs, is_last)  # masked rows (delta = 0: a = 1, b = 0) pass it through
    tl.store(hT_ptr + st, h.to(hT_ptr.dtype.element_ty), mask=mds)


@triton.jit
def _bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, ck_ptr, dy_ptr, dhT_ptr,
                gu_ptr, gdt_ptr, gA_ptr, gB_ptr, gC_ptr, gh0_ptr,
                T, DI, DS, NT, n_dblk, su_b, su_t, sd_b, sd_t, sB_b, sB_t, sC_b, sC_t,
                NEG: tl.constexpr, HAS_DHT: tl.constexpr, F64: tl.constexpr,
                CT: tl.constexpr, BD: tl.constexpr, DSP: tl.constexpr):
    """Inputs as `_fwd_kernel`; dy (B, T, DI), dhT (B, DI, DS) contiguous. Writes gu, gdt
    (B, T, DI), gh0 (B, DI, DS), and partials gA (B, DI, DS), gB, gC (B, n_dblk, T, DS)."""
    pid = tl.program_id(0)
    bat = pid // n_dblk
    blk = pid % n_dblk
    dc = blk * BD + tl.arange(0, BD)
    sc = tl.arange(0, DSP)
    dm = dc < DI
    sm = sc < DS
    mds = dm[:, None] & sm[None, :]
    rows = tl.arange(0, CT)
    is_first = rows == 0
    A = _acc(tl.load(A_ptr + dc[:, None] * DS + sc[None, :], mask=mds, other=0.0), F64)
    D = _acc(tl.load(D_ptr + dc, mask=dm, other=0.0), F64)
    st = (bat * DI + dc[:, None]) * DS + sc[None, :]
    lam_c = _acc(tl.full([BD, DSP], 0.0, tl.float32), F64)
    if HAS_DHT:
        lam_c = _acc(tl.load(dhT_ptr + st, mask=mds, other=0.0), F64)
    gA = lam_c * 0.0
    a0 = lam_c * 0.0 + 1.0
    u_base = u_ptr + bat * su_b + dc[None, :]
    d_base = dt_ptr + bat * sd_b + dc[None, :]
    B_base = B_ptr + bat * sB_b + sc[None, :]
    for kk in range(0, NT):
        k = NT - 1 - kk
        t = k * CT + rows
        rm = t < T
        mtd = rm[:, None] & dm[None, :]
        mts = rm[:, None] & sm[None, :]
        u = _acc(tl.load(u_base + t[:, None] * su_t, mask=mtd, other=0.0), F64)
        dl = _acc(tl.load(d_base + t[:, None] * sd_t, mask=mtd, other=0.0), F64)
        Bt = _acc(tl.load(B_base + t[:, None] * sB_t, mask=mts, other=0.0), F64)
        Ct = _acc(tl.load(C_ptr + bat * sC_b + t[:, None] * sC_t + sc[None, :], mask=mts,
                          other=0.0), F64)
        dy = _acc(tl.load(dy_ptr + (bat * T + t[:, None]) * DI + dc[None, :], mask=mtd,
                          other=0.0), F64)
        h_in = _acc(tl.load(ck_ptr + ((bat * NT + k) * DI + dc[:, None]) * DS + sc[None, :],
                            mask=mds, other=0.0), F64)
        # h_{t-1}: the tile's exclusive scan (row r gets step t-1; row 0 the identity)
        pm = rm & (rows > 0)
        pmtd = pm[:, None] & dm[None, :]
        u_p = _acc(tl.load(u_base + (t - 1)[:, None] * su_t, mask=pmtd, other=0.0), F64)
        dl_p = _acc(tl.load(d_base + (t - 1)[:, None] * sd_t, mask=pmtd, other=0.0), F64)
        B_p = _acc(tl.load(B_base + (t - 1)[:, None] * sB_t, mask=pm[:, None] & sm[None, :],
                           other=0.0), F64)
        Ap, Bp = tl.associative_scan(
            (_transition(dl_p, A, NEG), (dl_p * u_p)[:, :, None] * B_p[:, None, :]), 0,
            _combine_real)
        hprev = Bp + Ap * h_in[None, :, :]
        a = _transition(dl, A, NEG)
        du = dl * u
        hs = a * hprev + du[:, :, None] * Bt[:, None, :]
        # lambda_t = g_t + a_{t+1} lambda_{t+1}: reverse scan, a read one step ahead (1 past T)
        nmtd = (t + 1 < T)[:, None] & dm[None, :]
        dl_n = _acc(tl.load(d_base + (t + 1)[:, None] * sd_t, mask=nmtd, other=0.0), F64)
        An, Gn = tl.associative_scan(
            (_transition(dl_n, A, NEG), dy[:, :, None] * Ct[:, None, :]), 0, _combine_real,
            reverse=True)
        lam = Gn + An * lam_c[None, :, :]
        part = ((bat * n_dblk + blk) * T + t[:, None]) * DS + sc[None, :]
        tl.store(gC_ptr + part, _sum(hs * dy[:, :, None], axis=1).to(gC_ptr.dtype.element_ty),
                 mask=mts)
        tl.store(gB_ptr + part, _sum(lam * du[:, :, None], axis=1).to(gB_ptr.dtype.element_ty),
                 mask=mts)
        lam_B = _sum(lam * Bt[:, None, :], axis=2)
        out = (bat * T + t[:, None]) * DI + dc[None, :]
        tl.store(gu_ptr + out, (lam_B * dl + dy * D[None, :]).to(gu_ptr.dtype.element_ty),
                 mask=mtd)
        if NEG:
            gdA = lam * hprev * (a + 1.0)
        else:
            gdA = lam * hprev * a
        gdt = _sum(gdA * A[None, :, :], axis=2) + lam_B * u
        tl.store(gdt_ptr + out, gdt.to(gdt_ptr.dtype.element_ty), mask=mtd)
        gA += _sum(gdA * dl[:, :, None], axis=0)
        lam_c = _pick_row(lam, is_first)
        a0 = _pick_row(a, is_first)
    tl.store(gh0_ptr + st, (lam_c * a0).to(gh0_ptr.dtype.element_ty), mask=mds)
    tl.store(gA_ptr + st, gA.to(gA_ptr.dtype.element_ty), mask=mds)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _config(DI: int, DS: int, cuda: bool) -> tuple[int, int, int, int]:
    """(CT, BD, DSP, num_warps), fixed by size: tiles of 8 steps x BD channels x d_state
    (padded to a power of two), ~2048 elements a tile on the GPU; 4 x 4 on the CPU."""
    DSP = _pow2(DS)
    if _CONFIG_OVERRIDE is not None:
        CT, BD = _CONFIG_OVERRIDE
        return CT, BD, DSP, 1
    if not cuda:
        return 4, min(4, _pow2(DI)), DSP, 1
    CT = 8
    BD = min(_pow2(DI), max(1, 2048 // (CT * DSP)))
    return CT, BD, DSP, 4


def _strides(x):
    return (x.stride(0), x.stride(1))


def _inner(x):
    return x if x.stride(-1) == 1 else x.contiguous()


class _TritonSelectiveScan(first_order.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, neg, plain):
        originals = (u, delta, A, B, C, D, h0)  # for `twice` (references, no copies)
        u, delta, B, C = (_inner(x) for x in (u, delta, B, C))
        A, D = A.contiguous(), D.contiguous()
        Bsz, T, DI = u.shape
        DS = A.shape[1]
        f64 = u.dtype == torch.float64
        acc = torch.float64 if f64 else torch.float32
        CT, BD, DSP, warps = _config(DI, DS, u.is_cuda)
        NT, n_dblk = math.ceil(T / CT), math.ceil(DI / BD)
        save = any(ctx.needs_input_grad[:7])
        y = torch.empty(Bsz, T, DI, dtype=u.dtype, device=u.device)
        hT = torch.empty(Bsz, DI, DS, dtype=h0.dtype if h0 is not None else u.dtype,
                         device=u.device)
        ck = torch.empty(Bsz, NT, DI, DS, dtype=acc, device=u.device) if save else y
        h0c = h0.contiguous() if h0 is not None else y
        _fwd_kernel[(Bsz * n_dblk,)](
            u, delta, A, B, C, D, h0c, y, hT, ck, T, DI, DS, NT, n_dblk,
            *_strides(u), *_strides(delta), *_strides(B), *_strides(C),
            NEG=neg, HAS_H0=h0 is not None, SAVE_CK=save, F64=f64, CT=CT, BD=BD, DSP=DSP,
            num_warps=warps)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, ck, *originals)
        ctx.neg, ctx.has_h0, ctx.plain = neg, h0 is not None, plain
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, hT

    @staticmethod
    def twice(ctx, dy, dhT):  # under create_graph: autograd through the caller's PyTorch form
        plain, neg = ctx.plain, ctx.neg

        def fn(u, delta, A, B, C, D, h0):
            return plain(u, delta, A, B, C, D, h0, allow_neg_eigval=neg)
        return (*_triton.replay("_TritonSelectiveScan", plain, fn, ctx.saved_tensors[7:],
                                (dy, dhT), ctx.needs_input_grad[:7]), None, None)

    @staticmethod
    def backward(ctx, dy, dhT):
        u, delta, A, B, C, D, ck = ctx.saved_tensors[:7]
        Bsz, T, DI = u.shape
        DS = A.shape[1]
        f64 = u.dtype == torch.float64
        acc = torch.float64 if f64 else torch.float32
        CT, BD, DSP, warps = _config(DI, DS, u.is_cuda)
        NT, n_dblk = math.ceil(T / CT), math.ceil(DI / BD)
        dev = u.device
        dy = dy.contiguous()
        gu, gdt = torch.empty_like(u), torch.empty_like(delta)
        gA = torch.empty(Bsz, DI, DS, dtype=acc, device=dev)
        gh0 = torch.empty(Bsz, DI, DS, dtype=acc, device=dev)
        gB = torch.empty(Bsz, n_dblk, T, DS, dtype=acc, device=dev)
        gC = torch.empty(Bsz, n_dblk, T, DS, dtype=acc, device=dev)
        dhT_c = dhT.contiguous() if dhT is not None else dy
        _bwd_kernel[(Bsz * n_dblk,)](
            u, delta, A, B, C, D, ck, dy, dhT_c, gu, gdt, gA, gB, gC, gh0,
            T, DI, DS, NT, n_dblk, *_strides(u), *_strides(delta), *_strides(B), *_strides(C),
            NEG=ctx.neg, HAS_DHT=dhT is not None, F64=f64, CT=CT, BD=BD, DSP=DSP,
            num_warps=warps)
        gD = (dy * u).sum((0, 1)).to(D.dtype) if ctx.needs_input_grad[5] else None
        return (gu, gdt, gA.sum(0).to(A.dtype), gB.sum(1).to(B.dtype), gC.sum(1).to(C.dtype),
                gD, gh0.to(ctx.h0_dtype) if ctx.has_h0 else None, None, None)


def selective_scan(u, delta, A, B, C, D, h0=None, *, allow_neg_eigval=False, chunk_size=16,
                   mode="scan", plain=None):
    """The selective SSM of Mamba on already projected inputs, one fused kernel each way.

    u, delta: (batch, T, d_inner); A: (d_inner, d_state); B, C: (batch, T, d_state);
    D: (d_inner,); h0: (batch, d_inner, d_state) or None (zeros).
    Returns y: (batch, T, d_inner) with y_t = C_t . h_t + D u_t, in u's dtype, and
    h_{T-1}: (batch, d_inner, d_state) in h0's dtype (u's when h0 is None).
    chunk_size and mode are accepted for the signature of the PyTorch op and ignored:
    the kernel's tiles are fixed by size, and every mode computes the same function.
    plain: the op's PyTorch form (same arguments and returns), replayed by the node's `twice`
    under create_graph=True; None: create_graph raises (the package docstring).
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan: u and delta must be (batch, T, d_inner), got "
                         f"{tuple(u.shape)} and {tuple(delta.shape)}")
    Bsz, T, DI = u.shape
    if A.dim() != 2 or A.shape[0] != DI:
        raise ValueError(f"selective_scan: A must be (d_inner={DI}, d_state), got {tuple(A.shape)}")
    DS = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        if tuple(x.shape) != (Bsz, T, DS):
            raise ValueError(f"selective_scan: {name} must be {(Bsz, T, DS)}, got {tuple(x.shape)}")
    if tuple(D.shape) != (DI,):
        raise ValueError(f"selective_scan: D must be ({DI},), got {tuple(D.shape)}")
    if h0 is not None and tuple(h0.shape) != (Bsz, DI, DS):
        raise ValueError(f"selective_scan: h0 must be {(Bsz, DI, DS)}, got {tuple(h0.shape)}")
    dt = u.dtype
    delta, A, B, C, D = (x.to(dt) for x in (delta, A, B, C, D))
    return _TritonSelectiveScan.apply(u, delta, A, B, C, D, h0, bool(allow_neg_eigval), plain)
