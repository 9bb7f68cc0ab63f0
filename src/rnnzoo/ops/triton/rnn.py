"""Fused whole-sequence Triton kernels for the gated classic cells: LSTM, GRU, sLSTM.

    lstm_sequence(xp, w_hh, h0, c0)               -> h_all, (h_T, c_T)
    gru_sequence(xp, w_hh, b_hn, h0)              -> h_all, h_T
    slstm_sequence(xp, r, h0, c0, n0, m0)         -> h_all, (h_T, c_T, n_T, m_T)

The input projection of every step (`cell.project(x)`: one matrix product outside) comes
in as xp (B, T, G*H); the kernels run the recurrence proper, all T steps in ONE launch
(FlashRNN's idea, Poeppel et al. 2024, arXiv:2412.07752: the per-step launches of a Python
loop are what makes classic cells slow on the GPU). Each is a torch.autograd.Function with
gradients for xp, the recurrent weights, the GRU's b_hn and every initial state.

Maths (gates in the order of the weights' rows; sigma the logistic function):

  LSTM (torch.nn.LSTM): i, f, g, o = xp_t + W_hh h_{t-1}
        c_t = sigma(f) c_{t-1} + sigma(i) tanh(g),   h_t = sigma(o) tanh(c_t)
  GRU  (torch.nn.GRU, cuDNN's reset placement; xp holds b_ih, and b_hh for r and z):
        r = sigma(xp_r + W_hr h),  z = sigma(xp_z + W_hz h)
        n = tanh(xp_n + r * (W_hn h + b_hn)),   h_t = (1 - z) n + z h_{t-1}
  sLSTM (xLSTM, rnnzoo.cells.slstm): i~, f~, z~, o~ = xp_t + R h_{t-1}
        m_t = max(log sigma(f~) + m_{t-1}, i~)
        i' = exp(i~ - m_t),  f' = exp(log sigma(f~) + m_{t-1} - m_t)
        c_t = f' c_{t-1} + i' tanh(z~),  n_t = f' n_{t-1} + i',  h_t = sigma(o~) c_t / n_t

Kernel design (one kernel pair for the three cells, the cell a constexpr). One program
owns BB = 16 batch rows (tl.dot needs >= 16 in every dim; rows past B are masked) and all
H hidden units. Per step it walks the hidden units in blocks of BH; for each block it
accumulates the G gate pre-activations h_{t-1} @ W_k^T over blocks of BK inputs (tl.dot,
float32 in, IEEE float32 accumulation), adds xp_t, applies the cell and writes h_t and the
other states into buffers of T + 1 slots (slot 0 = the initial state), so the next step
reads h_{t-1} from memory written by the same program: a `tl.debug_barrier()` (a CTA
barrier) separates the steps. H, hidden sizes that are not multiples of the blocks, and
H < 16 are handled by masks (padded units read 0 and are never stored). The weights are
read from memory (L2 on a GPU) every step.

Forward saves, for the backward, the states at every step and the gate pre-activations
(B, T, 4H) (the GRU saves r~, z~, xp_n and W_hn h + b_hn). Backward is one launch too,
a reverse loop over T with two phases a step: (A) per hidden block, the local derivatives
from dh_t = dy_t + (dh from step t+1) and the carried dc (dn, dm): the gradient of the
recurrent pre-activations dG_t (B, G*H) is written out; (B) dh_{t-1} = dG_t @ W_hh (plus
the GRU's direct z * dh_t term), by tl.dot over blocks. The weight gradient is one matrix
product outside, dW_hh = sum_t dG_t^T h_{t-1}, as torch's fused RNNs do.

No autotuning: BB = 16, BH = BK = 32 (16 for H <= 16), 4 warps, on the GPU (64 compiled
to 140-160 KB of shared memory and 0.4 MB of code a kernel for sm_80; unmeasured on a
GPU); 16 under the interpreter. `DOT_PRECISION` = "ieee" by default (float32 FMAs, no
tensor cores), "tf32" to allow them. Everything is computed in float32 whatever the input
dtype (float16 / bfloat16 / float32; float64 is refused: use the PyTorch path). Only
triton.language core builtins are called (tl.full, tl.dot, tl.exp, ...; none of the
@triton.jit helpers of triton.language.standard such as tl.sigmoid or tl.zeros), so the
kernels run under TRITON_INTERPRET=1 even when triton was imported before the flag (see
ops.triton.scan), and with triton 3.6.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from rnnzoo.ops import first_order
from rnnzoo.ops import triton as _triton

LSTM, GRU, SLSTM = 0, 1, 2
BB = 16  # batch rows per program

# tl.dot's input_precision for h @ W: "ieee" (float32, as the PyTorch reference) or "tf32"
# (tensor cores; what cuDNN's LSTM uses when torch.backends.cudnn.allow_tf32 is on).
DOT_PRECISION = "ieee"

# Tests set this to (BH, BK) to force several hidden blocks at tiny H.
_CONFIG_OVERRIDE: tuple[int, int] | None = None


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _fwd_kernel(xp_ptr, w_ptr, bhn_ptr, sh_ptr, sc_ptr, sn_ptr, sm_ptr, pre_ptr, B, T, H,
                CELL: tl.constexpr, G: tl.constexpr, HAS_BHN: tl.constexpr, PREC: tl.constexpr,
                BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """All T steps for BB batch rows. xp (B, T, G*H); w (G*H, H); states sh, sc, sn, sm
    (B, T+1, H) with slot 0 filled; pre (B, T, 4H) written for the backward."""
    pid = tl.program_id(0)
    rows = (pid * BB + tl.arange(0, BB)).to(tl.int64)  # int64 offsets: B*T*4H may pass 2^31
    rmask = rows < B
    GH = G * H
    nh = (H + BH - 1) // BH
    nk = (H + BK - 1) // BK
    for t in range(0, T):
        for jb in range(0, nh):
            cols = jb * BH + tl.arange(0, BH)
            cmask = cols < H
            m2 = rmask[:, None] & cmask[None, :]
            a0 = tl.full([BB, BH], 0.0, tl.float32)
            a1 = tl.full([BB, BH], 0.0, tl.float32)
            a2 = tl.full([BB, BH], 0.0, tl.float32)
            a3 = tl.full([BB, BH], 0.0, tl.float32)
            for kb in range(0, nk):
                kc = kb * BK + tl.arange(0, BK)
                kmask = kc < H
                hp = tl.load(sh_ptr + (rows[:, None] * (T + 1) + t) * H + kc[None, :],
                             mask=rmask[:, None] & kmask[None, :], other=0.0)
                wm = kmask[:, None] & cmask[None, :]
                wp = w_ptr + cols[None, :] * H + kc[:, None]  # W_k^T tile (BK, BH)
                a0 += tl.dot(hp, tl.load(wp, mask=wm, other=0.0), input_precision=PREC)
                a1 += tl.dot(hp, tl.load(wp + H * H, mask=wm, other=0.0), input_precision=PREC)
                a2 += tl.dot(hp, tl.load(wp + 2 * H * H, mask=wm, other=0.0),
                             input_precision=PREC)
                if G == 4:
                    a3 += tl.dot(hp, tl.load(wp + 3 * H * H, mask=wm, other=0.0),
                                 input_precision=PREC)
            xo = xp_ptr + (rows[:, None] * T + t) * GH + cols[None, :]
            po = pre_ptr + (rows[:, None] * T + t) * (4 * H) + cols[None, :]
            cur = (rows[:, None] * (T + 1) + t + 1) * H + cols[None, :]
            prv = cur - H
            if CELL == 1:  # GRU
                pr = a0 + tl.load(xo, mask=m2, other=0.0)
                pz = a1 + tl.load(xo + H, mask=m2, other=0.0)
                xn = tl.load(xo + 2 * H, mask=m2, other=0.0)
                hn = a2
                if HAS_BHN:
                    hn += tl.load(bhn_ptr + cols, mask=cmask, other=0.0)[None, :]
                n = _tanh(xn + _sigmoid(pr) * hn)
                hprev = tl.load(sh_ptr + prv, mask=m2, other=0.0)
                h = n + _sigmoid(pz) * (hprev - n)
                tl.store(po, pr, mask=m2)
                tl.store(po + H, pz, mask=m2)
                tl.store(po + 2 * H, xn, mask=m2)
                tl.store(po + 3 * H, hn, mask=m2)
            else:
                pi = a0 + tl.load(xo, mask=m2, other=0.0)
                pf = a1 + tl.load(xo + H, mask=m2, other=0.0)
                pg = a2 + tl.load(xo + 2 * H, mask=m2, other=0.0)
                pq = a3 + tl.load(xo + 3 * H, mask=m2, other=0.0)
                tl.store(po, pi, mask=m2)
                tl.store(po + H, pf, mask=m2)
                tl.store(po + 2 * H, pg, mask=m2)
                tl.store(po + 3 * H, pq, mask=m2)
                cprev = tl.load(sc_ptr + prv, mask=m2, other=0.0)
                if CELL == 0:  # LSTM
                    c = _sigmoid(pf) * cprev + _sigmoid(pi) * _tanh(pg)
                    h = _sigmoid(pq) * _tanh(c)
                else:  # sLSTM
                    nprev = tl.load(sn_ptr + prv, mask=m2, other=1.0)
                    mprev = tl.load(sm_ptr + prv, mask=m2, other=0.0)
                    lf = _logsigmoid(pf) + mprev
                    m = tl.maximum(lf, pi)
                    ie = tl.exp(pi - m)
                    fe = tl.exp(lf - m)
                    c = fe * cprev + ie * _tanh(pg)
                    n = fe * nprev + ie
                    h = _sigmoid(pq) * c / n
                    tl.store(sn_ptr + cur, n, mask=m2)
                    tl.store(sm_ptr + cur, m, mask=m2)
                tl.store(sc_ptr + cur, c, mask=m2)
            tl.store(sh_ptr + cur, h, mask=m2)
        tl.debug_barrier()  # h_t complete before step t + 1 reads it


@triton.jit
def _bwd_kernel(w_ptr, pre_ptr, sh_ptr, sc_ptr, sn_ptr, sm_ptr, gy_ptr, dh_ptr, dc_ptr, dn_ptr,
                dm_ptr, ddir_ptr, dg_ptr, dxn_ptr, B, T, H,
                CELL: tl.constexpr, G: tl.constexpr, PREC: tl.constexpr,
                BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Reverse loop. gy (B, T, H): dLoss/dh_all. dh (B, H), dc, dn, dm (2, B, H): in (dc, dn,
    dm: half 0), the gradients of the final states; out (half T % 2), those of the initial
    states. ddir (B, H) scratch. Out: dg
    (B, T, G*H), the gradient of the recurrent pre-activations; dxn (B, T, H) (GRU: of xp_n)."""
    pid = tl.program_id(0)
    rows = (pid * BB + tl.arange(0, BB)).to(tl.int64)  # int64 offsets: B*T*4H may pass 2^31
    rmask = rows < B
    GH = G * H
    nh = (H + BH - 1) // BH
    nk = (H + BK - 1) // BK
    for s in range(0, T):
        t = T - 1 - s
        # the carried dc, dn, dm are double-buffered: read one half, write the other, so
        # no thread overwrites a value another thread (a replicated layout) has yet to read
        rd = (s % 2) * B * H
        wr = ((s + 1) % 2) * B * H
        # phase A: local derivatives, hidden block by hidden block
        for jb in range(0, nh):
            cols = jb * BH + tl.arange(0, BH)
            cmask = cols < H
            m2 = rmask[:, None] & cmask[None, :]
            st = rows[:, None] * H + cols[None, :]
            cur = (rows[:, None] * (T + 1) + t + 1) * H + cols[None, :]
            prv = cur - H
            po = pre_ptr + (rows[:, None] * T + t) * (4 * H) + cols[None, :]
            go = dg_ptr + (rows[:, None] * T + t) * GH + cols[None, :]
            dh = tl.load(gy_ptr + (rows[:, None] * T + t) * H + cols[None, :], mask=m2,
                         other=0.0) + tl.load(dh_ptr + st, mask=m2, other=0.0)
            p0 = tl.load(po, mask=m2, other=0.0)
            p1 = tl.load(po + H, mask=m2, other=0.0)
            p2 = tl.load(po + 2 * H, mask=m2, other=0.0)
            p3 = tl.load(po + 3 * H, mask=m2, other=0.0)
            if CELL == 1:  # GRU: p0..p3 = r~, z~, xp_n, hn
                r = _sigmoid(p0)
                z = _sigmoid(p1)
                n = _tanh(p2 + r * p3)
                hprev = tl.load(sh_ptr + prv, mask=m2, other=0.0)
                dnp = dh * (1.0 - z) * (1.0 - n * n)
                tl.store(go, dnp * p3 * r * (1.0 - r), mask=m2)
                tl.store(go + H, dh * (hprev - n) * z * (1.0 - z), mask=m2)
                tl.store(go + 2 * H, dnp * r, mask=m2)
                tl.store(dxn_ptr + (rows[:, None] * T + t) * H + cols[None, :], dnp, mask=m2)
                tl.store(ddir_ptr + st, dh * z, mask=m2)
            else:
                c = tl.load(sc_ptr + cur, mask=m2, other=0.0)
                cprev = tl.load(sc_ptr + prv, mask=m2, other=0.0)
                dc = tl.load(dc_ptr + rd + st, mask=m2, other=0.0)
                if CELL == 0:  # LSTM: p0..p3 = i~, f~, g~, o~
                    i = _sigmoid(p0)
                    f = _sigmoid(p1)
                    g = _tanh(p2)
                    o = _sigmoid(p3)
                    tc = _tanh(c)
                    dc += dh * o * (1.0 - tc * tc)
                    tl.store(go, dc * g * i * (1.0 - i), mask=m2)
                    tl.store(go + H, dc * cprev * f * (1.0 - f), mask=m2)
                    tl.store(go + 2 * H, dc * i * (1.0 - g * g), mask=m2)
                    tl.store(go + 3 * H, dh * tc * o * (1.0 - o), mask=m2)
                    tl.store(dc_ptr + wr + st, dc * f, mask=m2)
                else:  # sLSTM: p0..p3 = i~, f~, z~, o~
                    n = tl.load(sn_ptr + cur, mask=m2, other=1.0)
                    nprev = tl.load(sn_ptr + prv, mask=m2, other=1.0)
                    mprev = tl.load(sm_ptr + prv, mask=m2, other=0.0)
                    dn = tl.load(dn_ptr + rd + st, mask=m2, other=0.0)
                    dm = tl.load(dm_ptr + rd + st, mask=m2, other=0.0)
                    lf = _logsigmoid(p1) + mprev
                    m = tl.maximum(lf, p0)
                    ie = tl.exp(p0 - m)
                    fe = tl.exp(lf - m)
                    zt = _tanh(p2)
                    og = _sigmoid(p3)
                    dc += dh * og / n
                    dn -= dh * og * c / (n * n)
                    dfe = (dc * cprev + dn * nprev) * fe
                    die = (dc * zt + dn) * ie
                    dm -= dfe + die  # m_t enters i' and f' with a minus sign
                    # torch.maximum(lf, i~): the gradient goes to the larger, halved on a tie
                    tie = lf == p0
                    dlf = tl.where(tie, 0.5 * dm, tl.where(lf > p0, dm, 0.0)) + dfe
                    di = tl.where(tie, 0.5 * dm, tl.where(lf < p0, dm, 0.0)) + die
                    tl.store(go, di, mask=m2)
                    tl.store(go + H, dlf * (1.0 - _sigmoid(p1)), mask=m2)
                    tl.store(go + 2 * H, dc * ie * (1.0 - zt * zt), mask=m2)
                    tl.store(go + 3 * H, dh * c / n * og * (1.0 - og), mask=m2)
                    tl.store(dc_ptr + wr + st, dc * fe, mask=m2)
                    tl.store(dn_ptr + wr + st, dn * fe, mask=m2)
                    tl.store(dm_ptr + wr + st, dlf, mask=m2)
        tl.debug_barrier()  # dG_t complete before phase B reads it
        # phase B: dh_{t-1} = dG_t @ W_hh (+ z * dh_t for the GRU)
        for jb in range(0, nh):
            cols = jb * BH + tl.arange(0, BH)
            cmask = cols < H
            m2 = rmask[:, None] & cmask[None, :]
            st = rows[:, None] * H + cols[None, :]
            acc = tl.full([BB, BH], 0.0, tl.float32)
            if CELL == 1:
                acc += tl.load(ddir_ptr + st, mask=m2, other=0.0)
            for kb in range(0, nk):
                kc = kb * BK + tl.arange(0, BK)
                kmask = kc < H
                am = rmask[:, None] & kmask[None, :]
                wm = kmask[:, None] & cmask[None, :]
                gp = dg_ptr + (rows[:, None] * T + t) * GH + kc[None, :]
                wp = w_ptr + kc[:, None] * H + cols[None, :]  # W_k tile (BK, BH)
                acc += tl.dot(tl.load(gp, mask=am, other=0.0), tl.load(wp, mask=wm, other=0.0),
                              input_precision=PREC)
                acc += tl.dot(tl.load(gp + H, mask=am, other=0.0),
                              tl.load(wp + H * H, mask=wm, other=0.0), input_precision=PREC)
                acc += tl.dot(tl.load(gp + 2 * H, mask=am, other=0.0),
                              tl.load(wp + 2 * H * H, mask=wm, other=0.0), input_precision=PREC)
                if G == 4:
                    acc += tl.dot(tl.load(gp + 3 * H, mask=am, other=0.0),
                                  tl.load(wp + 3 * H * H, mask=wm, other=0.0),
                                  input_precision=PREC)
            tl.store(dh_ptr + st, acc, mask=m2)
        tl.debug_barrier()  # dh_{t-1} complete before phase A of step t - 1


