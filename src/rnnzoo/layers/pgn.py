"""PGN, the Parallel Gated Network (Jia, Lin, Wang, Chen, Guo & Wan 2024, "PGN: The RNN's New
Successor is Effective for Long-Range Time Series Forecasting", NeurIPS 2024,
arXiv:2409.17703).

An RNN reaches x_{t-k} through k transitions; PGN replaces the hidden state by a
Historical Information Extraction (HIE) layer, one linear map of the previous W inputs,
and keeps a single gated unit on top of it:

    H_t   = b_H + sum_{k=1..W} M_k x_{t-k}                 HIE: (B, T, d_hidden)
    [g; c] = W_g [x_t; H_t] + b_g                          the gated unit
    o_t   = sigmoid(g) * H_t + (1 - sigmoid(g)) * tanh(c)
    y_t   = W_out o_t                                      (back to d_model)

so every past input within the window reaches y_t through one map (the paper's O(1)
propagation path), and every step is computed at once. W = window_size (the paper's
HIE spans the whole input, W = L - 1); zeros stand before the sequence.

State: the last W inputs (B, window_size, d_model), oldest first. Modes: `sequential`
(the window slid one step at a time), `conv` (HIE as one causal convolution over the
sequence, 2 T W d_model d_hidden multiply-adds per sequence) and `fft` (the same
convolution by the convolution theorem: with n >= T + W - 1 and the inputs and taps
zero-padded to n,

    H^_f = X^_f M^_f            one (B, d_model) @ (d_model, d_hidden) product per frequency
    H_t  = b_H + irfft(H^)_{t + W - 1},

n / 2 + 1 complex products instead of T W real ones: exact up to rounding, about
25x fewer FLOPs at the default W = 64, T = 512). There is no recurrence to scan: the
parallel form is the convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import MaskedLayer
from rnnzoo.ops import first_order
from rnnzoo.ops.finite import finite, poison
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def fft_size(n: int) -> int:
    """The smallest m >= n whose prime factors are 2, 3 and 5 (a fast FFT length)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def hie_fft(xp: torch.Tensor, weight: torch.Tensor, block: int = 64) -> torch.Tensor:
    """sum_k M_k x_{t-k} for t = 0 .. T-1 by FFT: xp (B, W + T - 1, d_model), the W inputs
    before the first step then the sequence less its last input, all finite; weight
    (d_hidden, d_model, W), weight[:, :, W - k] = M_k. Returns (B, T, d_hidden), no bias.

    With taps[j] = M_{j+1}, H_t = sum_j taps[j] xp[t + W - 1 - j]: a linear convolution,
    read at t + W - 1. Overlap-save: the outputs go in blocks of C = max(block, W - 1)
    steps, block i reading xp[iC .. iC + C + W - 2]; a circular convolution of length
    n >= C + W - 1 wraps nothing into the C outputs read. The backward is the same algebra
    transposed (`_HieFFT`)."""
    return _HieFFT.apply(xp, weight, block)


def _hie_plain(xp, weight):
    """`hie_fft` as the direct convolution (`_HieFFT`'s `twice`: equal up to rounding)."""
    return F.conv1d(xp.transpose(1, 2), weight).transpose(1, 2)


