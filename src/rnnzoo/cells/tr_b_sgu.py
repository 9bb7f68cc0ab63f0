"""Simple Gated Unit and Deep Simple Gated Unit (Gao & Glowacka 2016, "Deep Gate
Recurrent Neural Network", ACML, arXiv:1604.02910). One gate z_t and a
multiplicative candidate built from the input-modulated state:

    x_g   = W_xh x_t + b_g
    z_g   = tanh(U_g (x_g * h_{t-1}) + b_zg)
    SGU:   z_out = softplus(z_g * h_{t-1})
    DSGU:  z_out = sigmoid(U_o (z_g * h_{t-1}))
    z_t   = hard_sigmoid(W_xz x_t + b_z + U_z h_{t-1})
    h_t   = (1 - z_t) * h_{t-1} + z_t * z_out

hard_sigmoid is torch's, relu6(x + 3) / 6, as in torchrecurrent (Theano's, used by
the paper's code, is clip(0.2 x + 0.5, 0, 1): the same shape with slope 0.2).

Parameters: weight_ih (2H, I) rows [W_xh; W_xz], bias_ih (2H,), weight_hh (2H, H)
rows [U_g; U_z], bias_hh (2H,); DSGU adds weight_ho (H, H) = U_o. Glorot-uniform
weights, zero biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_b_common import SplitCell, add_bias, bias_param, glorot_init_

PAPER = "Gao & Glowacka 2016, arXiv:1604.02910"


@cell("sgu", paper=PAPER)
class SGU(SplitCell):
    """SGU (see the module docstring). State: h (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(2 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(2 * H, H))
        self.bias_ih = bias_param(2 * H, bias)
        self.bias_hh = bias_param(2 * H, bias)
        glorot_init_(self)

    def project(self, x):
        H = self.hidden_size
        xp = add_bias(x @ self.weight_ih.T, self.bias_ih)
        b_z = None if self.bias_hh is None else self.bias_hh[H:]
        return torch.cat([xp[..., :H], add_bias(xp[..., H:], b_z)], -1)

    def pieces(self):
        return [self.hidden_size, self.hidden_size]

    def weights(self):
        """U_g, U_z, b_zg, and U_o (DSGU)."""
        b_g = None if self.bias_hh is None else self.bias_hh[:self.hidden_size]
        return (*self.weight_hh.T.split(self.hidden_size, 1), b_g, None)

    @staticmethod
    def _out(gated, w_o):
        return F.softplus(gated)

    def transition(self, parts, state, w):
        (x_g, x_z), h, (u_g, u_z, b_g, w_o) = parts, state[0], w
        pre = x_g * h @ u_g if b_g is None else torch.addmm(b_g, x_g * h, u_g)
        z_out = self._out(torch.tanh(pre) * h, w_o)
        z = F.hardsigmoid(torch.addmm(x_z, h, u_z))
        return (torch.addcmul(h, z, z_out - h),)


@cell("dsgu", paper=PAPER)
class DSGU(SGU):
    """DSGU: SGU whose candidate is sigmoid(U_o (z_g * h)). State: h (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.weight_ho = nn.Parameter(torch.empty(hidden_size, hidden_size))
        nn.init.xavier_uniform_(self.weight_ho)

    def weights(self):
        return super().weights()[:3] + (self.weight_ho.T,)

    @staticmethod
    def _out(gated, w_o):
        return torch.sigmoid(gated @ w_o)
