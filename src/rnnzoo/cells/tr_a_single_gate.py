"""Cells with one or two gates and a single state h (B, hidden_size).

Parameters are PyTorch-style: `weight_ih` stacks the input maps of the gates in
the order the docstring lists them, `weight_hh` the recurrent maps, `bias_ih`
and `bias_hh` likewise (the layouts of torchrecurrent 0.2.5, so weights copy
across by name). Each step does one matrix product on h (MGU: two, its
candidate reads the gated state); everything that depends on x only (tanh
candidates of LightRU, MinimalRNN's latent z and its gate input) is computed
for all steps at once in `project`.

Unless a docstring says otherwise the initialisation is torch.nn.RNN's,
U(-1/sqrt(hidden), 1/sqrt(hidden)), the papers giving none.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_a_base import HoistedCell, activation, linear, maybe_bias, uniform_


class _GatedCell(HoistedCell):
    """weight_ih (n_ih * H, I), weight_hh (n_hh * H, H), bias_ih, bias_hh.
    `recurrent_weights` gives W_hh^T (H, n_hh * H) once per sequence."""

    n_ih = 1
    n_hh = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(self.n_ih * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(self.n_hh * H, H))
        self.bias_ih = maybe_bias(self.n_ih * H, bias)
        self.bias_hh = maybe_bias(self.n_hh * H, bias)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if p is not None:
                uniform_(p, H)

    def project(self, x):
        return linear(x, self.weight_ih, self.bias_ih, self.bias_hh)

    def recurrent_weights(self, batch_size):
        return (self.weight_hh.T,)


@cell("atr", paper="Zhang, Xiong, Su, Lin & Zhang 2018, EMNLP, arXiv:1810.12546",
      tiny={"hidden_size": 5})
class ATR(_GatedCell):
    """Addition-subtraction twin-gated recurrent unit (Zhang et al. 2018):

        p_t = W_ih x_t + b_ih,   q_t = W_hh h_{t-1} + b_hh
        i_t = sigmoid(p_t + q_t),   f_t = sigmoid(p_t - q_t)
        h_t = i_t * p_t + f_t * h_{t-1}

    Both gates come from one product: [p_t + b_hh, p_t - b_hh] + h_{t-1} [U; -U]^T.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.xp_sizes = (2 * hidden_size, hidden_size)

    def project(self, x):
        """(..., I) -> (..., 3H): p + b_hh, p - b_hh, p."""
        p = linear(x, self.weight_ih, self.bias_ih)
        if self.bias_hh is None:
            return torch.cat([p, p, p], -1)
        return torch.cat([p + self.bias_hh, p - self.bias_hh, p], -1)

    def recurrent_weights(self, batch_size):
        u = self.weight_hh
        return (torch.cat([u, -u]).T,)

    def recur_with(self, xp_parts, state, w):
        h = state[0]
        pm, p = xp_parts
        i, f = torch.sigmoid(torch.addmm(pm, h, w[0])).chunk(2, -1)
        return (torch.addcmul(i * p, f, h),)


@cell("cfn", paper="Laurent & von Brecht 2017, ICLR, arXiv:1612.06212", tiny={"hidden_size": 5})
class CFN(_GatedCell):
    """Chaos-free network (Laurent & von Brecht 2017):

        theta_t = sigmoid(U_theta h_{t-1} + V_theta x_t + b_theta)
        eta_t   = sigmoid(U_eta h_{t-1} + V_eta x_t + b_eta)
        h_t     = theta_t * tanh(h_{t-1}) + eta_t * tanh(W x_t + b)

    weight_ih = [V_theta; V_eta; W] (3H, I), weight_hh = [U_theta; U_eta] (2H, H).
    Without input the state decays monotonically to 0: no chaos.
    """

    n_ih, n_hh = 3, 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.xp_sizes = (2 * hidden_size, hidden_size)

    def project(self, x):
        H = self.hidden_size
        xp = linear(x, self.weight_ih, self.bias_ih)
        gates = xp[..., :2 * H] if self.bias_hh is None else xp[..., :2 * H] + self.bias_hh
        return torch.cat([gates, torch.tanh(xp[..., 2 * H:])], -1)

    def recur_with(self, xp_parts, state, w):
        h = state[0]
        gates, cand = xp_parts
        theta, eta = torch.sigmoid(torch.addmm(gates, h, w[0])).chunk(2, -1)
        return (torch.addcmul(theta * torch.tanh(h), eta, cand),)


@cell("ligru", paper="Ravanelli, Brakel, Omologo & Bengio 2018, arXiv:1803.10225",
      tiny={"hidden_size": 5})
