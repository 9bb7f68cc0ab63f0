"""Bistable recurrent cells (Vecoven, Ernst & Drion 2021, "A bio-inspired
bistable recurrent cell allows for long-lasting memory", PLoS ONE 16(6):
e0252676, arXiv:2006.05252).

BRC: each neuron's feedback is its own (w_a, w_c are vectors):

    a_t = 1 + tanh(U_a x_t + w_a * h_{t-1})
    c_t = sigmoid(U_c x_t + w_c * h_{t-1})
    h_t = c_t * h_{t-1} + (1 - c_t) * tanh(U x_t + a_t * h_{t-1})

nBRC replaces w_a * h and w_c * h by full matrices W_a h, W_c h.
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
from rnnzoo.cells.manual import manual_loop, sigmoid_back, tanh_back
from rnnzoo.cells.parts import affine, bias_param
from rnnzoo.ops.native.cells import NativeStep

PAPER = "Vecoven, Ernst & Drion 2021, PLoS ONE 16(6):e0252676, arXiv:2006.05252"


class _Bistable(Cell):
    """The step uses 1 + tanh(v) = 2 sigmoid(2 v): the a-gate's pre-activation is
    doubled once per sequence and a_t * h_{t-1} = 2 sigmoid(.) * h_{t-1}."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(self._weight_hh_shape()))
        self.bias_ih = bias_param(3 * H, bias)
        self.bias_hh = bias_param(2 * H, bias)
        for block in self.weight_ih.data.chunk(3):
            nn.init.xavier_uniform_(block)

    def project(self, x):
        """(..., I) -> (..., 3H): [2 (U_a x + b_a), U_c x + b_c, U x + b]."""
        a, c, u = affine(x, self.weight_ih, self.bias_ih).chunk(3, -1)
        if self.bias_hh is not None:
            b_a, b_c = self.bias_hh.chunk(2)
            a, c = a + b_a, c + b_c
        return torch.cat([2 * a, c, u], -1)

    def _candidate(self, half_a, u, h, c_gate):
        """h_t from sigmoid(2 a_pre) = a_t / 2, U x_t + b, h_{t-1} and c_t."""
        cand = torch.tanh(torch.addcmul(u, half_a, h, value=2))
        return (torch.lerp(cand, h, c_gate),)

    # -- the hand-written backward (`manual_loop`; C steps nbr, br: ops/native/plain_cells.c)
    def fused(self, x, state):
        """The loop with its hand-written backward: with d = dh_t, s = a_t / 2 and
        n the candidate, d u = d (1 - c) (1 - n^2), d a_s = 2 d u h s (1 - s),
        d a_c = d (h - n) c (1 - c), dh_{t-1} = d c + 2 d u s + (the gates' feedback)."""
        return manual_loop(self, x, state)

    def _update(self, xp_t, h, s, c):
        """The step from the gates s = sigmoid(2 a_pre) = a_t / 2 and c: (new state, saved)."""
        n = torch.tanh(torch.addcmul(xp_t[:, 2 * self.hidden_size:], s, h, value=2))
        return (torch.lerp(n, h, c),), (h, s, c, n)

    def _update_back(self, dh, saved):
        """d a_s, d a_c, d u, and dh_{t-1} without the gates' feedback."""
        h, s, c, n = saved
        du = tanh_back(dh - dh * c, n)
        return (sigmoid_back(2 * du * h, s), sigmoid_back(dh * (h - n), c), du,
                torch.addcmul(dh * c, du, s, value=2))


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

    def pieces(self):
        return (self.hidden_size,) * 3

    def weights(self, batch_size):
        """2 w_a and w_c, each expanded to (B, H)."""
        w_a, w_c = self.weight_hh.chunk(2)
        return (2 * w_a).expand(batch_size, -1), w_c.expand(batch_size, -1)

    def transition(self, parts, state, w):
        h = state[0]
        a2, c, u = parts
        half_a = torch.sigmoid(torch.addcmul(a2, w[0], h))
        return self._candidate(half_a, u, h, torch.sigmoid(torch.addcmul(c, w[1], h)))

    def manual_params(self):
        """No matrix; the vectors 2 w_a, w_c."""
        w_a, w_c = self.weight_hh.chunk(2)
        return (), (2 * w_a, w_c)

    def manual_native(self):
        """The same step in C (ops/native/plain_cells.c)."""
        return NativeStep("plain_cells", "br", 4 * self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        s = torch.sigmoid(torch.addcmul(xp_t[:, :H], vectors[0], h))
        c = torch.sigmoid(torch.addcmul(xp_t[:, H:2 * H], vectors[1], h))
        new, saved = self._update(xp_t, h, s, c)
        return new, None, (), saved

    def manual_back(self, d_state, saved, matrices, vectors):
        d_s, d_c, du, dh = self._update_back(d_state[0], saved)
        h = saved[0]
        dh = torch.addcmul(torch.addcmul(dh, d_s, vectors[0]), d_c, vectors[1])
        return torch.cat([d_s, d_c, du], 1), (dh,), (), (d_s * h, d_c * h)


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

    def pieces(self):
        return (2 * self.hidden_size, self.hidden_size)

    def weights(self, batch_size):
        """[2 W_a; W_c]^T (H, 2H)."""
        w_a, w_c = self.weight_hh.chunk(2)
        return (torch.cat([2 * w_a, w_c]).T,)

    def transition(self, parts, state, w):
        h = state[0]
        ac, u = parts
        half_a, c = torch.sigmoid(torch.addmm(ac, h, w[0])).chunk(2, -1)
        return self._candidate(half_a, u, h, c)

    def manual_params(self):
        """M = [2 W_a; W_c] (2H, H)."""
        w_a, w_c = self.weight_hh.chunk(2)
        return (torch.cat([2 * w_a, w_c]),), ()

    def manual_native(self):
        """The same step in C (ops/native/plain_cells.c)."""
        return NativeStep("plain_cells", "nbr", 4 * self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        sc = torch.sigmoid(torch.addmm(xp_t[:, :2 * H], h, wt[0]))
        new, saved = self._update(xp_t, h, sc[:, :H], sc[:, H:])
        return new, None, (h,), saved

    def manual_back(self, d_state, saved, matrices, vectors):
        d_s, d_c, du, dh = self._update_back(d_state[0], saved)
        g = torch.cat([d_s, d_c], 1)
        return torch.cat([g, du], 1), (torch.addmm(dh, g, matrices[0]),), (g,), ()