class _HieFFT(first_order.Function):
    """Per frequency f of the n-point real FFT (x^, g^, M^: the spectra of a block's inputs,
    of its output gradient placed at offset W - 1, and of the taps):

        forward     H^ = x^ M^                  (B * blocks, d_model) @ (d_model, d_hidden)
        d xp        dx^ = g^ (M^)*              circular cross-correlations, read at
        d taps      dM^ = sum (x^)* g^           0 .. C + W - 2 and 0 .. W - 1

    each a batched complex matmul over the n / 2 + 1 frequencies; the block gradients of xp
    overlap by W - 1 steps and add."""

    @staticmethod
    def forward(ctx, xp, weight, block):
        B, L, D = xp.shape
        Hd, _, W = weight.shape
        T = L - W + 1
        C = max(min(block, T), W - 1, 1)
        nb = -(-T // C)
        S = C + W - 1                                                   # a block's inputs
        n = fft_size(S)
        xb = F.pad(xp, (0, 0, 0, nb * C + W - 1 - L)).unfold(1, S, C)    # (B, nb, D, S)
        xf = torch.fft.rfft(xb, n=n).permute(3, 0, 1, 2).reshape(-1, B * nb, D)  # (F, B nb, D)
        wf = torch.fft.rfft(weight.flip(-1), n=n).permute(2, 1, 0).contiguous()  # (F, D, Hd)
        h = torch.fft.irfft(torch.bmm(xf, wf), n=n, dim=0)[W - 1:S]        # (C, B nb, Hd)
        h = h.unflatten(1, (B, nb)).permute(1, 2, 0, 3).reshape(B, nb * C, Hd)
        ctx.save_for_backward(xf, wf, xp, weight)
        ctx.shape = (B, L, D, Hd, W, T, C, nb, n)
        return h[:, :T]

    @staticmethod
    def twice(ctx, dh):  # under create_graph: autograd through the direct convolution
        return first_order.replay(_hie_plain, ctx.saved_tensors[2:], (dh,),
                                  ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, dh):
        xf, wf, _, _ = ctx.saved_tensors
        B, L, D, Hd, W, T, C, nb, n = ctx.shape
        S = C + W - 1
        g = F.pad(dh, (0, 0, 0, nb * C - T)).view(B * nb, C, Hd).transpose(1, 2)
        gf = torch.fft.rfft(F.pad(g, (W - 1, 0)), n=n).permute(2, 0, 1).contiguous()  # (F, B nb, Hd)
        dxp = dweight = None
        # the conjugate transposes are views: bmm reads them as they are (a copy of the
        # spectra in (F, Hd, D) order cost as much as the product), and each inverse
        # transform runs along the frequencies' own dim 0, no permuted copy before it
        if ctx.needs_input_grad[0]:
            dxb = torch.fft.irfft(torch.bmm(gf, wf.transpose(1, 2).conj()), n=n, dim=0)[:S]
            dxb = dxb.unflatten(1, (B, nb)).permute(1, 2, 0, 3)          # (B, nb, S, D)
            dxp = dxb.new_zeros(B, nb + 1, C, D)                         # overlap-add
            dxp[:, :nb] += dxb[:, :, :C]
            dxp[:, 1:, :W - 1] += dxb[:, :, C:]
            dxp = dxp.view(B, (nb + 1) * C, D)[:, :L]
        if ctx.needs_input_grad[1]:
            dwf = torch.bmm(xf.transpose(1, 2).conj(), gf)                # (F, D, Hd)
            dweight = torch.fft.irfft(dwf, n=n, dim=0)[:W].permute(2, 1, 0).flip(-1)
        return dxp, dweight, None


def _gated_unit_plain(gc, H):
    """`_GatedUnit`'s forward in plain differentiable ops (its `twice`)."""
    g, c = gc.chunk(2, -1)
    tc = torch.tanh(c)
    return tc + torch.sigmoid(g) * (H - tc)


class _GatedUnit(first_order.Function):
    """o = s H + (1 - s) tanh(c) = tc + s (H - tc), s = sigmoid(g), tc = tanh(c), [g; c] = gc
    (..., 2 d_hidden); H (..., d_hidden). The backward by hand (dH = do s, dc = do (1 - s)
    (1 - tc^2), dg = do s (1 - s) (H - tc)): autograd's ran ~12 passes and a cat of dg, dc."""

    @staticmethod
    def forward(ctx, gc, H):
        g, c = gc.chunk(2, -1)
        s, tc = torch.sigmoid(g), torch.tanh(c)
        d = H - tc
        ctx.save_for_backward(s, tc, d, gc, H)
        return torch.addcmul(tc, s, d)

    @staticmethod
    def twice(ctx, do):  # under create_graph: autograd through the plain form
        return first_order.replay(_gated_unit_plain, ctx.saved_tensors[3:], (do,),
                                  ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, do):
        s, tc, d, _, _ = ctx.saved_tensors
        dH = do * s
        dtc = do - dH
        dc = torch.addcmul(dtc, dtc * tc, tc, value=-1)
        dg = dH * d
        dg = torch.addcmul(dg, dg, s, value=-1)
        return torch.cat([dg, dc], -1), dH


@register("pgn", family="diagonal", paper="Jia et al. 2024, arXiv:2409.17703",
          tiny=dict(d_model=3, d_hidden=4, window_size=3))
class PGN(MaskedLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state: the last window_size inputs
    (B, window_size, d_model).

    Options: d_hidden (the HIE and gate width, default d_model), window_size (W, the HIE's
    look-back). Parameters: hie (M: (d_hidden, d_model, W), M[:, :, W - k] = M_k, and b_H),
    gate (W_g, b_g), out_proj (W_out)."""

    modes = ("sequential", "conv", "fft")
    fft_block = 128  # outputs per overlap-save block of `fft` (measured: 64 .. 192 alike)

    def __init__(self, d_model: int, d_hidden: int | None = None, window_size: int = 64):
        super().__init__(d_model)
        self.d_hidden = positive_int("d_hidden", d_model if d_hidden is None else d_hidden)
        self.window_size = positive_int("window_size", window_size)
        bound = 1 / math.sqrt(d_model * window_size)  # nn.Conv1d's default
        self.hie_weight = nn.Parameter(
            torch.empty(self.d_hidden, d_model, window_size).uniform_(-bound, bound))
        self.hie_bias = nn.Parameter(torch.empty(self.d_hidden).uniform_(-bound, bound))
        self.gate = Linear(d_model + self.d_hidden, 2 * self.d_hidden)
        self.out_proj = Linear(self.d_hidden, d_model)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.window_size, self.d_model, device=device,
                           dtype=state_dtype(dtype))

    def hie(self, u, history, mode, mask=None):
        """H (B, T, d_hidden) from the W inputs before each step, and the new history."""
        W = self.window_size
        weight, bias = self.hie_weight.to(u.dtype), self.hie_bias.to(u.dtype)
        xp = torch.cat([history.to(u.dtype), u], 1)                        # (B, W + T, d)
        if mode in ("conv", "fft"):
            if mode == "conv":
                H = F.conv1d(xp[:, :-1].transpose(1, 2), weight, bias).transpose(1, 2)
            else:  # an FFT spreads a NaN or inf everywhere: run on finite inputs, then
                # mark each H_t whose window xp[t .. t + W - 1] held one (ops.finite)
                xf, bad = finite(xp[:, :-1])
                H = hie_fft(xf, weight, self.fft_block) + bias
                seen = F.pad(bad.cumsum(1), (1, 0))                          # (B, W + T)
                H = poison(H, seen[:, W:] > seen[:, :-W])
            if mask is None:
                return H, xp[:, xp.shape[1] - W:]
            n = mask.flatten(1).sum(1)              # inputs n .. n + W - 1 of xp are the
            idx = n.view(-1, 1) + torch.arange(W, device=u.device)   # last W valid ones
            return H, xp.gather(1, idx.unsqueeze(-1).expand(-1, -1, xp.shape[-1]))
        taps = weight.permute(2, 1, 0)                                   # (W, d_model, d_hidden)
        out = []
        for t in range(u.shape[1]):
            out.append(torch.einsum("bkd,kdh->bh", history, taps) + bias)
            new = torch.cat([history[:, 1:], u[:, t:t + 1]], 1)
            history = new if mask is None else torch.where(mask[:, t:t + 1], new, history)
        return torch.stack(out, 1), history

    def gated_unit(self, u, H):
        """o_t = sigmoid(g) H_t + (1 - sigmoid(g)) tanh(c), [g; c] = W_g [x_t; H_t] + b_g."""
        return _GatedUnit.apply(self.gate(torch.cat([u, H], -1)), H)

    def _run(self, x, state, mode, mask=None):
        cdt = compute_dtype(x)
        u = x.to(cdt)
        if mask is not None:  # padding never enters (NaN included)
            u = torch.where(mask, u, 0.0)
        H, history = self.hie(u, state.to(cdt), mode, mask)
        o = self.gated_unit(u.to(x.dtype), H.to(x.dtype))
        y = self.out_proj(o)
        return y, history.to(state.dtype)

    def auto_mode(self, x):
        """fft from a window of 16 on (measured, HIE fwd+bwd at B=16 T=512 d=128, conv / fft:
        0.75 at W = 8, 1.55 at 16, 3.5 at 32)."""
        return "fft" if self.window_size >= 16 else "conv"

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, d_hidden={self.d_hidden}, "
                f"window_size={self.window_size}")
