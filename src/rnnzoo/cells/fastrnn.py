"""FastRNN and FastGRNN (Kusupati, Singh, Bhatia, Kumar, Jain & Varma 2018,
"FastGRNN: A Fast, Accurate, Stable and Tiny Kilobyte Sized Gated Recurrent
Neural Network", NeurIPS 2018, arXiv:1901.02358).

FastRNN adds a weighted residual connection to an Elman step:

    h~_t = phi(W x_t + U h_{t-1} + b)
    h_t  = alpha * h~_t + beta * h_{t-1},     alpha = sigmoid(a), beta = sigmoid(b')

FastGRNN makes it a gate that reuses W and U:

    z_t  = sigmoid(W x_t + U h_{t-1} + b_z)
    h~_t = tanh(W x_t + U h_{t-1} + b_h)
    h_t  = (zeta * (1 - z_t) + nu) * h~_t + z_t * h_{t-1},   zeta = sigmoid(z'), nu = sigmoid(n')

alpha, beta, zeta, nu are trainable scalars kept in (0, 1) through a sigmoid,
as the authors' EdgeML code; their initial raw values are EdgeML's
(alpha_init=-3, beta_init=3: alpha ~ 0.05, beta ~ 0.95; zeta_init=1, nu_init=-4),
as are W, U ~ N(0, 0.1^2) and the input biases set to 1. (torchrecurrent 0.2.5
starts from alpha_init=3, beta_init=-3, and gates FastGRNN with tanh by default.)
One matrix product per step; sigmoid(alpha) etc. are computed once per sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.manual import manual_loop, relu_back, sigmoid_back, tanh_back
from rnnzoo.cells.parts import activation, affine, bias_param
from rnnzoo.ops.native.cells import NativeStep

PAPER = "Kusupati et al. 2018, NeurIPS, arXiv:1901.02358"
_BACK = {"sigmoid": sigmoid_back, "tanh": tanh_back, "relu": relu_back}  # from the output
_KIND = {"sigmoid": 0, "tanh": 1, "relu": 2}  # the C step's (ops/native/plain_cells.c)


def _scalar(value: float, arg: str) -> nn.Parameter:
    return nn.Parameter(torch.full((1,), checks.real(arg, value)))


class _Fast(Cell):
    n_bias = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.randn(H, input_size) * 0.1)
        self.weight_hh = nn.Parameter(torch.randn(H, H) * 0.1)
        self.bias_ih = bias_param(self.n_bias * H, bias)
        self.bias_hh = bias_param(self.n_bias * H, bias)
        if self.bias_ih is not None:
            nn.init.ones_(self.bias_ih)


@cell("fastrnn", paper=PAPER, tiny={"hidden_size": 5})
class FastRNN(_Fast):
    """h_t = sigmoid(alpha) * phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) + sigmoid(beta) * h_{t-1}.

    Options: nonlinearity phi ("tanh", "sigmoid" or "relu"), alpha_init, beta_init
    (raw values before the sigmoid). State: h (B, hidden_size).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", alpha_init: float = -3.0, beta_init: float = 3.0):
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity
        self._phi = activation("nonlinearity", nonlinearity, ("tanh", "sigmoid", "relu"))
        self.alpha = _scalar(alpha_init, "alpha_init")
        self.beta = _scalar(beta_init, "beta_init")

    def project(self, x):
        return affine(x, self.weight_ih, self.bias_ih, self.bias_hh)

    def weights(self, batch_size):
        shape = (batch_size, self.hidden_size)
        return (torch.sigmoid(self.alpha).expand(shape), torch.sigmoid(self.beta).expand(shape),
                self.weight_hh.T)

    def transition(self, parts, state, w):
        h = state[0]
        alpha, beta, u = w
        cand = self._phi(torch.addmm(parts[0], h, u))
        return (torch.addcmul(beta * h, alpha, cand),)


