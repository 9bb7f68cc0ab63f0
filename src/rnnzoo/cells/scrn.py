"""Structurally Constrained Recurrent Network (Mikolov et al. 2015, "Learning
Longer Memory in Recurrent Neural Networks", arXiv:1412.7753): a slow context
state s with a fixed diagonal self-connection alpha beside a fast hidden layer h:

    s_t = (1 - alpha) (B x_t + b_s) + alpha s_{t-1}
    h_t = sigmoid(P s_t + A x_t + R h_{t-1} + b_h)
    y_t = tanh(U h_t + V s_t + b_y)

The paper's y_t is the language model's softmax output; as a token mixer the
output is y_t with tanh (as torchrecurrent's). The recurrence is the paper's: h_t
feeds h_{t+1}. torchrecurrent 0.2.5 instead feeds y_t back in place of h_t (and
learns alpha); tests/cells/test_scrn.py pins the paper's equations.

State (h, s), as in the paper; the output y_t is computed from it. alpha is
fixed (the paper uses 0.95), `context_size` is the width of s. Parameters weight_ih
(S + H, I) rows [B; A], weight_hh (2H, H) rows [R; U], weight_ch (2H, S) rows [P; V],
bias_ih (S + H,), bias_hh (2H,).
Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.manual import manual_scan, sigmoid_back
from rnnzoo.cells.parts import add_bias, affine, bias_param, glorot_init_
from rnnzoo.ops.native.cells import NativeStep
from rnnzoo.ops.scan import linear_scan


@cell("scrn", paper="Mikolov et al. 2015, arXiv:1412.7753", tiny={"context_size": 3})
class SCRN(Cell):
    """SCRN (see the module docstring). State: (h (B, H), s (B, S)); output y (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 context_size: int | None = None, alpha: float = 0.95):
        super().__init__(input_size, hidden_size)
        S = hidden_size if context_size is None else context_size
        self.context_size = checks.positive_int("context_size", S)
        self.alpha = checks.real("alpha", alpha, 0.0, 1.0)
        H = hidden_size
        self.state_sizes = (H, S)
        self.weight_ih = nn.Parameter(torch.empty(S + H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(2 * H, H))
        self.weight_ch = nn.Parameter(torch.empty(2 * H, S))
        self.bias_ih = bias_param(S + H, bias)
        self.bias_hh = bias_param(2 * H, bias)
        glorot_init_(self)

    def project(self, x):
        S, H = self.context_size, self.hidden_size
        xp = affine(x, self.weight_ih, self.bias_ih)
        b_h = None if self.bias_hh is None else self.bias_hh[:H]
        return torch.cat([xp[..., :S] * (1.0 - self.alpha), add_bias(xp[..., S:], b_h)], -1)

    def pieces(self):
        return (self.context_size, self.hidden_size)

    def weights(self, batch_size):
        """R, U (from h), P, V (from s), b_y."""
        H = self.hidden_size
        b_y = None if self.bias_hh is None else self.bias_hh[H:]
        return (*self.weight_hh.T.split(H, 1), *self.weight_ch.T.split(H, 1), b_y)

    def transition(self, parts, state, w):
        (context_x, hidden_x), (h, s), (r, _, p, _, _) = parts, state, w
        s = torch.add(context_x, s, alpha=self.alpha)
        h = torch.sigmoid(torch.addmm(torch.addmm(hidden_x, s, p), h, r))
        return h, s

    def output(self, state, w=None):
        """y_t = tanh(U h_t + V s_t + b_y)."""
        if w is None:
            w = self.weights(state[0].shape[0])
        (h, s), (_, u, _, v, b_y) = state, w
        return torch.tanh(add_bias(torch.addmm(h @ u, s, v), b_y))

    # -- fused: only h_t = sigmoid(a_t + R h_{t-1}) is a nonlinear recurrence ----------------
    def fused(self, x, state):
        """The context s is a linear scan of the input (`ops.scan.linear_scan`), so P s_t
        and the output y_t = tanh(U h_t + V s_t + b_y) are each one product over all steps;
        the loop left, h_t = sigmoid(A x_t + P s_t + b_h + R h_{t-1}), runs with its
        hand-written backward (`manual_scan`)."""
        if torch.compiler.is_compiling():
            return self.loop(x, state)
        S, H = self.context_size, self.hidden_size
        (h, s), (_, u, p, v, b_y) = state, self.weights(x.shape[0])
        xp = self.project(x)
        context, _ = linear_scan(xp.new_full((1, 1, 1), self.alpha), xp[..., :S], s)
        flat = context.flatten(0, 1)
        a = torch.addmm(xp[..., S:].flatten(0, 1), flat, p).unflatten(0, x.shape[:2])
        hs, (h,) = manual_scan(self, a, (h,), (self.weight_hh[:H],), ())
        y = torch.tanh(add_bias(torch.addmm(hs.flatten(0, 1) @ u, flat, v), b_y))
        return y.unflatten(0, x.shape[:2]), (h, context[:, -1])

    def manual_native(self):
        """The loop's step in C (ops/native/gated_cells.c)."""
        return NativeStep("gated_cells", "scrn", self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h = torch.sigmoid(torch.addmm(xp_t, state[0], wt[0]))
        return (h,), None, (state[0],), (h,)

    def manual_back(self, d_state, saved, matrices, vectors):
        d_a = sigmoid_back(d_state[0], saved[0])
        return d_a, (d_a @ matrices[0],), (d_a,), ()
