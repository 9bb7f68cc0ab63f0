"""The LSTM family: torch.nn.LSTM's cell (with projection and peepholes) and CIFG.

`lstm` -- Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000,
gate order and biases as torch.nn.LSTM; optional peepholes (Gers et al. 2002,
JMLR 3) and recurrent projection (LSTMP, Sak et al. 2014, arXiv:1402.1128):

    i = sigma(W_i x + U_i h + p_i * c_{t-1}),  f = sigma(W_f x + U_f h + p_f * c_{t-1})
    g = tanh(W_g x + U_g h),                   c_t = f * c_{t-1} + i * g
    o = sigma(W_o x + U_o h + p_o * c_t),      h_t = W_hr (o * tanh(c_t))

(biases b_ih + b_hh inside every pre-activation; p = 0 without peepholes,
W_hr = I without projection). `cifg_lstm` -- coupled input and forget gate
(Greff et al. 2017, "LSTM: A Search Space Odyssey", arXiv:1503.04069): f = 1 - i.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell


def uniform_init_(module: nn.Module, hidden_size: int) -> None:
    """torch.nn.RNN/LSTM/GRU's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


def check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


class _DeferredWeightGrad(torch.autograd.Function):
    """Identity on the input projections xp (B, T, P) whose backward also returns the
    gradients of recurrent weights W_k (G_k, K_k) used as pre_t[cols_k] = xp_t[cols_k] +
    r_{k,t} W_k^T, where the loop records r_{k,t}: dW_k = sum_t dxp_t[cols_k]^T r_{k,t}, one
    matrix product after the loop instead of one per step (torch's fused RNNs do the same)."""

    @staticmethod
    def forward(ctx, xp, recorder, *weights):
        ctx.recorder = recorder
        return xp.clone()

    @staticmethod
    def backward(ctx, g):
        rec = ctx.recorder
        grads = [g[..., cols].flatten(0, -2).T @ torch.stack(r, -2).flatten(0, -2)
                 for cols, r in zip(rec.columns, rec.inputs)]
        return (g, None, *grads)


class _Recorder:
    """`mm(k, r)` = r @ W_k^T with W_k detached, remembering r for `_DeferredWeightGrad`."""

    def __init__(self, weights, columns):
        self.columns, self.inputs = columns, [[] for _ in weights]
        self.transposed = [w.detach().T for w in weights]

    def __call__(self, k, r):
        self.inputs[k].append(r)
        return r @ self.transposed[k]


def fused_loop(cell: Cell, x, state, weights, columns, step):
    """The cell's loop with the recurrent weights' gradients deferred to one matrix product.

    weights[k] (G_k, K_k) must enter the step only as `xp_t[..., columns[k]] + mm(k, r)`
    (purely additive in those columns of the input projection); `step(xp_t, state, mm)`
    returns the next state. Equal to `cell.loop` (the conformance suite checks it, gradients
    included), with one matrix product per step less in the backward pass."""
    xp = cell.project(x)
    mm = _Recorder(weights, columns)
    if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
        xp = _DeferredWeightGrad.apply(xp, mm, *weights)
    outputs = []
    for xp_t in xp.unbind(1):
        state = step(xp_t, state, mm)
        outputs.append(cell.output(state))
    return torch.stack(outputs, 1), state


class _Gated(Cell):
    """Shared parts of the gated cells: W_ih (G*H, in), W_hh (G*H, out), b_ih, b_hh."""

    num_gates = 4

    def __init__(self, input_size, hidden_size, bias=True, recurrent_size=None):
        super().__init__(input_size, hidden_size)
        G = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, recurrent_size or hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(G)) if check_flag("bias", bias) else None
        self.bias_hh = nn.Parameter(torch.empty(G)) if bias else None

    def project(self, x):
        """(..., input_size) -> (..., G*H): W_ih x + b_ih + b_hh, every step at once."""
        xp = x @ self.weight_ih.T
        return xp if self.bias_ih is None else xp + (self.bias_ih + self.bias_hh)


