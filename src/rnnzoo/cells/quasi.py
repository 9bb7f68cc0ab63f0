"""Cells whose recurrence has no matrix product: SRU and QRNN.

SRU (Lei, Zhang, Wang, Dai & Artzi 2018, "Simple Recurrent Units for Highly
Parallelizable Recurrence", EMNLP, arXiv:1709.02755), eqs. 1-4:

    f_t = sigma(W_f x_t + v_f * c_{t-1} + b_f)
    r_t = sigma(W_r x_t + v_r * c_{t-1} + b_r)
    c_t = f_t * c_{t-1} + (1 - f_t) * (W x_t)
    h_t = r_t * c_t + (1 - r_t) * x_t          (x_t -> W_s x_t when input_size != H)

Its `fused` mode runs c_t in a loop that records no autograd graph, with a hand-written
backward pass that is a reverse linear scan (the adjoint of c is linear), then r_t, h_t
for all steps at once.

QRNN (Bradbury, Merity, Xiong & Socher 2017, "Quasi-Recurrent Neural Networks",
ICLR, arXiv:1611.01576), eqs. 1-4 with fo-pooling: a masked convolution of width
`window` over time gives the gates, and the only recurrence is elementwise:

    z_t = tanh(sum_m W_z,m x_{t-m}),  f_t = sigma(sum_m W_f,m x_{t-m}),  o_t = sigma(...)
    c_t = f_t * c_{t-1} + (1 - f_t) * z_t,   h_t = o_t * c_t

Its `fused` mode runs c_t as a linear scan (`ops.scan.linear_scan`) over all steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.parts import affine, uniform_init_
from rnnzoo.ops import first_order
from rnnzoo.ops.scan import linear_scan


class _SRUCellState(first_order.Transformable):
    """c_t = f_t c_{t-1} + (1 - f_t) xt_t with f_t = sigma(u_t + v * c_{t-1}), for all t.

    Forward: a loop of four elementwise ops per step, recorded by no autograd graph.
    Backward: the adjoint lambda_t = g_t + A_{t+1} lambda_{t+1} with
    A_t = dc_t/dc_{t-1} = f_t + (c_{t-1} - xt_t) f_t (1 - f_t) v is linear, so it is one
    reverse `linear_scan`; every other gradient is elementwise over all steps."""

    @staticmethod
    def forward(ctx, xt, u, v, c0):
        c, cs = c0, []
        for xt_t, u_t in zip(xt.unbind(1), u.unbind(1)):
            f = torch.sigmoid(torch.addcmul(u_t, v, c))
            c = torch.addcmul(xt_t, f, c - xt_t)
            cs.append(c)
        c_all = torch.stack(cs, 1)
        ctx.save_for_backward(xt, u, v, c0, c_all)
        return c_all

    @staticmethod
    def backward(ctx, g):
        xt, u, v, c0, c_all = ctx.saved_tensors
        c_prev = torch.cat([c0.unsqueeze(1), c_all[:, :-1]], 1)
        f = torch.sigmoid(torch.addcmul(u, v, c_prev))
        da_dc = (c_prev - xt) * f * (1 - f)  # d c_t / d (u_t + v c_{t-1})
        A = f + da_dc * v                    # d c_t / d c_{t-1}
        lam, _ = linear_scan(torch.cat([A[:, 1:], torch.zeros_like(A[:, :1])], 1), g,
                             reverse=True)
        du = lam * da_dc
        return lam * (1 - f), du, (du * c_prev).sum((0, 1)), A[:, 0] * lam[:, 0]


@cell("sru", paper="Lei et al. 2018, arXiv:1709.02755", tiny={"hidden_size": 5})
class SRUCell(Cell):
    """Simple recurrent unit. State (h, c), each (B, H).

    weight_ih rows: W (candidate), W_f, W_r, then W_s (skip) when input_size != H;
    weight_hc: v_f, v_r (2H,); bias: b_f, b_r (2H,). Weights ~ U(-sqrt(3/d), sqrt(3/d)),
    variance 1/d as the paper's section 3.2 initialisation, biases 0.
    """

    jacobian_structure = "dense"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.skip_projection = input_size != hidden_size
        rows = (4 if self.skip_projection else 3) * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hc = nn.Parameter(torch.empty(2 * hidden_size))
        self.bias = nn.Parameter(torch.zeros(2 * hidden_size))
        bound = math.sqrt(3 / input_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hc, -bound, bound)
        self.state_sizes = (hidden_size, hidden_size)

    def project(self, x):
        """(..., input_size) -> (..., 4H): [W x, W_f x + b_f, W_r x + b_r, skip]."""
        H = self.hidden_size
        xp = affine(x, self.weight_ih)
        gates = xp[..., H:3 * H] + self.bias
        skip = xp[..., 3 * H:] if self.skip_projection else x
        return torch.cat([xp[..., :H], gates, skip], -1)

    def recur(self, xp_t, state):
        c = state[1]
        H = self.hidden_size
        fr = torch.sigmoid(xp_t[:, H:3 * H] + self.weight_hc * c.repeat(1, 2))
        f, r = fr[:, :H], fr[:, H:]
        c = xp_t[:, :H] + f * (c - xp_t[:, :H])  # f c + (1 - f) W x
        skip = xp_t[:, 3 * H:]
        return skip + r * (c - skip), c

    def fused(self, x, state):
        """c for all steps by `_SRUCellState` (a graph-free loop, a scan for its gradient),
        then r and h for all steps at once."""
        H = self.hidden_size
        xp = self.project(x)
        xt, u_f, u_r, skip = xp[..., :H], xp[..., H:2 * H], xp[..., 2 * H:3 * H], xp[..., 3 * H:]
        v_f, v_r = self.weight_hc[:H], self.weight_hc[H:]
        c = _SRUCellState.apply(xt, u_f, v_f, state[1])
        c_prev = torch.cat([state[1].unsqueeze(1), c[:, :-1]], 1)
        r = torch.sigmoid(u_r + v_r * c_prev)
        h = skip + r * (c - skip)
        return h, (h[:, -1], c[:, -1])


class _TapSum(torch.autograd.Function):
    """taps (B, T, k, G), carry (B, k-1, G) -> full (B, T+k-1, G) with full[:, s] = carry[:, s]
    (s < k-1) + sum_m taps[:, s-m, m] (0 <= s-m < T): the causal convolution's sums, the
    last k-1 rows the sums pending for the next steps. Adds into one buffer (a sum of padded
    copies costs k+1 zero-filled full-size buffers, both ways)."""

    generate_vmap_rule = True  # functorch transforms (ops.newton's jacobians) batch it

    @staticmethod
    def forward(taps, carry):
        B, T, k, G = taps.shape
        full = torch.cat([carry, taps.new_zeros(B, T, G)], 1)
        for m in range(k):
            full[:, m:m + T] += taps[:, :, m]
        return full

    @staticmethod
    def jvp(ctx, taps_t, carry_t):  # linear: the map of the tangents (forward-mode AD)
        return _TapSum.forward(taps_t, carry_t)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.k = inputs[0].shape[2]

    @staticmethod
    def backward(ctx, g):
        T, k = g.shape[1] - ctx.k + 1, ctx.k
        return torch.stack([g[:, m:m + T] for m in range(k)], 2), g[:, :k - 1]


@cell("qrnn", paper="Bradbury et al. 2017, arXiv:1611.01576", tiny={"hidden_size": 5, "window": 2})
class QRNNCell(Cell):
    """Quasi-recurrent cell with fo-pooling and a causal convolution of width `window`
    (default 2, the paper's language model). State (h, c[, carry]): `carry` (B, (window-1)*3H)
    holds the convolution's pending sums for the next window-1 steps (zero input before
    the start, the paper's masked convolution).

    weight_ih (window*3H, input_size): block m (gates z, f, o) multiplies x_{t-m}; bias (3H,).
    """

    def __init__(self, input_size, hidden_size, window=2):
        super().__init__(input_size, hidden_size)
        self.window = checks.positive_int("window", window)
        self.weight_ih = nn.Parameter(torch.empty(window * 3 * hidden_size, input_size))
        self.bias = nn.Parameter(torch.empty(3 * hidden_size))
        uniform_init_(self, hidden_size)
        self.state_sizes = (hidden_size, hidden_size) + \
            (((window - 1) * 3 * hidden_size,) if window > 1 else ())

    def project(self, x):
        """(..., input_size) -> (..., window*3H): every tap of the convolution, bias in tap 0
        (one product: the bias zero-padded over the other taps)."""
        pad = (self.window - 1) * 3 * self.hidden_size
        return affine(x, self.weight_ih, nn.functional.pad(self.bias, (0, pad)))

    def _convolve(self, xp, carry):
        """xp (B, T, window*3H), carry (B, (window-1)*3H) -> gate pre-activations (B, T, 3H),
        the new carry: sum_m xp_{t-m}[tap m], plus the carried sums for the first steps."""
        B, T, _ = xp.shape
        G, k = 3 * self.hidden_size, self.window
        if k == 1:
            return xp, None
        full = _TapSum.apply(xp.view(B, T, k, G), carry.view(B, k - 1, G))
        return full[:, :T], full[:, T:].reshape(B, (k - 1) * G)  # B may be 0

    def _gates(self, pre):
        """pre (..., 3H) -> z, f, o (..., H) each: one view per gate (no slice of a
        concatenation, whose backward fills a full-size zero gradient per slice)."""
        z, f, o = pre.unflatten(-1, (3, self.hidden_size)).unbind(-2)
        return torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)

    def recur(self, xp_t, state):
        c = state[1]
        pre, carry = self._convolve(xp_t.unsqueeze(1), state[2] if self.window > 1 else None)
        z, f, o = self._gates(pre[:, 0])
        c = z + f * (c - z)  # f c + (1 - f) z
        return (o * c, c) + ((carry,) if carry is not None else ())

    def fused(self, x, state):
        """All steps at once: the convolution, then c_t = f_t c_{t-1} + (1 - f_t) z_t as a scan."""
        pre, carry = self._convolve(self.project(x), state[2] if self.window > 1 else None)
        z, f, o = self._gates(pre)
        c, _ = linear_scan(f, (1 - f) * z, state[1])
        h = o * c
        return h, (h[:, -1], c[:, -1]) + ((carry,) if carry is not None else ())
