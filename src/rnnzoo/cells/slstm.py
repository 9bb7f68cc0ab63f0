"""sLSTM, xLSTM's scalar LSTM (Beck, Poeppel, Spanring, Auer, Prudnikova, Kopp,
Klambauer, Brandstetter & Hochreiter 2024, "xLSTM: Extended Long Short-Term
Memory", arXiv:2405.04517), eqs. 8-17: exponential input gate, normaliser state n,
stabiliser state m, and a recurrence that is block-diagonal over heads.

    i~, f~, z~, o~ = W x_t + R h_{t-1} + b            (R block-diagonal: num_heads blocks)
    m_t = max(log sigma(f~) + m_{t-1}, i~)            (the stabiliser, eq. 15)
    i'  = exp(i~ - m_t),   f' = exp(log sigma(f~) + m_{t-1} - m_t)
    c_t = f' c_{t-1} + i' tanh(z~),   n_t = f' n_{t-1} + i'
    h_t = sigma(o~) * c_t / n_t

The stabiliser rescales c and n together, so h is exactly the unstabilised
sLSTM's while exp never overflows. The forget gate is the sigmoid (xLSTM's sLSTM
default).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, RecurrentMatrix, cell
from rnnzoo.cells.manual import manual_loop, sigmoid_back, tanh_back
from rnnzoo.cells.parts import affine, uniform_init_
from rnnzoo.ops import backend
from rnnzoo.ops.native.cells import NativeStep


@cell("slstm", paper="Beck et al. 2024, arXiv:2405.04517", tiny={"hidden_size": 4, "num_heads": 2})
class SLSTMCell(Cell):
    """sLSTM cell. State (h, c, n, m), each (B, H).

    Options: num_heads (H must divide by it; 4 by default, as xLSTM's sLSTM block, or 1
    when H does not divide). Parameters: weight_ih (4H, input_size), gates (i, f, z, o);
    weight_hh (num_heads, 4 * head_dim, head_dim): head k's block, rows gate-major as
    xlstm's `R`; bias (4H,). Weights start as torch.nn.LSTM's; the forget-gate bias
    spreads over [3, 6] (long memory at the start, xLSTM's linspace init).
    """

    def __init__(self, input_size, hidden_size, num_heads=None):
        super().__init__(input_size, hidden_size)
        if num_heads is None:
            num_heads = 4 if hidden_size % 4 == 0 else 1
        checks.positive_int("num_heads", num_heads)
        if hidden_size % num_heads:
            raise ValueError(f"num_heads must divide hidden_size={hidden_size}, got {num_heads}")
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(num_heads, 4 * self.head_dim, self.head_dim))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        uniform_init_(self, hidden_size)
        with torch.no_grad():
            self.bias[hidden_size:2 * hidden_size] = torch.linspace(3.0, 6.0, hidden_size)
        self.state_sizes = (hidden_size,) * 4

    def recurrent_matrix(self) -> torch.Tensor:
        """The block-diagonal R as one dense (4H, H) matrix, rows gate-major (i, f, z, o),
        so that a step is a single matrix product."""
        K, dh, H = self.num_heads, self.head_dim, self.hidden_size
        blocks = torch.block_diag(*self.weight_hh.unbind(0))  # (K*4*dh, H), head-major rows
        return blocks.view(K, 4, dh, H).transpose(0, 1).reshape(4 * H, H)

    def project(self, x):
        return affine(x, self.weight_ih, self.bias)

    def weights(self, batch_size):
        """R, built once per sequence, as a `RecurrentMatrix`."""
        return (RecurrentMatrix(self.recurrent_matrix()),)

    def transition(self, parts, state, w):
        h, c, n, m = state
        i, f, z, o = w[0](h, parts[0]).chunk(4, -1)
        log_f = nn.functional.logsigmoid(f) + m
        m_new = torch.maximum(log_f, i)
        i, f = torch.exp(i - m_new), torch.exp(log_f - m_new)
        c = f * c + i * torch.tanh(z)
        n = f * n + i
        return torch.sigmoid(o) * c / n, c, n, m_new

    def fused(self, x, state):
        """The loop with its hand-written backward (`manual_loop`); inside
        `ops.backend.force("triton")` the whole sequence in one Triton launch
        (`ops.triton.rnn.slstm_sequence`). The kernel is not the default on CUDA: on an H200
        at B=8, T=2048, d_model=512 it took 2931 ms fwd+bwd against the loop's 1198 ms
        (benchmarks/gpu.py, 2026-11-30): one program holds all hidden units, so the GPU runs
        one block per 16 batch rows."""
        if x.dtype != torch.float64 and backend.use_triton(x, *state, auto=False):
            from functools import partial

            from rnnzoo.cells.manual import manual_plain
            from rnnzoo.ops.triton.rnn import slstm_sequence
            return slstm_sequence(self.project(x), self.weight_hh, *state,
                                  plain=partial(manual_plain, self))
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.recurrent_matrix(),), ()

    def manual_step(self, xp_t, state, wt, vectors):
        (h, c, n, m), H = state, self.hidden_size
        a = torch.addmm(xp_t, h, wt[0])
        a_i, a_f = a[:, :H], a[:, H:2 * H]
        log_sig, buffer = torch.ops.aten.log_sigmoid_forward(a_f)
        log_f = log_sig + m
        m_new = torch.maximum(log_f, a_i)
        i, f = torch.exp(a_i - m_new), torch.exp(log_f - m_new)
        tz, o = torch.tanh(a[:, 2 * H:3 * H]), torch.sigmoid(a[:, 3 * H:])
        c_new, n_new = torch.addcmul(f * c, i, tz), torch.add(f * n, i)
        q = c_new / n_new
        return (o * q, c_new, n_new, m_new), None, (h,), \
            (a_i, a_f, buffer, log_f, i, f, tz, o, c, n, n_new, q)

    def manual_native(self):
        """The same step in C (ops/native/slstm.c; R's blocks only)."""
        return NativeStep("slstm", "slstm", 11 * self.hidden_size, (self.num_heads,))

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dc, dn, dm) = d_state
        a_i, a_f, buffer, log_f, i, f, tz, o, c, n, n_new, q = saved
        d_ao = sigmoid_back(dh * q, o)
        dq = (dh * o) / n_new
        dc_new, dn_new = dc + dq, dn - dq * q
        d_i = i * torch.addcmul(dn_new, dc_new, tz)        # through exp(a_i - m_new)
        d_f = f * torch.addcmul(dn_new * n, dc_new, c)     # through exp(log_f - m_new)
        d_m = dm - d_i - d_f
        # m_new = max(log_f, a_i): as autograd's maximum, a tie splits the gradient in half
        to_f = torch.where(log_f == a_i, 0.5, (log_f > a_i).to(a_i.dtype))
        d_logf = torch.addcmul(d_f, d_m, to_f)
        da = torch.cat([torch.addcmul(d_i, d_m, 1.0 - to_f),
                        torch.ops.aten.log_sigmoid_backward(d_logf, a_f, buffer),
                        tanh_back(dc_new * i, tz), d_ao], 1)
        return da, (da @ matrices[0], dc_new * f, dn_new * f, d_logf), (da,), ()
