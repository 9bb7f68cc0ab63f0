"""ParaRNN's cells (Danieli et al. 2025, "ParaRNN: Unlocking Parallel Training of
Nonlinear RNNs for Large Language Models", arXiv:2510.21450).

GRU and LSTM adapted for Newton's method over the sequence: every recurrent
matrix is diagonal (a vector, applied elementwise), so d state_t / d state_{t-1}
is diagonal (ParaGRU) or 2x2 block-diagonal over the (h_j, c_j) pairs (ParaLSTM),
and each Newton step is a cheap elementwise or 2x2 parallel scan.

ParaGRU:
    z_t = sigma(W_z x_t + a_z * h_{t-1} + b_z)
    r_t = sigma(W_r x_t + a_r * h_{t-1} + b_r)
    n_t = tanh(W_n x_t + a_n * (r_t * h_{t-1}) + b_n)
    h_t = (1 - z_t) * h_{t-1} + z_t * n_t

ParaLSTM (coupled input and forget gates, CIFG, with peepholes):
    f_t = sigma(W_f x_t + a_f * h_{t-1} + p_f * c_{t-1} + b_f),  i_t = 1 - f_t
    c_t = f_t * c_{t-1} + (1 - f_t) * tanh(W_c x_t + a_c * h_{t-1} + b_c)
    o_t = sigma(W_o x_t + a_o * h_{t-1} + p_o * c_t + b_o)
    h_t = o_t * tanh(c_t)

`fused`: the loop with its hand-written backward (cells/manual.py), in C on CPU
float32/64 tensors (ops/native/para.c).

Multi-head: with `num_heads` > 1 the units are split into heads and each head's
gates read only its own slice of the input (a block-diagonal input projection);
the recurrence is per unit in any case. Both cells carry their Jacobian in closed
form (`jacobian`), checked against autograd by `ops.newton.verify_structure`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.manual import manual_loop, sigmoid_back, tanh_back
from rnnzoo.ops.native.cells import NativeStep


class _ParaCell(Cell):
    gates: int  # input-projected pre-activations per unit

    def __init__(self, input_size: int, hidden_size: int, num_heads: int = 1):
        super().__init__(input_size, hidden_size)
        if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1 \
                or input_size % num_heads or hidden_size % num_heads:
            raise ValueError(f"num_heads must be a positive int dividing input_size "
                             f"({input_size}) and hidden_size ({hidden_size}), got {num_heads!r}")
        self.num_heads = num_heads
        d_in, d_h = input_size // num_heads, hidden_size // num_heads
        bound = 1 / math.sqrt(d_in)
        self.weight_ih = nn.Parameter(torch.empty(num_heads, self.gates * d_h, d_in)
                                      .uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(self.gates, hidden_size).uniform_(-bound, bound))

    def project(self, x):
        """x: (..., input_size) -> (..., gates * hidden_size), gate-major: [g0 | g1 | ...]."""
        H, G = self.num_heads, self.gates
        xh = x.unflatten(-1, (H, -1))
        pre = torch.einsum("...hi,hoi->...ho", xh, self.weight_ih)  # (..., H, G * d_h)
        pre = pre.unflatten(-1, (G, -1)).transpose(-3, -2).flatten(-2)  # (..., G, hidden)
        return (pre + self.bias).flatten(-2)


@cell("paragru", paper="Danieli et al. 2025, arXiv:2510.21450 (ParaRNN)",
      tiny={"hidden_size": 6, "num_heads": 2})
class ParaGRU(_ParaCell):
    """GRU with diagonal recurrent weights; state h: (B, hidden_size)."""

    gates = 3
    jacobian_structure = "diag"

    def __init__(self, input_size: int, hidden_size: int, num_heads: int = 1,
                 recurrent_scale: float = 0.5):
        super().__init__(input_size, hidden_size, num_heads)
        self.recurrent = nn.Parameter(torch.empty(3, hidden_size)
                                      .uniform_(-recurrent_scale, recurrent_scale))

    def _gates(self, xp, h):
        xz, xr, xn = xp.chunk(3, -1)
        az, ar, an = self.recurrent
        z = torch.sigmoid(xz + az * h)
        r = torch.sigmoid(xr + ar * h)
        n = torch.tanh(xn + an * (r * h))
        return z, r, n

    def recur(self, xp_t, state):
        h = state[0]
        z, _, n = self._gates(xp_t, h)
        return (h + z * (n - h),)

    # -- the hand-written backward (`manual_loop`): no matrices, the recurrent vectors'
    # gradients summed over the steps
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (), (self.recurrent,)

    def manual_step(self, xp_t, state, wt, vectors):
        h, rec = state[0], vectors[0]
        xz, xr, xn = xp_t.chunk(3, 1)
        z, r = torch.sigmoid(xz + rec[0] * h), torch.sigmoid(xr + rec[1] * h)
        n = torch.tanh(xn + rec[2] * (r * h))
        return (h + z * (n - h),), None, (), (h, z, r, n)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, z, r, n), rec = d_state, saved, vectors[0]
        d_az = sigmoid_back(dh * (n - h), z)
        d_an = tanh_back(dh * z, n)
        d_ar = sigmoid_back(d_an * rec[2] * h, r)
        dh_prev = dh * (1 - z) + d_az * rec[0] + d_ar * rec[1] + d_an * rec[2] * r
        return torch.cat([d_az, d_ar, d_an], 1), (dh_prev,), (), \
            (torch.stack([d_az * h, d_ar * h, d_an * (r * h)], 1),)

    def manual_native(self):
        """The same step in C (ops/native/para.c)."""
        return NativeStep("para", "paragru", 4 * self.hidden_size)

    def jacobian(self, xp_t, state):
        """d h_t / d h_{t-1}, (B, hidden): (1 - z) + z'(n - h) + z n', elementwise."""
        h = state[0]
        z, r, n = self._gates(xp_t, h)
        az, ar, an = self.recurrent
        dz = z * (1 - z) * az
        dr = r * (1 - r) * ar
        dn = (1 - n * n) * an * (r + dr * h)
        return (1 - z) + dz * (n - h) + z * dn


@cell("paralstm", paper="Danieli et al. 2025, arXiv:2510.21450 (ParaRNN)",
      tiny={"hidden_size": 6, "num_heads": 2})
class ParaLSTM(_ParaCell):
    """CIFG LSTM with peepholes and diagonal recurrent weights; state (h, c), each
    (B, hidden_size); Jacobian 2x2 block-diagonal over the (h_j, c_j) pairs."""

    gates = 3  # forget, cell, output
    jacobian_structure = ("block", 2)

    def __init__(self, input_size: int, hidden_size: int, num_heads: int = 1,
                 recurrent_scale: float = 0.5):
        super().__init__(input_size, hidden_size, num_heads)
        self.state_sizes = (hidden_size, hidden_size)
        self.recurrent = nn.Parameter(torch.empty(3, hidden_size)
                                      .uniform_(-recurrent_scale, recurrent_scale))
        self.peephole = nn.Parameter(torch.empty(2, hidden_size)
                                     .uniform_(-recurrent_scale, recurrent_scale))
        with torch.no_grad():
            self.bias[0] += 1.0  # forget-gate bias: remember by default

    def _step(self, xp, h, c):
        xf, xc, xo = xp.chunk(3, -1)
        af, ac, ao = self.recurrent
        pf, po = self.peephole
        f = torch.sigmoid(xf + af * h + pf * c)
        g = torch.tanh(xc + ac * h)
        c_new = g + f * (c - g)
        o = torch.sigmoid(xo + ao * h + po * c_new)
        tc = torch.tanh(c_new)
        return f, g, c_new, o, tc

    def recur(self, xp_t, state):
        h, c = state
        _, _, c_new, o, tc = self._step(xp_t, h, c)
        return o * tc, c_new

    def jacobian(self, xp_t, state):
        """(B, hidden, 2, 2): [[dh/dh, dh/dc], [dc/dh, dc/dc]] for each unit."""
        h, c = state
        f, g, c_new, o, tc = self._step(xp_t, h, c)
        af, ac, ao = self.recurrent
        pf, po = self.peephole
        sf, so = f * (1 - f), o * (1 - o)
        dc_dh = sf * af * (c - g) + (1 - f) * (1 - g * g) * ac
        dc_dc = f + sf * pf * (c - g)
        dtc = o * (1 - tc * tc)
        dh_dh = so * (ao + po * dc_dh) * tc + dtc * dc_dh
        dh_dc = so * po * dc_dc * tc + dtc * dc_dc
        return torch.stack([torch.stack([dh_dh, dh_dc], -1),
                            torch.stack([dc_dh, dc_dc], -1)], -2)

    # -- the hand-written backward (`manual_loop`): no matrices, the recurrent and peephole
    # vectors' gradients summed over the steps
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (), (self.recurrent, self.peephole)

    def manual_step(self, xp_t, state, wt, vectors):
        (h, c), (rec, peep) = state, vectors
        xf, xc, xo = xp_t.chunk(3, 1)
        f = torch.sigmoid(xf + rec[0] * h + peep[0] * c)
        g = torch.tanh(xc + rec[1] * h)
        c_new = g + f * (c - g)
        o = torch.sigmoid(xo + rec[2] * h + peep[1] * c_new)
        tc = torch.tanh(c_new)
        return (o * tc, c_new), None, (), (h, c, f, g, o, c_new, tc)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dc), (h, c, f, g, o, c_new, tc), (rec, peep) = d_state, saved, vectors
        d_ao = sigmoid_back(dh * tc, o)
        dc_new = dc + tanh_back(dh * o, tc) + d_ao * peep[1]
        d_af = sigmoid_back(dc_new * (c - g), f)
        d_ag = tanh_back(dc_new * (1 - f), g)
        dh_prev = d_af * rec[0] + d_ag * rec[1] + d_ao * rec[2]
        return torch.cat([d_af, d_ag, d_ao], 1), (dh_prev, dc_new * f + d_af * peep[0]), (), \
            (torch.stack([d_af * h, d_ag * h, d_ao * h], 1), torch.stack([d_af * c, d_ao * c_new], 1))

    def manual_native(self):
        """The same step in C (ops/native/para.c)."""
        return NativeStep("para", "paralstm", 7 * self.hidden_size)
