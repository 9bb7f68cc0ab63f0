"""Highway cells: the Recurrent Highway Network and the Intersection RNN.

Recurrent Highway Network (Zilly, Srivastava, Koutnik & Schmidhuber 2017,
"Recurrent Highway Networks", ICML, arXiv:1607.03474), eqs. 6-9.

Each time step is `depth` highway micro-steps; only the first sees the input:

    s_0 = h_{t-1}
    for l = 1..L:
        hh_l = tanh(W_H x_t [l = 1] + R_H,l s_{l-1} + b_H,l)
        t_l  = sigma(W_T x_t [l = 1] + R_T,l s_{l-1} + b_T,l)
        c_l  = sigma(W_C x_t [l = 1] + R_C,l s_{l-1} + b_C,l)   (coupled: c_l = 1 - t_l)
        s_l  = hh_l * t_l + s_{l-1} * c_l
    h_t = s_L

Parameters: weight_ih (G*H, input_size), weight_hh (depth, G*H, H), bias (depth, G*H),
gate order (H, T[, C]); G = 2 with the coupled carry gate (the paper's experiments,
section 5), 3 without. Weights start as torch.nn.RNN's; the transform-gate bias
starts at -2, so each micro-step starts close to the identity (carry), as the
paper recommends for deep highway transitions.

Intersection RNN (Collins, Sohl-Dickstein & Sussillo 2017, "Capacity and Trainability
in Recurrent Neural Networks", ICLR, arXiv:1611.09913): a highway-like output y_t
gates between the input and a ReLU candidate, beside the recurrent state h_t.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, RecurrentMatrix, cell
from rnnzoo.cells.manual import manual_loop, relu_back, sigmoid_back, tanh_back
from rnnzoo.cells.parts import affine, bias_param, uniform_init_
from rnnzoo.ops.native.cells import NativeStep


@cell("rhn", paper="Zilly et al. 2017, arXiv:1607.03474", tiny={"hidden_size": 5, "depth": 2})
class RHNCell(Cell):
    """Recurrent highway cell of recurrence depth `depth` (default 3). State h (B, H)."""

    def __init__(self, input_size, hidden_size, depth=3, coupled=True):
        super().__init__(input_size, hidden_size)
        self.depth = checks.positive_int("depth", depth)
        self.coupled = checks.flag("coupled", coupled)
        G = (2 if coupled else 3) * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(depth, G, hidden_size))
        self.bias = nn.Parameter(torch.empty(depth, G))
        uniform_init_(self, hidden_size)
        with torch.no_grad():
            self.bias[:, hidden_size:2 * hidden_size] = -2.0

    def project(self, x):
        """W x_t + b_1 (the first micro-step's input and bias), every step at once."""
        return affine(x, self.weight_ih, self.bias[0])

    def weights(self, batch_size):
        """R_1 as a `RecurrentMatrix`, then R_l^T and b_l of the later micro-steps."""
        first, *later = self.weight_hh.unbind(0)
        return RecurrentMatrix(first), tuple(r.T for r in later), self.bias.unbind(0)[1:]

    def fused(self, x, state):
        """The loop with its hand-written backward (`manual_loop`)."""
        return manual_loop(self, x, state)

    def manual_params(self):
        """R_1 .. R_L; b_2 .. b_L."""
        return self.weight_hh.unbind(0), self.bias.unbind(0)[1:]

    def manual_native(self):
        """The same step in C (ops/native/highway_cells.c), up to depth 8 (the C loop's
        limit on matrices; deeper cells run the Python loop)."""
        if self.depth > 8:
            return None
        G = self.weight_hh.shape[1]
        return NativeStep("highway_cells", "rhn", self.depth * (G + self.hidden_size),
                          (int(self.coupled),))

    def manual_step(self, xp_t, state, wt, vectors):
        s, H = state[0], self.hidden_size
        inputs, saved = [], []
        for layer in range(self.depth):
            pre = torch.addmm(xp_t if layer == 0 else vectors[layer - 1], s, wt[layer])
            hh, gates = torch.tanh(pre[:, :H]), torch.sigmoid(pre[:, H:])
            inputs.append(s)
            saved.append((s, hh, gates))
            t = gates[:, :H]
            s = torch.addcmul(s, t, hh - s) if self.coupled else \
                torch.addcmul(hh * t, s, gates[:, H:])
        return (s,), None, inputs, saved

    def manual_back(self, d_state, saved, matrices, vectors):
        ds, H = d_state[0], self.hidden_size
        gs = []
        for layer in range(self.depth - 1, -1, -1):
            s, hh, gates = saved[layer]
            t = gates[:, :H]
            d_hh = ds * t
            if self.coupled:
                d_gates, ds = ds * (hh - s), ds - d_hh
            else:
                d_gates = torch.cat([ds * hh, ds * s], 1)
                ds = ds * gates[:, H:]
            d_pre = torch.cat([tanh_back(d_hh, hh), sigmoid_back(d_gates, gates)], 1)
            ds = torch.addmm(ds, d_pre, matrices[layer])
            gs.append(d_pre)
        gs.reverse()
        return gs[0], (ds,), gs, gs[1:]

    def transition(self, parts, state, w):
        (mm, matrices, biases), s = w, state[0]
        H = self.hidden_size
        for layer in range(self.depth):
            pre = mm(s, parts[0]) if layer == 0 else torch.addmm(biases[layer - 1], s,
                                                                  matrices[layer - 1])
            hh, t = torch.tanh(pre[:, :H]), torch.sigmoid(pre[:, H:2 * H])
            if self.coupled:
                s = s + t * (hh - s)  # hh * t + s * (1 - t)
            else:
                s = hh * t + s * torch.sigmoid(pre[:, 2 * H:])
        return (s,)


@cell("intersection_rnn", paper="Collins, Sohl-Dickstein & Sussillo 2017, ICLR, arXiv:1611.09913", tiny={"hidden_size": 5})
class IntersectionRNN(Cell):
    """Intersection RNN: a highway-like output y_t beside the recurrent state h_t.

        d_t   = relu(W_d x_t + U_d h_{t-1} + b_d)            depth candidate
        r_t   = tanh(W_r x_t + U_r h_{t-1} + b_r)            recurrent candidate
        g^y_t = sigmoid(W_gy x_t + U_gy h_{t-1} + b_gy)
        g^h_t = sigmoid(W_gh x_t + U_gh h_{t-1} + b_gh)
        y_t   = g^y_t * x_t + (1 - g^y_t) * d_t
        h_t   = g^h_t * h_{t-1} + (1 - g^h_t) * r_t

    weight_ih = [W_d; W_r; W_gy; W_gh], weight_hh = [U_d; U_r; U_gy; U_gh]. y has
    the input's width (it gates x), h has hidden_size (the paper and torchrecurrent
    take them equal; rows of d and g^y number input_size, of r and g^h hidden_size).
    State: (y, h); y_t is the output and is not read by the next step. Layout as
    torchrecurrent 0.2.5, torch.nn.RNN's initialisation U(-1/sqrt(hidden), 1/sqrt(hidden)).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        rows = 2 * (input_size + hidden_size)
        self.state_sizes = (input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        self.bias_ih = bias_param(rows, bias)
        self.bias_hh = bias_param(rows, bias)
        uniform_init_(self, hidden_size)

    def project(self, x):
        """(..., I) -> (..., 3I + 2H): the pre-activations' input part, then x itself."""
        return torch.cat([affine(x, self.weight_ih, self.bias_ih, self.bias_hh), x], -1)

    def pieces(self):
        return (2 * (self.input_size + self.hidden_size), self.input_size)

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        h = state[1]
        pre, x = parts
        n_in, n_h = self.input_size, self.hidden_size
        d, r, g_y, g_h = torch.addmm(pre, h, w[0]).split((n_in, n_h, n_in, n_h), -1)
        y = torch.lerp(torch.relu(d), x, torch.sigmoid(g_y))
        return y, torch.lerp(torch.tanh(r), h, torch.sigmoid(g_h))

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh,), ()

    def manual_native(self):
        """The same step in C (ops/native/highway_cells.c)."""
        n_in, H = self.input_size, self.hidden_size
        return NativeStep("highway_cells", "irnn", 3 * n_in + 3 * H, (n_in,))

    def manual_step(self, xp_t, state, wt, vectors):
        h, n_in, H = state[1], self.input_size, self.hidden_size
        a = torch.addmm(xp_t[:, :2 * (n_in + H)], h, wt[0])
        x = xp_t[:, 2 * (n_in + H):]
        rd, tr, sg = torch.relu(a[:, :n_in]), torch.tanh(a[:, n_in:n_in + H]), torch.sigmoid(a[:, n_in + H:])
        y = torch.lerp(rd, x, sg[:, :n_in])
        return (y, torch.lerp(tr, h, sg[:, n_in:])), None, (h,), (h, x, rd, tr, sg)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dy, dh), (h, x, rd, tr, sg), n_in = d_state, saved, self.input_size
        g_y, g_h = sg[:, :n_in], sg[:, n_in:]
        dx, dh_direct = dy * g_y, dh * g_h
        d_sg = sigmoid_back(torch.cat([dy * (x - rd), dh * (h - tr)], 1), sg)
        da = torch.cat([relu_back(dy - dx, rd), tanh_back(dh - dh_direct, tr), d_sg], 1)
        return torch.cat([da, dx], 1), (torch.zeros_like(dy), torch.addmm(dh_direct, da,
                                                                          matrices[0])), (da,), ()