def _blocks(H: int, cuda: bool) -> tuple[int, int, int]:
    """(BH, BK, num_warps), fixed by hidden size: no autotuning."""
    if _CONFIG_OVERRIDE is not None:
        return (*_CONFIG_OVERRIDE, 1)
    if not cuda:
        return 16, 16, 1
    return (16, 16, 4) if H <= 16 else (32, 32, 4)


def _run_forward(cell: int, xp, w, bhn, states):
    """xp (B, T, G*H) float32 contiguous, w (G*H, H); states: the initial states (B, H).
    Returns the state buffers (B, T+1, H) (slot 0 = initial) and pre (B, T, 4H)."""
    B, T, GH = xp.shape
    H = w.shape[1]
    bufs = []
    for s in states:
        buf = torch.empty(B, T + 1, H, dtype=torch.float32, device=xp.device)
        buf[:, 0] = s
        bufs.append(buf)
    dummy = bufs[0]
    sh, sc, sn, sm = (bufs + [dummy] * 4)[:4]
    pre = torch.empty(B, T, 4 * H, dtype=torch.float32, device=xp.device)
    BH, BK, warps = _blocks(H, xp.is_cuda)
    _fwd_kernel[(math.ceil(B / BB),)](
        xp, w, dummy if bhn is None else bhn, sh, sc, sn, sm, pre, B, T, H,
        CELL=cell, G=GH // H, HAS_BHN=bhn is not None, PREC=DOT_PRECISION, BB=BB, BH=BH, BK=BK,
        num_warps=warps)
    return bufs, pre


