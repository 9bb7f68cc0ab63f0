"""Recurrent Additive Network (Lee, Levy & Zettlemoyer 2017, "Recurrent Additive
Networks", arXiv:1705.07393): the content layer is a linear map of the input
alone, and the state is a gated sum of contents:

    c~_t = W_cx x_t
    i_t  = sigmoid(W_ih h_{t-1} + W_ix x_t + b_i)
    f_t  = sigmoid(W_fh h_{t-1} + W_fx x_t + b_f)
    c_t  = i_t * c~_t + f_t * c_{t-1}
    h_t  = g(c_t),   g = tanh (`nonlinearity="tanh"`) or the identity ("identity")

State (h, c). Parameters weight_ih (3H, I) rows [c~; i; f], weight_hh (2H, H) rows
[i; f], bias_ih, bias_hh (2H,). Glorot-uniform weights, zero biases. With g the
identity the gates still read h = c, so d c_t / d c_{t-1} is dense.

`fused` is the loop with a hand-written backward (cells/manual.py; in C, ops/native/
simple_gated.c): with dc~ the gradient at c_t (dc_t + g'(c_t) dh_t),

    d a_i = dc~ c~_t i (1 - i),  d a_f = dc~ c_{t-1} f (1 - f),  d c~_t = dc~ i,
    dc_{t-1} = dc~ f,  dh_{t-1} = [d a_i, d a_f] W_h    (W_h = weight_hh)
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.manual import manual_loop, sigmoid_back, tanh_back
from rnnzoo.cells.parts import activation, add_bias, affine, bias_param, glorot_init_
from rnnzoo.ops.native.cells import NativeStep


@cell("ran", paper="Lee, Levy & Zettlemoyer 2017, arXiv:1705.07393")
class RAN(Cell):
    """RAN (see the module docstring). State: (h, c), each (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh"):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size, hidden_size)
        self.nonlinearity = nonlinearity
        self.g = activation("nonlinearity", nonlinearity, ("tanh", "identity"))
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(2 * H, H))
        self.bias_ih = bias_param(2 * H, bias)
        self.bias_hh = bias_param(2 * H, bias)
        glorot_init_(self)

    def project(self, x):
        H = self.hidden_size
        xp = affine(x, self.weight_ih)
        return torch.cat([xp[..., :H], add_bias(xp[..., H:], self.bias_ih, self.bias_hh)], -1)

    def pieces(self):
        return (self.hidden_size, 2 * self.hidden_size)

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        (content, gates_x), (h, c) = parts, state
        i, f = torch.sigmoid(torch.addmm(gates_x, h, w[0])).chunk(2, 1)
        c = torch.addcmul(f * c, i, content)
        return self.g(c), c

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh,), ()

    def manual_native(self):
        """The same step in C (ops/native/simple_gated.c); ints: [g is tanh]."""
        return NativeStep("simple_gated", "ran", 5 * self.hidden_size,
                          (int(self.nonlinearity == "tanh"),))

    def manual_step(self, xp_t, state, wt, vectors):
        (h, c), H = state, self.hidden_size
        content = xp_t[:, :H]
        gates = torch.sigmoid(torch.addmm(xp_t[:, H:], h, wt[0]))
        c_new = torch.addcmul(gates[:, H:] * c, gates[:, :H], content)
        h_new = self.g(c_new)
        return (h_new, c_new), None, (h,), (gates, content, c, h_new)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dc), (gates, content, c, h_new) = d_state, saved
        H = self.hidden_size
        dct = dc + (tanh_back(dh, h_new) if self.nonlinearity == "tanh" else dh)
        d_a = sigmoid_back(torch.cat([dct * content, dct * c], 1), gates)
        return torch.cat([dct * gates[:, :H], d_a], 1), (d_a @ matrices[0], dct * gates[:, H:]), \
            (d_a,), ()
