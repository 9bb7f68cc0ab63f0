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
small, uniform in [-0.1, 0.1] (torchrecurrent draws them from N(0, 1), which
saturates the gates as soon as |c| grows).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_b_common import SplitCell, add_bias, bias_param, glorot_init_


class _LSTMBase(SplitCell):
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

    def pieces(self):
        return [self.gates * self.hidden_size]

    def weights(self):
        return (self.weight_hh.T,)


@cell("original_lstm", paper="Hochreiter & Schmidhuber 1997, Neural Computation 9(8)")
class OriginalLSTM(_LSTMBase):
    """The 1997 LSTM, without forget gate (see the module docstring). State: (h, c)."""

    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        glorot_init_(self)

    def transition(self, parts, state, w):
        h, c = state
        i, g, o = torch.addmm(parts[0], h, w[0]).chunk(3, 1)
        c = torch.addcmul(c, torch.sigmoid(i), torch.tanh(g))
        return torch.sigmoid(o) * torch.tanh(c), c


class _Peephole(_LSTMBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.weight_ph = nn.Parameter(torch.empty(3 * hidden_size))
        glorot_init_(self)
        nn.init.uniform_(self.weight_ph, -0.1, 0.1)

    def weights(self):
        return (self.weight_hh.T, *self.weight_ph.chunk(3))

    @staticmethod
    def _cell(gates_x, h, c, w):
        """c_t and the output gate's pre-activation (peephole on c_t included)."""
        w_hh, p_i, p_f, p_o = w[:4]
        gi, gf, gc, go = torch.addmm(gates_x, h, w_hh).chunk(4, 1)
        i = torch.sigmoid(torch.addcmul(gi, c, p_i))
        f = torch.sigmoid(torch.addcmul(gf, c, p_f))
        c = torch.addcmul(f * c, i, torch.tanh(gc))
        return c, torch.addcmul(go, c, p_o)


@cell("peephole_lstm", paper="Gers & Schmidhuber 2000, IJCNN (Recurrent nets that time and count)")
class PeepholeLSTM(_Peephole):
    """LSTM with peephole connections from the cell to the gates. State: (h, c)."""

    def transition(self, parts, state, w):
        c, o = self._cell(parts[0], *state, w)
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

    def pieces(self):
        return [4 * self.hidden_size, self.hidden_size]

    def weights(self):
        return super().weights() + (self.weight_proj.T,)

    def transition(self, parts, state, w):
        gates_x, residual = parts
        c, o = self._cell(gates_x, *state, w)
        return torch.sigmoid(o) * torch.addmm(residual, torch.tanh(c), w[4]), c


@cell("multiplicative_lstm", paper="Krause et al. 2016, arXiv:1609.07959")
class MultiplicativeLSTM(SplitCell):
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

    def pieces(self):
        return [self.hidden_size, 4 * self.hidden_size]

    def weights(self):
        return self.weight_hh.T, self.weight_mh.T

    def transition(self, parts, state, w):
        (m_x, gates_x), (h, c), (w_hh, w_mh) = parts, state, w
        hh = h @ w_hh if self.bias_hh is None else torch.addmm(self.bias_hh, h, w_hh)
        i, f, g, o = torch.addmm(gates_x, m_x * hh, w_mh).chunk(4, 1)
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

    def weights(self):
        H = self.hidden_size
        v_if, v_o = self.weight_mh.T.split([2 * H, H], 1)
        b_if, b_o = (None, None) if self.bias_mh is None else self.bias_mh.split([2 * H, H])
        return self.weight_hh.T, v_if, v_o, b_if, b_o

    @staticmethod
    def _memory(c, v, b):
        """tanh(V c + b): the working-memory connection."""
        return torch.tanh(c @ v if b is None else torch.addmm(b, c, v))

    def transition(self, parts, state, w):
        (h, c), (w_hh, v_if, v_o, b_if, b_o) = state, w
        gi, gf, gc, go = torch.addmm(parts[0], h, w_hh).chunk(4, 1)
        mi, mf = self._memory(c, v_if, b_if).chunk(2, 1)
        i, f = torch.sigmoid(gi + mi), torch.sigmoid(gf + mf)
        c = torch.addcmul(f * c, i, torch.tanh(gc))
        o = torch.sigmoid(go + self._memory(c, v_o, b_o))
        return o * torch.tanh(c), c
