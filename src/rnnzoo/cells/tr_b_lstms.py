"""Five LSTM variants of the torchrecurrent catalogue. All keep the state (h, c).
i, f, o are input, forget, output gates; W_* act on x_t, U_* on h_{t-1}; every
pre-activation also carries b_ih + b_hh.

OriginalLSTM (Hochreiter & Schmidhuber 1997, Neural Computation 9(8)): no forget gate,
    c_t = c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t)
  (the 1997 squashings g(x) = 4 sigmoid(x) - 2 = 2 tanh(x/2) and h(x) = tanh(x/2) are
  rescaled tanh; we use tanh, as torchrecurrent and every later LSTM). Rows [i; g; o].

PeepholeLSTM (Gers & Schmidhuber 2000, "Recurrent nets that time and count", IJCNN):
    i = sigmoid(W_i x + U_i h + p_i * c_{t-1}),  f = sigmoid(W_f x + U_f h + p_f * c_{t-1})
    c_t = f * c_{t-1} + i * tanh(W_c x + U_c h),  o = sigmoid(W_o x + U_o h + p_o * c_t)
    h_t = o * tanh(c_t)
  Rows [i; f; c; o]; weight_ph (3H,) = [p_i; p_f; p_o].

ResLSTM (Kim, El-Khamy & Lee 2017, "Residual LSTM", arXiv:1701.03360): a peephole LSTM
whose output adds a projection of the cell to a shortcut of the input,
    h_t = o * (W_proj tanh(c_t) + W_res x_t).
  weight_proj (H, H), weight_res (H, I).

MultiplicativeLSTM (Krause et al. 2016, arXiv:1609.07959): the gates read an
input-dependent transition m_t of the state,
    m_t = (W_mx x_t) * (W_mh h_{t-1} + b_hh)
    [i, f, c~, o] = [W_ix, W_fx, W_cx, W_ox] x_t + W_m* m_t (+ biases)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(c~),  h_t = sigmoid(o) * tanh(c_t)
  weight_ih (5H, I) rows [m; i; f; c~; o], weight_hh (H, H) = W_mh, weight_mh (4H, H).

WMCLSTM (Landi et al. 2021, "Working Memory Connections for LSTM", arXiv:2109.00020):
the gates read the cell through a squashed learned map,
    i = sigmoid(W_i x + U_i h + tanh(V_i c_{t-1} + b)),  f likewise with V_f,
    c_t = f * c_{t-1} + i * tanh(W_c x + U_c h),  o = sigmoid(W_o x + U_o h + tanh(V_o c_t + b))
    h_t = o * tanh(c_t)
  weight_mh (3H, H) rows [V_i; V_f; V_o], bias_mh (3H,).

Initialisation: Glorot-uniform weight matrices, zero biases; peephole weights
uniform in [-0.1, 0.1] (Gers et al. 2002 initialise every weight in that range).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.tr_b_common import add_bias, bias_param, glorot_init_


class _LSTMBase(Cell):
    gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size, hidden_size)
        k = self.gates
        self.weight_ih = nn.Parameter(torch.empty(k * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(k * hidden_size, hidden_size))
        self.bias_ih = bias_param(k * hidden_size, bias)
        self.bias_hh = bias_param(k * hidden_size, bias)

    def project(self, x):
        return add_bias(x @ self.weight_ih.T, self.bias_ih, self.bias_hh)


@cell("original_lstm", paper="Hochreiter & Schmidhuber 1997, Neural Computation 9(8)")
class OriginalLSTM(_LSTMBase):
    """The 1997 LSTM, without forget gate (see the module docstring). State: (h, c)."""

    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        glorot_init_(self)

    def recur(self, xp_t, state):
        h, c = state
        i, g, o = torch.addmm(xp_t, h, self.weight_hh.T).chunk(3, 1)
        c = torch.addcmul(c, torch.sigmoid(i), torch.tanh(g))
        return torch.sigmoid(o) * torch.tanh(c), c


class _Peephole(_LSTMBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.weight_ph = nn.Parameter(torch.empty(3 * hidden_size))
        glorot_init_(self)
        nn.init.uniform_(self.weight_ph, -0.1, 0.1)

    def _cell(self, xp_t, h, c):
        """c_t and the output gate's pre-activation (peephole on c_t included)."""
        H = self.hidden_size
        g = torch.addmm(xp_t[:, :4 * H], h, self.weight_hh.T)
        p = self.weight_ph
        i = torch.sigmoid(torch.addcmul(g[:, :H], c, p[:H]))
        f = torch.sigmoid(torch.addcmul(g[:, H:2 * H], c, p[H:2 * H]))
        c = torch.addcmul(f * c, i, torch.tanh(g[:, 2 * H:3 * H]))
        return c, torch.addcmul(g[:, 3 * H:], c, p[2 * H:])


