"""Bistable recurrent cells (Vecoven, Ernst & Drion 2021, "A bio-inspired
bistable recurrent cell allows for long-lasting memory", PLoS ONE 16(6):
e0252676, arXiv:2006.05252).

BRC (eq. 4), each neuron's feedback is its own (w_a, w_c are vectors):

    a_t = 1 + tanh(U_a x_t + w_a * h_{t-1})
    c_t = sigmoid(U_c x_t + w_c * h_{t-1})
    h_t = c_t * h_{t-1} + (1 - c_t) * tanh(U x_t + a_t * h_{t-1})

nBRC (eq. 5) replaces w_a * h and w_c * h by full matrices W_a h, W_c h.
With a_t > 1 a neuron is bistable: h = tanh(a h) has two stable fixed points.

Layouts as torchrecurrent: weight_ih (3*hidden, input) stacks [U_a; U_c; U],
bias_ih (3*hidden) likewise; weight_hh is [w_a; w_c] (2*hidden) for BRC and
[W_a; W_c] (2*hidden, hidden) for nBRC; bias_hh (2*hidden) is added to a and c.
Initialisation as the authors' code: Glorot-uniform U blocks and W_a, W_c,
w_a = w_c = 1, biases 0.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.tr_a_base import linear, maybe_bias

PAPER = "Vecoven, Ernst & Drion 2021, PLoS ONE 16(6):e0252676, arXiv:2006.05252"


class _Bistable(Cell):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(self._weight_hh_shape()))
        self.bias_ih = maybe_bias(3 * H, bias)
        self.bias_hh = maybe_bias(2 * H, bias)
        for block in self.weight_ih.data.chunk(3):
            nn.init.xavier_uniform_(block)

    def project(self, x):
        xp = linear(x, self.weight_ih, self.bias_ih)
        if self.bias_hh is None:
            return xp
        H = self.hidden_size
        return torch.cat([xp[..., :2 * H] + self.bias_hh, xp[..., 2 * H:]], -1)

    def _update(self, gates, xh_t, h):
        """gates (B, 2, H): pre-activations of a and c; xh_t = U x_t (B, H)."""
        a_pre, c_pre = gates.unbind(-2)
        cand = torch.tanh(torch.addcmul(xh_t + h, torch.tanh(a_pre), h))  # a h = h + tanh(.) h
        return (torch.lerp(cand, h, torch.sigmoid(c_pre)),)


@cell("br", paper=PAPER, tiny={"hidden_size": 5})
class BR(_Bistable):
    """Bistable recurrent cell (BRC): a_t, c_t see only each neuron's own h_{t-1}.
    State: h (B, hidden_size). d h_t / d h_{t-1} is diagonal."""

    jacobian_structure = "diag"

    def _weight_hh_shape(self):
        return (2 * self.hidden_size,)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        nn.init.ones_(self.weight_hh)

    def recur(self, xp_t, state):
        h = state[0]
        H = self.hidden_size
        gates = torch.addcmul(xp_t[..., :2 * H].unflatten(-1, (2, H)),
                              self.weight_hh.view(2, H), h.unsqueeze(-2))
        return self._update(gates, xp_t[..., 2 * H:], h)


@cell("nbr", paper=PAPER, tiny={"hidden_size": 5})
class NBR(_Bistable):
    """Neuromodulated bistable recurrent cell (nBRC): a_t, c_t see the whole h_{t-1}
    through W_a, W_c (one matrix product per step). State: h (B, hidden_size)."""

    def _weight_hh_shape(self):
        return (2 * self.hidden_size, self.hidden_size)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        for block in self.weight_hh.data.chunk(2):
            nn.init.xavier_uniform_(block)

    def recur(self, xp_t, state):
        h = state[0]
        H = self.hidden_size
        gates = torch.addmm(xp_t[..., :2 * H], h, self.weight_hh.T)
        return self._update(gates.unflatten(-1, (2, H)), xp_t[..., 2 * H:], h)