@cell("lstm", paper="Hochreiter & Schmidhuber 1997; Gers et al. 2000; LSTMP: Sak et al. 2014, "
      "arXiv:1402.1128", tiny={"hidden_size": 5})
class LSTMCell(_Gated):
    parallel_modes = ("newton", "quasi")
    """torch.nn.LSTM's cell. State (h, c): h (B, proj_size or H), c (B, H).

    Options: `proj_size` (LSTMP: h_t = W_hr (o * tanh c_t), weight_hr (proj_size, H)),
    `peepholes` (weight_ph (3H,): p_i, p_f, p_o as in torchrecurrent's PeepholeLSTM).
    `fused` runs torch's LSTM kernel; with peepholes it is the loop (torch has none).
    """

    def __init__(self, input_size, hidden_size, bias=True, proj_size=0, peepholes=False):
        if not isinstance(proj_size, int) or isinstance(proj_size, bool) or proj_size < 0:
            raise ValueError(f"proj_size must be a non-negative int, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size={hidden_size}, "
                             f"got {proj_size}")
        super().__init__(input_size, hidden_size, bias, proj_size or hidden_size)
        self.proj_size = proj_size
        self.weight_hr = nn.Parameter(torch.empty(proj_size, hidden_size)) if proj_size else None
        self.weight_ph = nn.Parameter(torch.empty(3 * hidden_size)) \
            if check_flag("peepholes", peepholes) else None
        self.state_sizes = (proj_size or hidden_size, hidden_size)
        uniform_init_(self, hidden_size)

    def recur(self, xp_t, state):
        return self._step(xp_t, state, lambda k, h: h @ self.weight_hh.T)

    def _step(self, xp_t, state, mm):
        h, c = state
        i, f, g, o = (xp_t + mm(0, h)).chunk(4, -1)
        if self.weight_ph is not None:
            p_i, p_f, p_o = self.weight_ph.chunk(3)
            i, f = i + p_i * c, f + p_f * c
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if self.weight_ph is not None:
            o = o + p_o * c
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if self.weight_hr is None else h @ self.weight_hr.T), c

    def flat_weights(self) -> list:
        """torch.nn.LSTM's `_flat_weights` order: w_ih, w_hh[, b_ih, b_hh][, w_hr]."""
        w = [self.weight_ih, self.weight_hh]
        w += [self.bias_ih, self.bias_hh] if self.bias_ih is not None else []
        return w + ([self.weight_hr] if self.weight_hr is not None else [])

    @property
    def has_torch_kernel(self) -> bool:
        return self.weight_ph is None

    def fused(self, x, state):
        if not self.has_torch_kernel:
            return fused_loop(self, x, state, [self.weight_hh], [slice(None)], self._step)
        h, c = (s.unsqueeze(0).to(x.dtype) for s in state)
        out, h, c = torch._VF.lstm(x, (h, c), self.flat_weights(), self.bias_ih is not None,
                                   1, 0.0, self.training, False, True)
        return out, (h[0], c[0])


@cell("cifg_lstm", paper="Greff et al. 2017, arXiv:1503.04069 (coupled input-forget gate)",
      tiny={"hidden_size": 5})
class CIFGLSTMCell(_Gated):
    """LSTM with coupled input and forget gates (Greff et al. 2017, variant CIFG):

        i = sigma(W_i x + U_i h + b_i),  g = tanh(W_g x + U_g h + b_g)
        o = sigma(W_o x + U_o h + b_o)
        c_t = (1 - i) * c_{t-1} + i * g,  h_t = o * tanh(c_t)

    Gate order in weight_ih / weight_hh: i, g, o. State (h, c).
    """

    num_gates = 3

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__(input_size, hidden_size, bias)
        self.state_sizes = (hidden_size, hidden_size)
        uniform_init_(self, hidden_size)

    def recur(self, xp_t, state):
        h, c = state
        i, g, o = (xp_t + h @ self.weight_hh.T).chunk(3, -1)
        i = torch.sigmoid(i)
        c = c + i * (torch.tanh(g) - c)  # (1 - i) c + i g
        return torch.sigmoid(o) * torch.tanh(c), c