@cell("fastgrnn", paper=PAPER, tiny={"hidden_size": 5})
class FastGRNN(_Fast):
    """z_t = sigma_g(W_ih x_t + W_hh h_{t-1} + b_z),  h~_t = sigma_u(W_ih x_t + W_hh h_{t-1} + b_h),
    h_t = (sigmoid(zeta) (1 - z_t) + sigmoid(nu)) h~_t + z_t h_{t-1}.

    bias_ih, bias_hh (2*hidden) are [b_z; b_h] (summed). Options: gate_nonlinearity
    sigma_g ("sigmoid", the paper's), update_nonlinearity sigma_u ("tanh"),
    zeta_init, nu_init. State: h (B, hidden_size).
    """

    n_bias = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 gate_nonlinearity: str = "sigmoid", update_nonlinearity: str = "tanh",
                 zeta_init: float = 1.0, nu_init: float = -4.0):
        super().__init__(input_size, hidden_size, bias)
        allowed = ("sigmoid", "tanh", "relu")
        self.gate_nonlinearity, self.update_nonlinearity = gate_nonlinearity, update_nonlinearity
        self._gate = activation("gate_nonlinearity", gate_nonlinearity, allowed)
        self._update = activation("update_nonlinearity", update_nonlinearity, allowed)
        self.zeta = _scalar(zeta_init, "zeta_init")
        self.nu = _scalar(nu_init, "nu_init")

    def project(self, x):
        """(..., I) -> (..., 2H): W x + b_z, W x + b_h."""
        xp = affine(x, self.weight_ih)
        biases = [b for b in (self.bias_ih, self.bias_hh) if b is not None]
        xp = torch.cat([xp, xp], -1)
        return xp + sum(biases[1:], biases[0]) if biases else xp

    def weights(self, batch_size):
        """[U; U]^T (H, 2H): z and h~ share U h in one product; zeta, zeta + nu as (B, H)."""
        shape = (batch_size, self.hidden_size)
        zeta, nu = torch.sigmoid(self.zeta), torch.sigmoid(self.nu)
        u = self.weight_hh
        return torch.cat([u, u]).T, zeta.expand(shape), (zeta + nu).expand(shape)

    def transition(self, parts, state, w):
        h = state[0]
        uu, zeta, zeta_nu = w
        z, cand = torch.addmm(parts[0], h, uu).chunk(2, -1)
        z, cand = self._gate(z), self._update(cand)
        # (zeta (1 - z) + nu) h~ + z h  =  (zeta + nu) h~ + z (h - zeta h~)
        return (torch.addcmul(zeta_nu * cand, z, torch.addcmul(h, zeta, cand, value=-1)),)

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        """The loop with its hand-written backward; the step multiplies h by U once (the
        reference by [U; U]): q = h U^T, z = sigma_g(xp_z + q), n = sigma_u(xp_h + q),
        h' = (zeta + nu) n + z (h - zeta n). With d = dh_t: d a_z = d (h - zeta n) sigma_g',
        d a_n = d (zeta + nu - zeta z) sigma_u', dh_{t-1} = d z + (d a_z + d a_n) U,
        d zeta = -sum d z n, d (zeta + nu) = sum d n."""
        return manual_loop(self, x, state)

    def manual_params(self):
        """U; sigmoid(zeta), sigmoid(zeta) + sigmoid(nu), one value each."""
        zeta = torch.sigmoid(self.zeta)
        return (self.weight_hh,), (zeta, zeta + torch.sigmoid(self.nu))

    def manual_native(self):
        """The same step in C (ops/native/plain_cells.c)."""
        return NativeStep("plain_cells", "fastg", 3 * self.hidden_size,
                          ints=(_KIND[self.gate_nonlinearity], _KIND[self.update_nonlinearity]))

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        zeta, zeta_nu = vectors
        q = h @ wt[0]
        z, n = self._gate(xp_t[:, :H] + q), self._update(xp_t[:, H:] + q)
        return (torch.addcmul(zeta_nu * n, z, torch.addcmul(h, zeta, n, value=-1)),), None, \
            (h,), (h, z, n)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, z, n) = d_state, saved
        zeta, zeta_nu = vectors
        d_z = _BACK[self.gate_nonlinearity](dh * torch.addcmul(h, zeta, n, value=-1), z)
        d_n = _BACK[self.update_nonlinearity](dh * torch.addcmul(zeta_nu, zeta, z, value=-1), n)
        g = d_z + d_n
        return torch.cat([d_z, d_n], 1), (torch.addmm(dh * z, g, matrices[0]),), (g,), \
            (-(dh * z * n), dh * n)
