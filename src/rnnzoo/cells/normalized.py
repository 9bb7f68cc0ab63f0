"""Layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016, "Layer Normalization",
arXiv:1607.06450, section 3.1 and supplementary).

Each summed input is normalised on its own, over all its gates at once (the paper's
eq. for the LN-LSTM; the GRU follows the same recipe):

    LN-LSTM:  gates (i, f, g, o) in torch's order,
              a = LN(W_hh h_{t-1}; alpha_1, beta_1) + LN(W_ih x_t; alpha_2, beta_2)
              c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
              h_t = sigma(o) * tanh(LN(c_t; alpha_3, beta_3))
    LN-GRU:   a_x = LN(W_ih x_t), a_h = LN(W_hh h_{t-1})           (gates r, z, n)
              r, z = sigma(a_x[r,z] + a_h[r,z]),  n = tanh(a_x[n] + r * a_h[n])
              h_t = (1 - z) * n + z * h_{t-1}

The LayerNorms' shifts beta play the role of the biases (the paper's b is the sum of
them). Gains start at 1 and shifts at 0, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.manual import (
    layer_norm,
    layer_norm_back,
    lstm_cell_back,
    manual_loop,
    sigmoid_back,
    tanh_back,
)
from rnnzoo.cells.parts import affine, uniform_init_
from rnnzoo.ops.native.cells import NativeStep


class _LayerNormed(Cell):
    num_gates = 4

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        G = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size))
        uniform_init_(self, hidden_size)
        self.ln_ih = nn.LayerNorm(G)
        self.ln_hh = nn.LayerNorm(G)

    def project(self, x):
        """LN(W_ih x), every step at once: (..., input_size) -> (..., G*H)."""
        return self.ln_ih(affine(x, self.weight_ih))

    # the hand-written backward (`manual_loop`): W_hh, and the norms' gains and shifts
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        norms = (self.ln_hh,) + ((self.ln_cell,) if hasattr(self, "ln_cell") else ())
        return (self.weight_hh,), tuple(t for n in norms for t in (n.weight, n.bias))


@cell("ln_lstm", paper="Ba et al. 2016, arXiv:1607.06450 (layer-normalised LSTM)",
      tiny={"hidden_size": 5})
class LayerNormLSTMCell(_LayerNormed):
    """LSTM with layer normalisation of both summed inputs and of the cell. State (h, c)."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.ln_cell = nn.LayerNorm(hidden_size)
        self.state_sizes = (hidden_size, hidden_size)

    def recur(self, xp_t, state):
        h, c = state
        i, f, g, o = (xp_t + self.ln_hh(h @ self.weight_hh.T)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(self.ln_cell(c)), c

    def manual_step(self, xp_t, state, wt, vectors):
        (h, c), H = state, self.hidden_size
        a_h = h @ wt[0]
        n_h, stats_h = layer_norm(a_h, self.ln_hh, *vectors[:2])
        a = xp_t + n_h
        i, f, o = torch.sigmoid(a[:, :2 * H]).chunk(2, 1) + (torch.sigmoid(a[:, 3 * H:]),)
        g = torch.tanh(a[:, 2 * H:3 * H])
        c_new = torch.addcmul(f * c, i, g)
        n_c, stats_c = layer_norm(c_new, self.ln_cell, *vectors[2:])
        t = torch.tanh(n_c)
        return (o * t, c_new), None, (h,), (c, i, f, g, o, t, a_h, stats_h, c_new, stats_c)

    def manual_native(self):
        """The same step in C (ops/native/normalized.c)."""
        return NativeStep("normalized", "ln_lstm", 11 * self.hidden_size + 2,
                          floats=(self.ln_hh.eps, self.ln_cell.eps))

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dc), (c, i, f, g, o, t, a_h, stats_h, c_new, stats_c) = d_state, saved
        d_ao = sigmoid_back(dh * t, o)
        d_c, d_wc, d_bc = layer_norm_back(tanh_back(dh * o, t), c_new, stats_c, self.ln_cell,
                                       *vectors[2:])
        d_ai, d_af, d_ag, dc_prev = lstm_cell_back(dc + d_c, i, f, g, c)
        da = torch.cat([d_ai, d_af, d_ag, d_ao], 1)
        d_ah, d_wh, d_bh = layer_norm_back(da, a_h, stats_h, self.ln_hh, *vectors[:2])
        return da, (d_ah @ matrices[0], dc_prev), (d_ah,), (d_wh, d_bh, d_wc, d_bc)


@cell("ln_gru", paper="Ba et al. 2016, arXiv:1607.06450 (layer-normalised GRU)",
      tiny={"hidden_size": 5})
class LayerNormGRUCell(_LayerNormed):
    """GRU (torch's reset placement) with layer normalisation of both summed inputs. State h."""

    num_gates = 3

    def recur(self, xp_t, state):
        h = state[0]
        H = self.hidden_size
        gh = self.ln_hh(h @ self.weight_hh.T)
        rz = torch.sigmoid(xp_t[:, :2 * H] + gh[:, :2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(xp_t[:, 2 * H:] + r * gh[:, 2 * H:])
        return (n + z * (h - n),)

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        a_h = h @ wt[0]
        n_h, stats = layer_norm(a_h, self.ln_hh, *vectors[:2])
        rz = torch.sigmoid(xp_t[:, :2 * H] + n_h[:, :2 * H])
        n = torch.tanh(torch.addcmul(xp_t[:, 2 * H:], rz[:, :H], n_h[:, 2 * H:]))
        return (torch.lerp(n, h, rz[:, H:]),), None, (h,), (h, rz, n, n_h, a_h, stats)

    def manual_native(self):
        """The same step in C (ops/native/normalized.c)."""
        return NativeStep("normalized", "ln_gru", 8 * self.hidden_size + 1, floats=(self.ln_hh.eps,))

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, rz, n, n_h, a_h, stats), H = d_state, saved, self.hidden_size
        z = rz[:, H:]
        dz_direct = dh * z
        d_n = tanh_back(dh - dz_direct, n)
        d_rz = sigmoid_back(torch.cat([d_n * n_h[:, 2 * H:], dh * (h - n)], 1), rz)
        d_ah, d_w, d_b = layer_norm_back(torch.cat([d_rz, d_n * rz[:, :H]], 1), a_h, stats,
                                         self.ln_hh, *vectors[:2])
        return torch.cat([d_rz, d_n], 1), (torch.addmm(dz_direct, d_ah, matrices[0]),), \
            (d_ah,), (d_w, d_b)