@cell("peephole_lstm", paper="Gers & Schmidhuber 2000, IJCNN (Recurrent nets that time and count)")
class PeepholeLSTM(_Peephole):
    """LSTM with peephole connections from the cell to the gates. State: (h, c)."""

    def recur(self, xp_t, state):
        c, o = self._cell(xp_t, *state)
        return torch.sigmoid(o) * torch.tanh(c), c


@cell("res_lstm", paper="Kim, El-Khamy & Lee 2017, arXiv:1701.03360")
class ResLSTM(_Peephole):
    """Residual LSTM: peephole LSTM with a projected cell plus an input shortcut.
    State: (h, c)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.weight_proj = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.weight_res = nn.Parameter(torch.empty(hidden_size, input_size))
        nn.init.xavier_uniform_(self.weight_proj)
        nn.init.xavier_uniform_(self.weight_res)

    def project(self, x):
        return torch.cat([super().project(x), x @ self.weight_res.T], -1)

    def recur(self, xp_t, state):
        c, o = self._cell(xp_t, *state)
        residual = xp_t[:, 4 * self.hidden_size:]
        return torch.sigmoid(o) * torch.addmm(residual, torch.tanh(c), self.weight_proj.T), c


@cell("multiplicative_lstm", paper="Krause et al. 2016, arXiv:1609.07959")
class MultiplicativeLSTM(Cell):
    """mLSTM: an LSTM whose gates read m_t = (W_mx x_t) * (W_mh h_{t-1}). State: (h, c)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(5 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.weight_mh = nn.Parameter(torch.empty(4 * H, H))
        self.bias_ih = bias_param(5 * H, bias)
        self.bias_hh = bias_param(H, bias)
        self.bias_mh = bias_param(4 * H, bias)
        glorot_init_(self)

    def project(self, x):
        H = self.hidden_size
        xp = add_bias(x @ self.weight_ih.T, self.bias_ih)
        return torch.cat([xp[..., :H], add_bias(xp[..., H:], self.bias_mh)], -1)

    def recur(self, xp_t, state):
        h, c = state
        H = self.hidden_size
        hh = h @ self.weight_hh.T if self.bias_hh is None else \
            torch.addmm(self.bias_hh, h, self.weight_hh.T)
        m = xp_t[:, :H] * hh
        i, f, g, o = torch.addmm(xp_t[:, H:], m, self.weight_mh.T).chunk(4, 1)
        c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
        return torch.sigmoid(o) * torch.tanh(c), c


@cell("wmclstm", paper="Landi et al. 2021, arXiv:2109.00020")
class WMCLSTM(_LSTMBase):
    """LSTM with working-memory connections tanh(V c) into the gates. State: (h, c)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.weight_mh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_mh = bias_param(3 * hidden_size, bias)
        glorot_init_(self)

    def _memory(self, c, rows):
        w = self.weight_mh[rows]
        return torch.tanh(c @ w.T if self.bias_mh is None else
                          torch.addmm(self.bias_mh[rows], c, w.T))

    def recur(self, xp_t, state):
        h, c = state
        H = self.hidden_size
        g = torch.addmm(xp_t, h, self.weight_hh.T)
        mem = self._memory(c, slice(0, 2 * H))
        i = torch.sigmoid(g[:, :H] + mem[:, :H])
        f = torch.sigmoid(g[:, H:2 * H] + mem[:, H:])
        c = torch.addcmul(f * c, i, torch.tanh(g[:, 2 * H:3 * H]))
        o = torch.sigmoid(g[:, 3 * H:] + self._memory(c, slice(2 * H, 3 * H)))
        return o * torch.tanh(c), c
