"""Recurrent cells found by search: the NAS cell and MUT1-3.

The NAS cell, the recurrent cell found by neural architecture search (Zoph & Le
2017, "Neural Architecture Search with Reinforcement Learning", arXiv:1611.01578),
as in TensorFlow's NASCell. Eight pre-activations from one matrix product,

    [g_0 .. g_7] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh

then a fixed tree of element-wise combinations:

    l_0 = sigmoid(g_0) * relu(g_1)      l_1 = sigmoid(g_2) + relu(g_3)
    l_2 = tanh(g_4) * sigmoid(g_5)      l_3 = tanh(g_6) + sigmoid(g_7)
    c_t = tanh(tanh(l_0) + c_{t-1}) * tanh(l_1)
    h_t = tanh(c_t * tanh(tanh(l_2) + sigmoid(l_3)))

State (h, c). Parameters weight_ih (8H, I), weight_hh (8H, H), bias_ih, bias_hh (8H,).

MUT1, MUT2, MUT3, the three architectures found by evolutionary search in
Jozefowicz, Zaremba & Sutskever 2015, "An Empirical Exploration of Recurrent
Network Architectures" (ICML 2015). With z the update and r the reset gate:

MUT1:  z = sigmoid(W_xz x_t + b_z)
       r = sigmoid(W_xr x_t + W_hr h_{t-1} + b_r)
       h_t = tanh(W_hh (r * h_{t-1}) + tanh(W_xh x_t) + b_h) * z + h_{t-1} * (1 - z)

MUT2:  z = sigmoid(W_xz x_t + W_hz h_{t-1} + b_z)
       r = sigmoid(W_xr x_t + W_hr h_{t-1} + b_r)
       h_t = tanh(W_hh (r * h_{t-1}) + W_xh x_t + b_h) * z + h_{t-1} * (1 - z)

MUT3:  z = sigmoid(W_xz x_t + W_hz tanh(h_{t-1}) + b_z)
       r = sigmoid(W_xr x_t + W_hr h_{t-1} + b_r)
       h_t = tanh(W_hh (r * h_{t-1}) + W_xh x_t + b_h) * z + h_{t-1} * (1 - z)

The paper writes tanh(x_t) in MUT1 and r = sigmoid(x_t + ...) in MUT2, which needs
input width == hidden width; like torchrecurrent, a learned W x_t stands for x_t
(it reduces to the paper's with W = I).

Parameters (rows in the order [z; r; h]): weight_ih (3H, I), bias_ih (3H,);
weight_hh (2H, H) = [W_hr; W_hh] for MUT1, (3H, H) = [W_hz; W_hr; W_hh] for MUT2/3;
bias_hh of weight_hh's rows.

All four: Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

import functools

import torch

from rnnzoo.cells.base import cell
from rnnzoo.cells.manual import manual_loop, manual_plain, relu_back, sigmoid_back, tanh_back
from rnnzoo.cells.parts import StackedGates, add_bias, affine, glorot_init_
from rnnzoo.ops.native.cells import NativeStep, scan_projected


@cell("nas", paper="Zoph & Le 2017, arXiv:1611.01578")
class NAS(StackedGates):
    """NAS cell (see the module docstring). State: (h, c), each (B, H)."""

    num_gates = 8

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.state_sizes = (hidden_size, hidden_size)
        glorot_init_(self)

    def project(self, x):
        """(..., I) -> (..., 8H): W_ih x + b_ih + b_hh, the biases inside the product (one
        (B T, 8H) result instead of the product and its sum with the bias)."""
        return affine(x, self.weight_ih, self.bias_ih, self.bias_hh)

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        h, c = state
        g = torch.addmm(parts[0], h, w[0]).chunk(8, 1)
        l0 = torch.sigmoid(g[0]) * torch.relu(g[1])
        l1 = torch.sigmoid(g[2]) + torch.relu(g[3])
        l2 = torch.tanh(g[4]) * torch.sigmoid(g[5])
        l3 = torch.tanh(g[6]) + torch.sigmoid(g[7])
        c = torch.tanh(torch.tanh(l0) + c) * torch.tanh(l1)
        h = torch.tanh(c * torch.tanh(torch.tanh(l2) + torch.sigmoid(l3)))
        return h, c

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        """`manual_loop` with the biases added in the step rather than in the projection
        (the vector b_ih + b_hh, its gradient summed in the loop: two passes over the
        (B, T, 8H) projections less); where the C loop runs, the projection W_ih x inside
        autograd node and each step's rows of it in the C loop (`ops.native.cells.
        scan_projected`)."""
        if not torch.compiler.is_compiling():
            mats, vecs = self.manual_params()
            done = scan_projected(self, x, self.weight_ih, state, mats, vecs,
                                  functools.partial(manual_plain, self))
            if done is not None:
                return done
        return manual_loop(self, x, state)

    def manual_project(self, x):
        """W_ih x, without the biases (the step adds them)."""
        return affine(x, self.weight_ih)

    def manual_params(self):
        """W_hh; the summed biases (none without bias)."""
        return (self.weight_hh,), (() if self.bias_ih is None else (self.bias_ih + self.bias_hh,))

    def manual_native(self):
        """The same step in C (ops/native/searched_cells.c)."""
        return NativeStep("searched_cells", "nas", 9 * self.hidden_size, g_is_dxp=True)

    def manual_step(self, xp_t, state, wt, vectors):
        h, c = state
        g = torch.addmm(xp_t + vectors[0] if vectors else xp_t, h, wt[0]).chunk(8, 1)
        s0, r1, s2, r3 = torch.sigmoid(g[0]), torch.relu(g[1]), torch.sigmoid(g[2]), \
            torch.relu(g[3])
        t4, s5, t6, s7 = torch.tanh(g[4]), torch.sigmoid(g[5]), torch.tanh(g[6]), \
            torch.sigmoid(g[7])
        l0, t_l2, s_l3 = torch.tanh(s0 * r1), torch.tanh(t4 * s5), torch.sigmoid(t6 + s7)
        big_a, big_b = torch.tanh(l0 + c), torch.tanh(s2 + r3)
        c_new = big_a * big_b
        big_c = torch.tanh(t_l2 + s_l3)
        h_new = torch.tanh(c_new * big_c)
        return (h_new, c_new), None, (h,), \
            (s0, r1, s2, r3, t4, s5, t6, s7, l0, t_l2, s_l3, big_a, big_b, c_new, big_c, h_new)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dc), (s0, r1, s2, r3, t4, s5, t6, s7, l0, t_l2, s_l3, big_a, big_b, c_new, big_c,
                   h_new) = d_state, saved
        d_in = tanh_back(dh, h_new)
        dc_new = torch.addcmul(dc, d_in, big_c)
        d_cin = tanh_back(d_in * c_new, big_c)
        d_l2, d_l3 = tanh_back(d_cin, t_l2), sigmoid_back(d_cin, s_l3)
        d_l1 = tanh_back(dc_new * big_a, big_b)
        dc_prev = tanh_back(dc_new * big_b, big_a)
        d_l0 = tanh_back(dc_prev, l0)
        da = torch.cat([sigmoid_back(d_l0 * r1, s0), relu_back(d_l0 * s0, r1),
                        sigmoid_back(d_l1, s2), relu_back(d_l1, r3),
                        tanh_back(d_l2 * s5, t4), sigmoid_back(d_l2 * t4, s5),
                        tanh_back(d_l3, t6), sigmoid_back(d_l3, s7)], 1)
        return da, (da @ matrices[0], dc_prev), (da,), ((da,) if vectors else ())



MUT = "Jozefowicz, Zaremba & Sutskever 2015, ICML (An Empirical Exploration of RNN Architectures)"


class _MUT(StackedGates):
    num_gates = 3
    variant = 0  # 1, 2, 3: the C step's (ops/native/searched_cells.c)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        glorot_init_(self)

    def pieces(self):
        return (self.hidden_size,) * 3

    def weights(self, batch_size):
        return self.weight_hh.T.split(self.hidden_size, 1)

    @staticmethod
    def _update(h, z, r, xh, w_hh):
        """h_t = z * tanh(xh + W_hh (r * h)) + (1 - z) * h."""
        candidate = torch.tanh(torch.addmm(xh, r * h, w_hh))
        return torch.addcmul(h, z, candidate - h)

    # -- the hand-written backward (`manual_loop`); the gates are each subclass's ----------
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        """weight_hh's blocks, each its own product: (W_hz,) W_hr, W_hh."""
        return self.weight_hh.split(self.hidden_size), ()

    def manual_native(self):
        """The same step in C (ops/native/searched_cells.c)."""
        return NativeStep("searched_cells", "mut", 4 * self.hidden_size, (self.variant,))

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        z, r, gate_rs = self._gates(xp_t, h, wt)
        rh = r * h
        candidate = torch.tanh(torch.addmm(xp_t[:, 2 * H:], rh, wt[-1]))
        return (torch.addcmul(h, z, candidate - h),), None, gate_rs + (rh,), \
            (h, z, r, candidate)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, z, r, candidate) = d_state, saved
        d_z = dh * (candidate - h)
        d_c = tanh_back(dh * z, candidate)
        d_rh = d_c @ matrices[-1]
        dh_prev = torch.addcmul(dh - dh * z, d_rh, r)
        d_gates, dh_prev, gs = self._gates_back(d_z, d_rh * h, dh_prev, z, r, h, matrices)
        return torch.cat([d_gates, d_c], 1), (dh_prev,), gs + (d_c,), ()


@cell("mut1", paper=MUT)
class MUT1(_MUT):
    """MUT1 (see the module docstring): the update gate sees only x_t. State: h (B, H)."""

    recurrent_gates = 2
    variant = 1

    def project(self, x):
        H = self.hidden_size
        xp = affine(x, self.weight_ih, self.bias_ih)
        z = torch.sigmoid(xp[..., :H])
        xr = add_bias(xp[..., H:2 * H], None if self.bias_hh is None else self.bias_hh[:H])
        xh = add_bias(torch.tanh(xp[..., 2 * H:]),
                      None if self.bias_hh is None else self.bias_hh[H:])
        return torch.cat([z, xr, xh], -1)

    def transition(self, parts, state, w):
        (z, xr, xh), h, (w_hr, w_hh) = parts, state[0], w
        r = torch.sigmoid(torch.addmm(xr, h, w_hr))
        return (self._update(h, z, r, xh, w_hh),)

    def _gates(self, xp_t, h, wt):
        H = self.hidden_size
        return xp_t[:, :H], torch.sigmoid(torch.addmm(xp_t[:, H:2 * H], h, wt[0])), (h,)

    def _gates_back(self, d_z, d_r, dh, z, r, h, matrices):
        d_ar = sigmoid_back(d_r, r)  # z = sigmoid(W_xz x + b_z) is the projection's own
        return torch.cat([d_z, d_ar], 1), torch.addmm(dh, d_ar, matrices[0]), (d_ar,)


@cell("mut2", paper=MUT)
class MUT2(_MUT):
    """MUT2 (see the module docstring). State: h (B, H)."""

    variant = 2

    def pieces(self):
        return (2 * self.hidden_size, self.hidden_size)

    def weights(self, batch_size):
        return self.weight_hh.T.split([2 * self.hidden_size, self.hidden_size], 1)

    def transition(self, parts, state, w):
        (xzr, xh), h, (w_zr, w_hh) = parts, state[0], w
        z, r = torch.sigmoid(torch.addmm(xzr, h, w_zr)).chunk(2, 1)
        return (self._update(h, z, r, xh, w_hh),)

    def manual_params(self):
        """[W_hz; W_hr], W_hh."""
        return self.weight_hh.split([2 * self.hidden_size, self.hidden_size]), ()

    def _gates(self, xp_t, h, wt):
        zr = torch.sigmoid(torch.addmm(xp_t[:, :2 * self.hidden_size], h, wt[0]))
        return *zr.chunk(2, 1), (h,)

    def _gates_back(self, d_z, d_r, dh, z, r, h, matrices):
        d_zr = sigmoid_back(torch.cat([d_z, d_r], 1), torch.cat([z, r], 1))
        return d_zr, torch.addmm(dh, d_zr, matrices[0]), (d_zr,)


@cell("mut3", paper=MUT)
class MUT3(_MUT):
    """MUT3 (see the module docstring): the update gate sees tanh(h_{t-1}). State: h (B, H)."""

    variant = 3

    def transition(self, parts, state, w):
        (xz, xr, xh), h, (w_hz, w_hr, w_hh) = parts, state[0], w
        z = torch.sigmoid(torch.addmm(xz, torch.tanh(h), w_hz))
        r = torch.sigmoid(torch.addmm(xr, h, w_hr))
        return (self._update(h, z, r, xh, w_hh),)

    def _gates(self, xp_t, h, wt):
        H, th = self.hidden_size, torch.tanh(h)
        return torch.sigmoid(torch.addmm(xp_t[:, :H], th, wt[0])), \
            torch.sigmoid(torch.addmm(xp_t[:, H:2 * H], h, wt[1])), (th, h)

    def _gates_back(self, d_z, d_r, dh, z, r, h, matrices):
        d_az, d_ar = sigmoid_back(d_z, z), sigmoid_back(d_r, r)
        dh = tanh_back(d_az @ matrices[0], torch.tanh(h)) + torch.addmm(dh, d_ar, matrices[1])
        return torch.cat([d_az, d_ar], 1), dh, (d_az, d_ar)