class LiGRU(_GatedCell):
    """Light GRU (Ravanelli et al. 2018): a GRU without reset gate, ReLU candidate.

        z_t = sigmoid(W_z x_t + U_z h_{t-1} + b_z)
        c_t = relu(W_h x_t + U_h h_{t-1} + b_h)
        h_t = z_t * h_{t-1} + (1 - z_t) * c_t

    weight_ih = [W_z; W_h], weight_hh = [U_z; U_h]. The paper batch-normalises
    W_h x_t over the mini-batch; a per-batch statistic would make a streamed
    step differ from the whole sequence, so it is left to the surrounding model.
    Init: Glorot input maps, orthogonal recurrent maps (as SpeechBrain's Li-GRU), zero biases.
    """

    n_ih = n_hh = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "relu"):
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity
        self._phi = activation("nonlinearity", nonlinearity, ("relu", "tanh"))
        for w, init in ((self.weight_ih, nn.init.xavier_uniform_),
                        (self.weight_hh, nn.init.orthogonal_)):
            for block in w.data.chunk(2):
                init(block)
        for b in (self.bias_ih, self.bias_hh):
            if b is not None:
                nn.init.zeros_(b)

    def recur_with(self, xp_parts, state, w):
        h = state[0]
        z, c = torch.addmm(xp_parts[0], h, w[0]).chunk(2, -1)
        return (torch.lerp(self._phi(c), h, torch.sigmoid(z)),)


@cell("lightru", paper="Ye et al. 2024, Electronics 13(16):3204, doi:10.3390/electronics13163204",
      tiny={"hidden_size": 5})
class LightRU(_GatedCell):
    """Light recurrent unit (Ye et al. 2024): the candidate sees the input only.

        c_t = tanh(W_c x_t + b_c)
        f_t = sigmoid(W_f x_t + U_f h_{t-1} + b_f)
        h_t = (1 - f_t) * h_{t-1} + f_t * c_t

    weight_ih = [W_c; W_f] (2H, I), weight_hh = U_f (H, H); bias_hh goes to f.
    """

    n_ih = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.xp_sizes = (hidden_size, hidden_size)

    def project(self, x):
        H = self.hidden_size
        xp = linear(x, self.weight_ih, self.bias_ih)
        f = xp[..., H:] if self.bias_hh is None else xp[..., H:] + self.bias_hh
        return torch.cat([torch.tanh(xp[..., :H]), f], -1)

    def recur_with(self, xp_parts, state, w):
        h = state[0]
        cand, f = xp_parts
        return (torch.lerp(h, cand, torch.sigmoid(torch.addmm(f, h, w[0]))),)


@cell("mgu", paper="Zhou, Wu, Zhang & Zhou 2016, arXiv:1603.09420", tiny={"hidden_size": 5})
class MGU(_GatedCell):
    """Minimal gated unit (Zhou et al. 2016): one forget gate.

        f_t = sigmoid(W_f x_t + U_f h_{t-1} + b_f)
        c_t = tanh(W_h x_t + U_h (f_t * h_{t-1}) + b_h)
        h_t = (1 - f_t) * h_{t-1} + f_t * c_t

    weight_ih = [W_f; W_h], weight_hh = [U_f; U_h]. The candidate reads the gated
    state, so a step needs two matrix products.
    """

    n_ih = n_hh = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.xp_sizes = (hidden_size, hidden_size)

    def recurrent_weights(self, batch_size):
        """U_f^T, U_h^T."""
        return tuple(u.T for u in self.weight_hh.chunk(2))

    def recur_with(self, xp_parts, state, w):
        h = state[0]
        x_f, x_h = xp_parts
        f = torch.sigmoid(torch.addmm(x_f, h, w[0]))
        return (torch.lerp(h, torch.tanh(torch.addmm(x_h, f * h, w[1])), f),)


@cell("minimal_rnn", paper="Chen 2017, arXiv:1711.06788", tiny={"hidden_size": 5})
class MinimalRNN(_GatedCell):
    """MinimalRNN (Chen 2017): the input is mapped to a latent z_t, then one gate.

        z_t = tanh(W_ih x_t + b_ih)
        u_t = sigmoid(W_hh h_{t-1} + W_mm z_t + b_hh)
        h_t = u_t * h_{t-1} + (1 - u_t) * z_t

    z_t and W_mm z_t + b_hh depend on the input only: `project` computes both.
    Init (our choice, the paper gives none): Glorot W_ih, orthogonal W_hh and
    W_mm, zero biases.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.weight_mm = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.xp_sizes = (hidden_size, hidden_size)
        nn.init.xavier_uniform_(self.weight_ih)
        nn.init.orthogonal_(self.weight_hh)
        nn.init.orthogonal_(self.weight_mm)
        for b in (self.bias_ih, self.bias_hh):
            if b is not None:
                nn.init.zeros_(b)

    def project(self, x):
        z = torch.tanh(linear(x, self.weight_ih, self.bias_ih))
        return torch.cat([z, linear(z, self.weight_mm, self.bias_hh)], -1)

    def recur_with(self, xp_parts, state, w):
        h = state[0]
        z, u = xp_parts
        return (torch.lerp(z, h, torch.sigmoid(torch.addmm(u, h, w[0]))),)