def _run_backward(cell: int, w, pre, bufs, gy, gfinal):
    """gy (B, T, H); gfinal: the gradients of the final states (B, H) each (zeros for None).
    Returns (dg (B, T, G*H), dxn (B, T, H) or None, grads of the initial states)."""
    B, T, H = gy.shape
    GH = w.shape[0]
    carry = [gfinal[0].clone()] + [torch.stack([g, torch.empty_like(g)]) for g in gfinal[1:]]
    dh, dc, dn, dm = (carry + [carry[0]] * 4)[:4]
    sh, sc, sn, sm = (bufs + [bufs[0]] * 4)[:4]
    dg = torch.empty(B, T, GH, dtype=torch.float32, device=gy.device)
    dxn = torch.empty(B, T, H, dtype=torch.float32, device=gy.device) if cell == GRU else dg
    ddir = torch.empty(B, H, dtype=torch.float32, device=gy.device) if cell == GRU else dg
    BH, BK, warps = _blocks(H, gy.is_cuda)
    _bwd_kernel[(math.ceil(B / BB),)](
        w, pre, sh, sc, sn, sm, gy, dh, dc, dn, dm, ddir, dg, dxn, B, T, H,
        CELL=cell, G=GH // H, PREC=DOT_PRECISION, BB=BB, BH=BH, BK=BK, num_warps=warps)
    return dg, (dxn if cell == GRU else None), [carry[0]] + [g[T % 2] for g in carry[1:]]


def _f32(x):
    return x.to(torch.float32).contiguous()


def _grad(g, like):
    return torch.zeros_like(like, dtype=torch.float32) if g is None else _f32(g)


class _Sequence(first_order.Function):
    """(cell, plain, xp, w, bhn, *initial states) -> (h_all, *final states), all float32;
    plain: cells.manual.manual_plain with the cell bound (its `twice`), or None."""

    @staticmethod
    def forward(ctx, cell, plain, xp, w, bhn, *states):
        xp32, w32 = _f32(xp), _f32(w)
        bhn32 = None if bhn is None else _f32(bhn)
        bufs, pre = _run_forward(cell, xp32, w32, bhn32, [_f32(s) for s in states])
        ctx.cell, ctx.xp_dtype, ctx.w_dtype, ctx.has_bhn = cell, xp.dtype, w.dtype, bhn is not None
        ctx.state_dtypes = [s.dtype for s in states]
        ctx.plain, ctx.n_bufs = plain, len(bufs)
        # the original inputs (references, no copies) for `twice`
        ctx.save_for_backward(w32, pre, *bufs, xp, w, bhn, *states)
        outs = [bufs[0][:, 1:]] + [b[:, -1].clone() for b in bufs]
        return tuple(outs)

    @staticmethod
    def twice(ctx, gy, *gfinal):  # under create_graph: autograd through the cell's step loop
        plain, n_state = ctx.plain, len(ctx.state_dtypes)

        def fn(xp, w, bhn, *states):
            return plain(n_state, 1, xp, *states, w, *(() if bhn is None else (bhn,)))
        return (None, None, *_triton.replay("_Sequence", plain, fn,
                                            ctx.saved_tensors[2 + ctx.n_bufs:], (gy, *gfinal),
                                            ctx.needs_input_grad[2:]))

    @staticmethod
    def backward(ctx, gy, *gfinal):
        w32, pre, *bufs = ctx.saved_tensors[:2 + ctx.n_bufs]
        h_all = bufs[0][:, 1:]
        gy = _grad(gy, h_all)
        gfin = [_grad(g, b[:, -1]) for g, b in zip(gfinal, bufs)]
        dg, dxn, ginit = _run_backward(ctx.cell, w32, pre, bufs, gy, gfin)
        B, T, H = gy.shape
        hprev = bufs[0][:, :T]
        dw = dg.reshape(B * T, -1).T @ hprev.reshape(B * T, H)
        dbhn = None
        if ctx.cell == GRU:
            dxp = torch.cat([dg[..., :2 * H], dxn], -1)
            if ctx.has_bhn:
                dbhn = dg[..., 2 * H:].sum((0, 1))
        else:
            dxp = dg
        return (None, None, dxp.to(ctx.xp_dtype), dw.to(ctx.w_dtype), dbhn,
                *(g.to(d) for g, d in zip(ginit, ctx.state_dtypes)))


def _check(name, xp, w, G, states, bhn=None):
    if not isinstance(xp, torch.Tensor) or xp.dim() != 3:
        raise ValueError(f"{name}: xp must be a (batch, time, {G}*hidden) tensor, got "
                         f"{getattr(xp, 'shape', type(xp).__name__)}")
    if xp.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: xp must be float32, float16 or bfloat16 (float64: use the "
                        f"PyTorch path), got {xp.dtype}")
    B, T, GH = xp.shape
    if w.dim() != 2 or w.shape[0] != GH or w.shape[0] != G * w.shape[1]:
        raise ValueError(f"{name}: w_hh must be ({G}*H, H) with {G}*H = xp.shape[-1] = {GH}, "
                         f"got {tuple(w.shape)}")
    H = w.shape[1]
    for sname, s in states:
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != (B, H):
            raise ValueError(f"{name}: {sname} must have shape {(B, H)}, got "
                             f"{tuple(getattr(s, 'shape', ()))}")
    if bhn is not None and tuple(bhn.shape) != (H,):
        raise ValueError(f"{name}: b_hn must have shape {(H,)}, got {tuple(bhn.shape)}")
    if T == 0:
        raise ValueError(f"{name}: xp must have at least one time step, got shape "
                         f"{tuple(xp.shape)}")


def lstm_sequence(xp: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                  plain=None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """torch.nn.LSTM's recurrence over a whole sequence, one kernel launch.

    xp: (B, T, 4H), the input projections x_t W_ih^T + b_ih + b_hh, gates (i, f, g, o);
    w_hh: (4H, H); h0, c0: (B, H). Per step: i, f, g, o = xp_t + h_{t-1} W_hh^T,
    c_t = sigma(f) c_{t-1} + sigma(i) tanh(g), h_t = sigma(o) tanh(c_t).
    Returns h_all (B, T, H) in xp's dtype and (h_T, c_T) in float32. Differentiable in
    xp, w_hh, h0, c0. plain: the cell's cells.manual.manual_plain with the cell bound,
    replayed under create_graph=True (None: create_graph raises).
    """
    _check("lstm_sequence", xp, w_hh, 4, [("h0", h0), ("c0", c0)])
    h_all, h, c = _Sequence.apply(LSTM, plain, xp, w_hh, None, h0, c0)
    return h_all.to(xp.dtype), (h, c)


def gru_sequence(xp: torch.Tensor, w_hh: torch.Tensor, b_hn: torch.Tensor | None,
                 h0: torch.Tensor, plain=None) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.GRU's recurrence (reset gate on W_hn h + b_hn, as cuDNN) in one launch.

    xp: (B, T, 3H), gates (r, z, n): x W_ih^T + b_ih, plus b_hh's r and z parts (what
    rnnzoo's GRUCell.project returns); w_hh: (3H, H); b_hn: (H,) (b_hh's n part) or None;
    h0: (B, H). Per step: r = sigma(xp_r + W_hr h), z = sigma(xp_z + W_hz h),
    n = tanh(xp_n + r * (W_hn h + b_hn)), h_t = (1 - z) n + z h_{t-1}.
    Returns h_all (B, T, H) in xp's dtype and h_T (B, H) float32. Differentiable in xp,
    w_hh, b_hn, h0. plain: as lstm_sequence's (its vectors: (b_hn,), or none).
    """
    _check("gru_sequence", xp, w_hh, 3, [("h0", h0)], b_hn)
    h_all, h = _Sequence.apply(GRU, plain, xp, w_hh, b_hn, h0)
    return h_all.to(xp.dtype), h


def slstm_dense_recurrent(weight_hh: torch.Tensor) -> torch.Tensor:
    """sLSTM's block-diagonal recurrent weights (K, 4*dh, dh) (head k's block, rows gate-major,
    as rnnzoo.cells.slstm and xlstm's R) as the dense (4H, H) matrix, rows (i, f, z, o)."""
    K, G4, dh = weight_hh.shape
    blocks = torch.block_diag(*weight_hh.unbind(0))  # (K*4*dh, K*dh), head-major rows
    return blocks.view(K, 4, dh, K * dh).transpose(0, 1).reshape(4 * K * dh, K * dh)


def slstm_sequence(xp: torch.Tensor, r: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                   n0: torch.Tensor, m0: torch.Tensor, plain=None
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """xLSTM's sLSTM recurrence (exponential gating, stabiliser m) in one launch.

    xp: (B, T, 4H), W x_t + b, gates (i, f, z, o); r: the recurrent weights, either dense
    (4H, H) or per head (num_heads, 4*head_dim, head_dim) as SLSTMCell.weight_hh (then made
    dense by `slstm_dense_recurrent`, differentiably); h0, c0, n0, m0: (B, H). Per step:
    i~, f~, z~, o~ = xp_t + R h_{t-1}; m_t = max(log sigma(f~) + m_{t-1}, i~);
    i' = exp(i~ - m_t), f' = exp(log sigma(f~) + m_{t-1} - m_t); c_t = f' c_{t-1} + i' tanh(z~);
    n_t = f' n_{t-1} + i'; h_t = sigma(o~) c_t / n_t.
    Returns h_all (B, T, H) in xp's dtype and (h_T, c_T, n_T, m_T) in float32.
    Differentiable in xp, r, and the four initial states. plain: as lstm_sequence's (its
    one matrix the dense R).
    """
    if isinstance(r, torch.Tensor) and r.dim() == 3:
        r = slstm_dense_recurrent(r)
    _check("slstm_sequence", xp, r, 4, [("h0", h0), ("c0", c0), ("n0", n0), ("m0", m0)])
    h_all, *final = _Sequence.apply(SLSTM, plain, xp, r, None, h0, c0, n0, m0)
    return h_all.to(xp.dtype), tuple(final)
