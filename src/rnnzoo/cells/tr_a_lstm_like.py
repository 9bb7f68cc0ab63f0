"""LSTM relatives with fewer or extra gates: JANET and the memory-controller LSTM.

Layouts as torchrecurrent 0.2.5 (`weight_ih`, `weight_hh`, `bias_ih`,
`bias_hh` stack the gates in the order listed), so weights copy across by name.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_a_base import HoistedCell, check_positive, linear, maybe_bias, uniform_


class _Stacked(HoistedCell):
    gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        n = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(n, input_size))
        self.weight_hh = nn.Parameter(torch.empty(n, hidden_size))
        self.bias_ih = maybe_bias(n, bias)
        self.bias_hh = maybe_bias(n, bias)

    def project(self, x):
        return linear(x, self.weight_ih, self.bias_ih, self.bias_hh)

    def recurrent_weights(self, batch_size):
        return (self.weight_hh.T,)


@cell("janet", paper="van der Westhuizen & Lasenby 2018, arXiv:1804.04849",
      tiny={"hidden_size": 5})
class JANET(_Stacked):
    """JANET, "just another network" (van der Westhuizen & Lasenby 2018): an LSTM
    with the forget gate only, the input gate tied to it through a shift beta.

        s_t = U_f h_{t-1} + W_f x_t + b_f
        c~_t = tanh(U_c h_{t-1} + W_c x_t + b_c)
        c_t = sigmoid(s_t) * c_{t-1} + (1 - sigmoid(s_t - beta)) * c~_t
        h_t = c_t

    weight_ih = [W_f; W_c], weight_hh = [U_f; U_c]. beta is a fixed
    hyperparameter (1 in the paper; torchrecurrent 0.2.5 trains it). Init: the
    paper's chrono initialiser for the forget bias, b_f = log(U(1, t_max - 1))
    (t_max: the longest dependency expected), other biases 0, Glorot-uniform W,
    orthogonal U. State: h = c (B, hidden_size).
    """

    gates = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 beta: float = 1.0, t_max: float = 100.0):
        super().__init__(input_size, hidden_size, bias)
        self.beta = check_positive("beta", beta, allow_zero=True)
        t_max = check_positive("t_max", t_max)
        if t_max <= 2:
            raise ValueError(f"t_max must be > 2 (chrono init draws from U(1, t_max - 1)), "
                             f"got {t_max!r}")
        for block in self.weight_ih.data.chunk(2):
            nn.init.xavier_uniform_(block)
        for block in self.weight_hh.data.chunk(2):
            nn.init.orthogonal_(block)
        if self.bias_ih is not None:
            nn.init.zeros_(self.bias_ih)
            nn.init.zeros_(self.bias_hh)
            with torch.no_grad():
                self.bias_ih[:hidden_size].uniform_(1, t_max - 1).log_()

    def recur_with(self, xp_parts, state, w):
        c = state[0]
        s, cand = torch.addmm(xp_parts[0], c, w[0]).chunk(2, -1)
        keep = torch.sigmoid(self.beta - s)  # 1 - sigmoid(s - beta)
        return (torch.addcmul(torch.sigmoid(s) * c, keep, torch.tanh(cand)),)


@cell("mclstm", paper="memory-controller LSTM, NIPS 2017 Time Series Workshop (Intel AI)",
      tiny={"hidden_size": 5})
class MCLSTM(_Stacked):
    """Memory-controller LSTM: the gates read a control vector v_{t-1}, not the output h.

        f, i, o, m = sigmoid(W_ih^{f,i,o,m} x_t + W_hh^{f,i,o,m} v_{t-1} + b)
        n_t = tanh(W_ih^n x_t + W_hh^n v_{t-1} + b_n)
        c_t = f * c_{t-1} + i * n_t
        h_t = o * tanh(c_t)         (the output)
        v_t = m * tanh(c_t)         (what the next step reads)

    weight_ih = [W_f; W_i; W_o; W_m; W_n] (5H, I), weight_hh likewise (5H, H).
    Init: torch.nn.LSTM's U(+-1/sqrt(hidden)). State: (h, v, c), output h; h is
    carried only to be returned (the next step reads v and c).
    """

    gates = 5

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.state_sizes = (hidden_size,) * 3
        for p in self.parameters():
            uniform_(p, hidden_size)

    def recur_with(self, xp_parts, state, w):
        _, v, c = state
        H = self.hidden_size
        gates, n = torch.addmm(xp_parts[0], v, w[0]).split((4 * H, H), -1)
        f, i, o, m = torch.sigmoid(gates).chunk(4, -1)
        c = torch.addcmul(f * c, i, torch.tanh(n))
        squashed = torch.tanh(c)
        return o * squashed, m * squashed, c
